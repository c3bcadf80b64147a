import pytest

from tests.factories.prior import TEXT_SEQ_LEN, make_tokenizer, write_tiny_shards


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny real token shards and their BPE tokenizer: ``(tokens folder, tokenizer folder)``."""
    root = tmp_path_factory.mktemp("prior_data")
    tokens = write_tiny_shards(root / "tokens")
    tok_dir = make_tokenizer(root / "tokenizer", text_seq_len=TEXT_SEQ_LEN)
    return tokens, tok_dir
