"""Specification of TextToImagePipeline: seeds, reranking, priming, save/load, component checks (paper §2.6)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from dalle_zero.pipelines.text_to_image import GenerationOutput, TextToImagePipeline, to_pil
from tests.factories.pipelines import IMAGE_SIZE, tiny_clip, tiny_dvae, tiny_tokenizer, tiny_transformer


def _same(a: GenerationOutput, b: GenerationOutput) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.images, b.images)) and all(
        torch.equal(x, y) for x, y in zip(a.codes, b.codes)
    )


def test_generates_n_images_per_caption_in_unit_range(pipeline):
    out = pipeline(["a red star", "a blue heart"], n=3, seed=0)
    assert out.prompts == ["a red star", "a blue heart"] and out.seed == 0
    for images, codes, scores in zip(out.images, out.codes, out.scores):
        assert images.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.float32
        assert 0 <= images.min() and images.max() <= 1
        assert codes.shape == (3, 4, 4) and codes.dtype == torch.long
        assert scores is None
    assert [im.size for im in out.pil_images()[0]] == [(IMAGE_SIZE, IMAGE_SIZE)] * 3


def test_same_seed_gives_same_images_and_different_seed_different_images(pipeline):
    assert _same(pipeline("a red star", n=2, seed=1), pipeline("a red star", n=2, seed=1))
    assert not _same(pipeline("a red star", n=2, seed=1), pipeline("a red star", n=2, seed=2))


def test_a_seedless_call_records_the_seed_it_used(pipeline):
    out = pipeline("a red star", n=1)
    assert _same(out, pipeline("a red star", n=1, seed=out.seed))


def test_images_do_not_depend_on_the_other_captions_in_the_call(pipeline):
    alone = pipeline("a green circle", n=2, seed=3, batch_size=2)
    assert torch.equal(pipeline(["a green circle", "a red star"], n=2, seed=3).codes[0], alone.codes[0])


def test_reranking_keeps_the_best_n_of_the_candidates_sorted_by_score(pipeline_with_clip):
    everything = pipeline_with_clip("a purple square", n=6, seed=5)
    best = pipeline_with_clip("a purple square", n=2, candidates=6, seed=5)
    scores = everything.scores[0]
    assert torch.all(scores[:-1] >= scores[1:])
    assert torch.equal(best.scores[0], scores[:2])
    assert torch.equal(best.codes[0], everything.codes[0][:2])


def test_candidates_need_a_reranker(pipeline):
    with pytest.raises(ValueError, match="CLIP"):
        pipeline("a red star", n=1, candidates=4)


def test_priming_with_an_image_keeps_its_top_token_rows(pipeline, tmp_path):
    image = torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    to_pil(image[None])[0].save(tmp_path / "prime.png")
    codes = pipeline.dvae.encode(to_pil_roundtrip(image))
    out = pipeline("a red star", n=3, seed=0, prime_image=tmp_path / "prime.png", prime_rows=2)
    assert torch.equal(out.codes[0][:, :2], codes[:, :2].expand(3, -1, -1))
    from_tensor = pipeline("a red star", n=3, seed=0, prime_image=to_pil_roundtrip(image)[0], prime_rows=2)
    assert _same(out, from_tensor)


def test_a_transparent_prime_image_is_primed_on_white_as_the_training_images_are(pipeline, tmp_path):
    from PIL import Image

    rgba = Image.new("RGBA", (IMAGE_SIZE, IMAGE_SIZE), (0, 0, 0, 0))  # transparent black ...
    rgba.paste((200, 30, 30, 255), (4, 4, 12, 12))  # ... around an opaque red square
    rgba.save(tmp_path / "prime.png")
    on_white = Image.new("RGB", rgba.size, (255, 255, 255))
    on_white.paste((200, 30, 30), (4, 4, 12, 12))
    on_black = rgba.convert("RGB")  # what dropping the alpha channel would give
    kw = dict(n=2, seed=0, prime_rows=2)
    from_file = pipeline("a red star", prime_image=tmp_path / "prime.png", **kw)
    assert _same(from_file, pipeline("a red star", prime_image=on_white, **kw))
    assert _same(from_file, pipeline("a red star", prime_image=rgba, **kw))
    assert not torch.equal(pipeline.prime_tokens(on_black, 2), pipeline.prime_tokens(rgba, 2))


def to_pil_roundtrip(image: torch.Tensor) -> torch.Tensor:
    """The tensor a PNG of ``image`` reads back as (8-bit quantised)."""
    return (image * 255).round()[None] / 255


def test_bad_prime_image_path_and_rows_are_user_errors(pipeline, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        pipeline("a red star", n=1, prime_image=tmp_path / "nope.png")
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="bad.png"):
        pipeline("a red star", n=1, prime_image=tmp_path / "bad.png")
    with pytest.raises(ValueError, match="prime_rows"):
        pipeline("a red star", n=1, prime_image=torch.rand(3, 16, 16), prime_rows=5)


def test_empty_caption_is_refused_and_an_over_long_caption_is_truncated_with_a_warning(pipeline, caplog):
    with pytest.raises(ValueError, match="empty"):
        pipeline("   ", n=1)
    long = " ".join(["a red star"] * 10)
    with caplog.at_level(logging.WARNING):
        out = pipeline(long, n=1, seed=0)
    assert "only the first 8" in caplog.text
    assert out.images[0].shape[0] == 1


def test_save_then_load_gives_the_same_images_for_the_same_seed(pipeline_with_clip, tmp_path):
    pipeline_with_clip.save_pretrained(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "pipeline.json").read_text())
    assert meta["components"] == {
        "tokenizer": "tokenizer",
        "dvae": "dvae",
        "transformer": "transformer",
        "clip": "clip",
    }
    loaded = TextToImagePipeline.from_pretrained(tmp_path / "model")
    kw = dict(n=2, candidates=3, seed=9)
    a, b = pipeline_with_clip("a yellow heart", **kw), loaded("a yellow heart", **kw)
    assert _same(a, b) and torch.equal(a.scores[0], b.scores[0])


def test_a_pipeline_without_clip_round_trips(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "m")
    loaded = TextToImagePipeline.from_pretrained(tmp_path / "m")
    assert loaded.clip is None and not (tmp_path / "m" / "clip").exists()
    assert _same(pipeline("a red star", n=1, seed=0), loaded("a red star", n=1, seed=0))


def test_loading_a_missing_folder_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        TextToImagePipeline.from_pretrained(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="pipeline.json"):
        TextToImagePipeline.from_pretrained(tmp_path / "empty")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(text_vocab_size=+1), r"tokenizer vocab_size is (\d+) but transformer text_vocab_size is \d+"),
        (dict(text_seq_len=12), "tokenizer text_seq_len is 8 but transformer text_seq_len is 12"),
        (dict(image_vocab_size=64), "dVAE vocab_size is 32 but transformer image_vocab_size is 64"),
        (dict(image_grid=8), "dVAE grid_size is 4 but transformer image_grid is 8"),
    ],
)
def test_mismatched_components_are_refused_naming_both_values(tokenizer, change, message):
    kw = dict(change)
    vocab = tokenizer.vocab_size + kw.pop("text_vocab_size", 0)
    with pytest.raises(ValueError, match=message):
        TextToImagePipeline(tokenizer, tiny_dvae(), tiny_transformer(vocab, **kw))


def test_mismatched_components_are_refused_at_load(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "m")
    tiny_tokenizer(text_seq_len=10).save_pretrained(tmp_path / "m" / "tokenizer")
    with pytest.raises(ValueError, match="text_seq_len is 10 but transformer text_seq_len is 8"):
        TextToImagePipeline.from_pretrained(tmp_path / "m")


def test_a_clip_with_another_vocabulary_is_refused(tokenizer):
    with pytest.raises(ValueError, match="CLIP text_vocab_size"):
        TextToImagePipeline(
            tokenizer, tiny_dvae(), tiny_transformer(tokenizer.vocab_size), tiny_clip(tokenizer.vocab_size + 5)
        )


def test_a_progress_callable_counts_the_token_steps_of_the_whole_call(pipeline):
    steps: list[tuple[int, int]] = []
    out = pipeline(["a red star", "a blue heart"], n=3, seed=0, batch_size=2, progress=lambda *a: steps.append(a))
    total = 2 * 2 * 16  # two captions, two batches each (2 + 1 candidates), a 4x4 grid
    assert steps == [(i, total) for i in range(1, total + 1)]
    assert _same(out, pipeline(["a red star", "a blue heart"], n=3, seed=0, batch_size=2))


def test_an_exception_from_the_progress_callable_stops_the_sampling(pipeline):
    class Stop(Exception):
        pass

    steps: list[int] = []

    def stop_at_five(done: int, total: int) -> None:
        steps.append(done)
        if done == 5:
            raise Stop

    with pytest.raises(Stop):
        pipeline("a red star", n=4, seed=0, progress=stop_at_five)
    assert steps == [1, 2, 3, 4, 5]
