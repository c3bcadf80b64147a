import pytest

from tests.factories.pipelines import tiny_pipeline, tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def pipeline(tokenizer):
    return tiny_pipeline(tokenizer=tokenizer)


@pytest.fixture(scope="session")
def pipeline_with_clip(tokenizer):
    return tiny_pipeline(clip=True, tokenizer=tokenizer)
