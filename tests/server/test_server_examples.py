"""Specification of how the server teaches the caption language: the model's example captions in
``/health`` and on the page, and a warning for captions made mostly of words it never saw."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from dalle_zero.pipelines.text_to_image import TextToImagePipeline
from dalle_zero.server import DalleServer, GenerationService
from tests.factories.pipelines import tiny_pipeline
from tests.factories.server import LIMITS, call, generate, running

EXAMPLES = ["a red star", "a blue heart"]


@pytest.fixture(scope="module")
def server() -> Iterator[DalleServer]:
    p = tiny_pipeline()
    pipeline = TextToImagePipeline(p.tokenizer, p.dvae, p.transformer, examples=EXAMPLES)
    with running(GenerationService(pipeline, LIMITS)) as s:
        yield s


def test_health_lists_the_example_captions(server):
    assert call(server, "GET", "/health")[2]["examples"] == EXAMPLES


def test_a_model_without_examples_lists_none():
    with running(GenerationService(tiny_pipeline(), LIMITS)) as s:
        assert call(s, "GET", "/health")[2]["examples"] == []


def test_the_page_shows_clickable_examples_and_warnings_without_inline_handlers(server):
    status, response, page = call(server, "GET", "/")
    text = page.decode("utf-8")
    assert status == 200
    assert '<div id="examples" hidden>' in text and '<div id="warning" role="status" aria-live="polite">' in text
    assert "info.examples" in text and '$("caption").placeholder = "a caption, e.g. " + examples[0]' in text
    assert 'b.addEventListener("click", () => { $("caption").value = text;' in text
    assert "showWarnings(res.warnings)" in text
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", text)  # no onclick=... attributes
    csp = response.getheader("Content-Security-Policy")
    assert "script-src 'sha256-" in csp and "'unsafe-inline'" not in csp


def test_a_caption_of_unseen_words_is_drawn_with_a_warning_naming_them(server):
    result = generate(server, caption="a ox yak", n=1, seed=0)  # 8 tokens: not truncated as well
    assert len(result["images"]) == 1
    assert len(result["warnings"]) == 1 and '"ox", "yak"' in result["warnings"][0]
    assert result["warnings"][0].startswith("most words of this caption never appeared in training")


def test_a_caption_of_seen_words_has_no_warning(server):
    assert generate(server, caption="a purple triangle", n=1, seed=0)["warnings"] == []


@pytest.mark.parametrize(
    "caption, message",
    [("", "caption is empty"), ("\t \n", "caption is empty"), ("\x1b[31m\x07", "has no text to draw")],
)
def test_a_caption_with_no_text_gets_400_and_one_line(server, caption, message):
    status, _, error = call(server, "POST", "/generate", {"caption": caption})
    assert status == 400 and message in error["error"] and "\n" not in error["error"]
