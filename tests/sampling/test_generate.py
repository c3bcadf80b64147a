"""Specification of the image-token sampler: cache, seeds, filters, guidance, priming — paper §2.6."""

from __future__ import annotations

import pytest
import torch

from dalle_zero.sampling.generate import generate_image_tokens, prefill_shared
from tests.factories.pipelines import tiny_transformer

TEXT_VOCAB = 40
TEXT_LEN = 6


def _model(pattern=("row", "column", "conv"), grid=4, seed=0):
    return tiny_transformer(TEXT_VOCAB, text_seq_len=TEXT_LEN, image_grid=grid, attn_pattern=pattern, seed=seed)


def _text(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, TEXT_VOCAB, (b, TEXT_LEN), generator=g)
    text[0, 4:] = 0  # a caption shorter than the text length: trailing pads
    return text


def _gen(model, text, seed=0, **kw):
    return generate_image_tokens(model, text, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize(
    "pattern",
    [("full", "full"), ("row", "row"), ("column", "column"), ("conv", "conv"), ("row", "column", "row", "conv")],
)
def test_cached_sampling_matches_uncached_for_every_attention_pattern(pattern):
    model = _model(pattern, grid=5)  # odd grid: row windows wrap across row ends
    text = _text()
    cached = _gen(model, text, seed=1)
    assert cached.shape == (3, 25) and cached.dtype == torch.long
    assert torch.equal(cached, _gen(model, text, seed=1, use_cache=False))
    guided = dict(guidance_scale=2.5, prime_tokens=cached[:, :7], top_k=10, top_p=0.9, temperature=0.8)
    assert torch.equal(_gen(model, text, seed=2, **guided), _gen(model, text, seed=2, use_cache=False, **guided))


def test_top_k_one_is_greedy_decoding():
    model = _model()
    text = _text()
    greedy = torch.zeros(3, 16, dtype=torch.long)
    with torch.no_grad():
        for j in range(16):
            greedy[:, j] = model(text, greedy[:, : j + 1])[1][:, j].argmax(-1)
    assert torch.equal(_gen(model, text, seed=0, top_k=1), greedy)
    assert torch.equal(_gen(model, text, seed=5, top_k=1), greedy)


def test_top_p_one_and_top_k_none_change_nothing():
    model, text = _model(), _text()
    plain = _gen(model, text, seed=3)
    assert torch.equal(_gen(model, text, seed=3, top_p=1.0, top_k=None, temperature=1.0), plain)
    assert torch.equal(_gen(model, text, seed=3, top_k=model.config.image_vocab_size), plain)


def test_same_seed_gives_same_tokens_and_different_seed_different_tokens():
    model, text = _model(), _text()
    assert torch.equal(_gen(model, text, seed=7), _gen(model, text, seed=7))
    assert not torch.equal(_gen(model, text, seed=7), _gen(model, text, seed=8))


def test_guidance_scale_one_gives_exactly_the_unguided_tokens():
    model, text = _model(), _text()
    assert torch.equal(_gen(model, text, seed=4, guidance_scale=1.0), _gen(model, text, seed=4))


def test_guidance_scale_zero_samples_the_empty_caption():
    """s = 0 leaves only the unconditional stream: with plain guidance (no nucleus), the same tokens as
    sampling the all-pad caption."""
    model, text = _model(), _text()
    empty = torch.zeros_like(text)
    assert torch.equal(_gen(model, text, seed=4, guidance_scale=0.0, guidance_top_p=None), _gen(model, empty, seed=4))


def test_guidance_changes_the_output_and_leaves_the_callers_tensors_untouched():
    model, text = _model(), _text()
    prime = torch.randint(0, 32, (3, 2), generator=torch.Generator().manual_seed(1))
    text_before, prime_before = text.clone(), prime.clone()
    params_before = [p.clone() for p in model.parameters()]
    guided = _gen(model, text, seed=4, guidance_scale=3.0, prime_tokens=prime)
    assert not torch.equal(guided, _gen(model, text, seed=4, prime_tokens=prime))
    assert torch.equal(text, text_before) and torch.equal(prime, prime_before)
    assert all(torch.equal(a, b) for a, b in zip(params_before, model.parameters()))


def test_priming_keeps_the_primed_tokens_and_samples_the_rest():
    model, text = _model(), _text()
    prime = torch.randint(0, 32, (3, 6), generator=torch.Generator().manual_seed(2))
    out = _gen(model, text, seed=0, prime_tokens=prime)
    assert torch.equal(out[:, :6], prime)
    assert not torch.equal(out[:, 6:], _gen(model, text, seed=0)[:, 6:])  # the rest depends on the prime
    full = torch.randint(0, 32, (3, 16), generator=torch.Generator().manual_seed(3))
    assert torch.equal(_gen(model, text, prime_tokens=full), full)  # nothing left to sample


def test_batched_rows_are_sampled_independently_of_their_captions_neighbours():
    """A row's caption decides its tokens' distribution: swapping two captions swaps greedy outputs."""
    model, text = _model(), _text()
    out = _gen(model, text, top_k=1)
    swapped = _gen(model, text[[1, 0, 2]], top_k=1)
    assert torch.equal(swapped, out[[1, 0, 2]])


def test_sampling_restores_the_models_training_mode_and_reports_progress():
    model, text = _model(), _text(1)
    model.train()
    calls = []
    _gen(model, text, progress=lambda done, total: calls.append((done, total)), prime_tokens=torch.zeros(1, 4).long())
    assert model.training
    assert calls == [(i, 12) for i in range(1, 13)]


@pytest.mark.parametrize(
    "kw",
    [
        dict(text=torch.zeros(2, TEXT_LEN + 1, dtype=torch.long)),
        dict(text=torch.full((2, TEXT_LEN), TEXT_VOCAB)),
        dict(prime_tokens=torch.zeros(3, 17, dtype=torch.long)),
        dict(prime_tokens=torch.full((3, 2), 32)),
        dict(temperature=0.0),
        dict(top_k=0),
        dict(top_p=0.0),
        dict(guidance_scale=float("inf")),
    ],
)
def test_bad_arguments_raise_value_error(kw):
    text = kw.pop("text", _text())
    with pytest.raises(ValueError):
        _gen(_model(), text, **kw)


def _outside_nucleus(model, text, tokens, p):
    """How many sampled tokens lie outside the conditional distribution's top-p nucleus at their position."""
    from dalle_zero.sampling.filters import top_p_filter

    with torch.no_grad():
        cond = model.eval()(text, tokens)[1]  # (B, Ti, Vi): logits of position j from tokens < j
    kept = ~top_p_filter(cond, p).isneginf()
    return int((~kept.gather(-1, tokens[..., None])).sum())


def test_guidance_moves_probability_only_within_the_conditional_nucleus():
    model, text = _model(seed=3), _text(b=8)
    plain = _gen(model, text, seed=4, guidance_scale=8.0, guidance_top_p=None)
    kept = _gen(model, text, seed=4, guidance_scale=8.0, guidance_top_p=0.5)
    # plain guidance at a large scale draws codes the conditional model itself finds unlikely ...
    assert _outside_nucleus(model, text, plain, 0.5) > 0
    # ... guidance within the nucleus never does
    assert _outside_nucleus(model, text, kept, 0.5) == 0


def test_guidance_scale_one_is_unguided_whatever_the_guidance_nucleus():
    model, text = _model(), _text()
    plain = _gen(model, text, seed=6)
    for p in (None, 0.5, 0.95):
        assert torch.equal(_gen(model, text, seed=6, guidance_scale=1.0, guidance_top_p=p), plain)


@pytest.mark.parametrize("p", [0.0, 1.5, "x"])
def test_a_guidance_nucleus_outside_0_1_is_refused(p):
    model, text = _model(), _text()
    with pytest.raises(ValueError, match="top_p"):
        _gen(model, text, guidance_scale=2.0, guidance_top_p=p)


def test_streams_that_start_alike_are_prefilled_once_and_sample_as_if_apart():
    model = _model(("row", "column", "row", "conv"))
    distinct = _text(3)
    text = distinct[[0, 1, 0, 2, 0, 1]]  # a caption's candidates are repeated rows
    cache, raw = prefill_shared(model, text, None)
    assert cache.batch_size == 6 and cache.length == TEXT_LEN + 1
    plain = model.allocate_cache(6)
    torch.testing.assert_close(raw, model.prefill(text, plain), rtol=1e-5, atol=1e-6)
    for shared, own in zip(cache.layers, plain.layers):
        torch.testing.assert_close(shared.k, own.k, rtol=1e-5, atol=1e-6)
    assert not torch.equal(cache.layers[0].k[0], cache.layers[0].k[1])  # rows stay rows of their own text
    # each repeated row then draws its own tokens, and the draw does not depend on the sharing
    tokens = _gen(model, text, seed=3, guidance_scale=2.0)
    assert not torch.equal(tokens[0], tokens[2])
    assert torch.equal(tokens, _gen(model, text, seed=3, guidance_scale=2.0, use_cache=False))
