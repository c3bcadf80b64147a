"""Specification of TextToImagePipeline.generate_batch: many captions, candidates sharing sampling batches,
the reranker's best of each caption, randomness from the caller's generator."""

from __future__ import annotations

import logging

import pytest
import torch

from dalle_zero.sampling.rerank import rerank
from tests.factories.pipelines import IMAGE_SIZE

CAPTIONS = ["a red star", "a blue heart", "a green circle"]


def _draw(pipeline, seed: int, n: int, candidates: int, **kw):
    return pipeline.generate_batch(
        CAPTIONS, n, candidates=candidates, generator=torch.Generator().manual_seed(seed), batch_size=5, **kw
    )


def test_every_candidate_in_the_order_drawn_when_none_is_dropped(pipeline):
    drawn: list[int] = []
    out = _draw(pipeline, 0, 4, 4, progress=drawn.append)
    assert out.images.shape == (3, 4, 3, IMAGE_SIZE, IMAGE_SIZE) and out.images.dtype == torch.float32
    assert 0 <= out.images.min() and out.images.max() <= 1
    assert out.codes.shape == (3, 4, 4, 4) and out.codes.dtype == torch.long and out.scores is None
    assert drawn == [5, 5, 2]  # 12 sequences, 5 at a time: the captions' candidates share batches
    torch.testing.assert_close(out.images.flatten(0, 1), pipeline.decode(out.codes.flatten(0, 1)))
    assert [len(p) for p in out.pil_images()] == [4, 4, 4]


def test_the_same_generator_state_gives_the_same_images_and_the_stream_continues(pipeline):
    a, b = _draw(pipeline, 1, 2, 2), _draw(pipeline, 1, 2, 2)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.images, b.images)
    assert not torch.equal(a.codes, _draw(pipeline, 2, 2, 2).codes)
    g = torch.Generator().manual_seed(1)
    first = pipeline.generate_batch(CAPTIONS, 2, candidates=2, generator=g, batch_size=5)
    second = pipeline.generate_batch(CAPTIONS, 2, candidates=2, generator=g, batch_size=5)
    assert torch.equal(first.codes, a.codes) and not torch.equal(second.codes, first.codes)


def test_the_reranker_keeps_the_best_n_of_each_captions_candidates_best_first(pipeline_with_clip):
    everything = _draw(pipeline_with_clip, 5, 4, 4)  # the same draws, kept whole
    best = _draw(pipeline_with_clip, 5, 2, 4)
    assert best.images.shape == (3, 2, 3, IMAGE_SIZE, IMAGE_SIZE) and best.scores.shape == (3, 2)
    for i, caption in enumerate(CAPTIONS):
        scores, order = rerank(pipeline_with_clip.clip, pipeline_with_clip.tokenizer, caption, everything.images[i])
        assert torch.equal(best.codes[i], everything.codes[i][order[:2]])
        assert torch.equal(best.images[i], everything.images[i][order[:2]])
        assert torch.equal(best.scores[i], scores[order[:2]]) and best.scores[i, 0] >= best.scores[i, 1]


def test_bad_calls_are_refused_in_one_line(pipeline, pipeline_with_clip):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="CLIP"):
        pipeline.generate_batch(CAPTIONS, 1, candidates=4, generator=g)
    with pytest.raises(ValueError, match="candidates must be an integer >= n"):
        pipeline_with_clip.generate_batch(CAPTIONS, 3, candidates=2, generator=g)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        pipeline.generate_batch([], generator=g)
    with pytest.raises(ValueError, match="empty"):
        pipeline.generate_batch(["a red star", "  "], generator=g)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.generate_batch(CAPTIONS, generator=g, batch_size=0)


def test_over_long_captions_are_cut_with_one_line_for_them_all(pipeline, caplog):
    long = " ".join(["a red star"] * 10)
    with caplog.at_level(logging.INFO, logger="dalle_zero.pipelines.captions"):
        out = pipeline.generate_batch([long, long, "a red star"], generator=torch.Generator().manual_seed(0))
    lines = [r.getMessage() for r in caplog.records if r.name == "dalle_zero.pipelines.captions"]
    assert lines == ["2 of 3 captions have over 8 tokens; only their first 8 (text_seq_len) are used"]
    assert out.images.shape[:2] == (3, 1)
