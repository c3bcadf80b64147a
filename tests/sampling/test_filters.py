"""Specification of the logit filters (temperature, top-k over image codes, nucleus) — paper §2.6."""

from __future__ import annotations

import pytest
import torch

from dalle_zero.sampling.filters import apply_temperature, filter_logits, top_k_filter, top_p_filter
from dalle_zero.sampling.generate import sample_tokens


def _logits() -> torch.Tensor:
    return torch.randn(3, 50, generator=torch.Generator().manual_seed(0))


def test_top_k_keeps_exactly_the_k_largest_image_codes():
    logits = _logits()
    out = top_k_filter(logits, 5)
    kept = torch.isfinite(out)
    assert kept.sum(dim=-1).tolist() == [5, 5, 5]
    assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, logits.topk(5).indices, True))
    assert torch.equal(out[kept], logits[kept])


def test_top_k_none_top_k_at_vocab_size_and_top_p_one_change_nothing():
    logits = _logits()
    for out in (
        top_k_filter(logits, None),
        top_k_filter(logits, 50),
        top_k_filter(logits, 999),
        top_p_filter(logits, None),
        top_p_filter(logits, 1.0),
        apply_temperature(logits, 1.0),
    ):
        assert torch.equal(out, logits)


def test_top_p_keeps_the_smallest_set_reaching_p_and_always_the_most_likely_code():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.7) == [False, True, False, True]
    assert kept(0.8) == [False, True, False, True]  # 0.5 + 0.3 already reaches 0.8
    assert kept(0.81) == [False, True, True, True]
    assert kept(0.01) == [False, True, False, False]


def test_filters_never_modify_their_input():
    logits = _logits()
    before = logits.clone()
    filter_logits(logits, temperature=0.7, top_k=3, top_p=0.5)
    apply_temperature(logits, 2.0)
    assert torch.equal(logits, before)


def test_temperature_divides_logits():
    logits = _logits()
    assert torch.allclose(apply_temperature(logits, 2.0), logits / 2)


@pytest.mark.parametrize(
    "call",
    [
        lambda x: apply_temperature(x, 0.0),
        lambda x: apply_temperature(x, float("nan")),
        lambda x: top_k_filter(x, 0),
        lambda x: top_k_filter(x, 0.9),  # a fraction is not a count of image codes
        lambda x: top_p_filter(x, 0.0),
        lambda x: top_p_filter(x, 1.5),
    ],
)
def test_bad_filter_settings_raise_value_error(call):
    with pytest.raises(ValueError):
        call(_logits())


def test_sample_tokens_draws_from_the_given_distribution_and_never_a_zero_probability_code():
    probs = torch.tensor([0.1, 0.2, 0.7, 0.0]).expand(20000, 4)
    tokens = sample_tokens(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(freq, probs[0], atol=0.015)
    assert freq[3] == 0
