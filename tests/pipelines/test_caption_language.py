"""Specification of what a pipeline tells people about its caption language: example captions
saved with the model, and a warning for captions made mostly of words it never saw in training."""

from __future__ import annotations

import json

import pytest

from dalle_zero.pipelines.text_to_image import EXAMPLES_NAME, TextToImagePipeline
from tests.factories.pipelines import tiny_dvae, tiny_transformer

EXAMPLES = ["a red star", "a blue heart", "a 빨간 heart, noto style"]


def with_examples(pipeline: TextToImagePipeline, examples: list[str]) -> TextToImagePipeline:
    return TextToImagePipeline(pipeline.tokenizer, pipeline.dvae, pipeline.transformer, examples=examples)


def test_examples_round_trip_through_save_and_load(pipeline, tmp_path):
    with_examples(pipeline, EXAMPLES).save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / EXAMPLES_NAME).read_text()) == EXAMPLES
    assert TextToImagePipeline.from_pretrained(tmp_path / "m").examples == EXAMPLES


def test_a_model_folder_without_examples_loads_with_none(pipeline, tmp_path):
    assert pipeline.examples == []
    pipeline.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / EXAMPLES_NAME).exists()
    assert TextToImagePipeline.from_pretrained(tmp_path / "m").examples == []


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"examples": ["a red star"]}', "list of non-empty caption strings, got a dict"),
        ('"a red star"', "got a str"),
        ('["a red star", 3]', "found 3"),
        ('["a red star", "  "]', "found '  '"),
        ('["a red star",', "not valid JSON"),
    ],
)
def test_a_malformed_examples_file_is_a_one_line_error_naming_it(pipeline, tmp_path, content, message):
    pipeline.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / EXAMPLES_NAME).write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        TextToImagePipeline.from_pretrained(tmp_path / "m")
    assert str(tmp_path / "m" / EXAMPLES_NAME) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("examples", ["a red star", ["a red star", ""], [None]])
def test_examples_must_be_a_list_of_non_empty_captions(tokenizer, examples):
    with pytest.raises(ValueError, match="examples: must be a list of non-empty caption strings"):
        TextToImagePipeline(tokenizer, tiny_dvae(), tiny_transformer(tokenizer.vocab_size), examples=examples)


def test_unknown_words_are_those_no_training_caption_contained(pipeline):
    assert pipeline.unknown_words("A zebra and a RED unicorn") == ["zebra", "and", "unicorn"]
    assert pipeline.unknown_words("a purple triangle") == []


def test_a_caption_of_mostly_unseen_words_gets_a_warning_naming_them(pipeline):
    warning = pipeline.caption_warning("a zebra unicorn")
    assert warning == (
        'most words of this caption never appeared in training: "zebra", "unicorn"; '
        "the model draws only what its captions taught it"
    )


@pytest.mark.parametrize("caption", ["a red star", "a red zebra", "a zebra", "😀", "a green heart!"])
def test_a_caption_of_at_most_half_unseen_words_gets_no_warning(pipeline, caption):
    assert pipeline.caption_warning(caption) is None


def test_a_warning_names_at_most_ten_unseen_words(pipeline):
    warning = pipeline.caption_warning(" ".join(f"w{i}" for i in range(13)))
    assert '"w9"' in warning and '"w10"' not in warning and "and 3 more" in warning


def test_without_the_tokenizers_word_list_there_is_no_warning(pipeline):
    tokenizer = pipeline.tokenizer.with_text_seq_len(pipeline.tokenizer.text_seq_len)
    tokenizer.known_words = None
    blind = TextToImagePipeline(tokenizer, pipeline.dvae, pipeline.transformer)
    assert blind.unknown_words("a zebra unicorn") == [] and blind.caption_warning("a zebra unicorn") is None


@pytest.mark.parametrize(
    "caption, message",
    [("", "caption '' is empty"), (" \t\n", "is empty"), ("\x1b[31m\x07", "has no text to draw")],
)
def test_a_caption_with_no_text_left_is_refused_in_one_line(pipeline, caption, message):
    for attempt in (pipeline.check_caption, lambda c: pipeline(c, n=1)):
        with pytest.raises(ValueError, match=message) as info:
            attempt(caption)
        assert "\n" not in str(info.value)
    pipeline.check_caption("a red star")  # a caption with text passes
