"""Specification of the contrastive dual encoder used for reranking (paper §2.6)."""

from __future__ import annotations

import math

import pytest
import torch

from dalle_zero.models.clip import CLIPConfig, DalleCLIP, contrastive_loss

TINY = dict(
    text_vocab_size=50,
    text_seq_len=8,
    text_n_layer=2,
    text_n_head=2,
    text_n_embd=32,
    image_size=16,
    image_widths=(8, 16),
    embed_dim=24,
)


def _model(**overrides) -> DalleCLIP:
    torch.manual_seed(0)
    return DalleCLIP(CLIPConfig(**{**TINY, **overrides})).eval()


def _ids(*rows: list[int], T: int = 8) -> torch.Tensor:
    out = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def test_embeddings_are_unit_vectors_of_embed_dim():
    m = _model()
    t = m.encode_text(_ids([1, 2, 3], [4], []))
    i = m.encode_image(torch.rand(2, 3, 16, 16))
    assert t.shape == (3, 24) and i.shape == (2, 24)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(i.norm(dim=-1), torch.ones(2))


def test_forward_gives_scaled_cosine_logits_per_image():
    m = _model()
    ids, px = _ids([1, 2], [3, 4, 5], [6]), torch.rand(2, 3, 16, 16)
    logits = m(ids, px)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, m.similarity(ids, px) / 0.07, rtol=1e-4, atol=1e-4)
    assert m.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_logit_scale_is_clamped_at_100():
    m = _model()
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert m.temperature_scale().item() == pytest.approx(100.0)


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_pad_positions_never_change_the_text_embedding(pool):
    m = _model(text_pool=pool)
    a = m.encode_text(_ids([5, 6, 7]))
    with torch.no_grad():  # change everything a pad position is made of
        m.text.tok_emb.weight[0] += 1.0
        m.text.pos_emb[3:] += 1.0
    torch.testing.assert_close(m.encode_text(_ids([5, 6, 7])), a)
    assert not torch.allclose(a, m.encode_text(_ids([5, 6, 8])))


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_empty_caption_has_a_finite_embedding(pool):
    m = _model(text_pool=pool)
    t = m.encode_text(_ids([]))
    assert torch.isfinite(t).all()


def test_contrastive_loss_is_symmetric_cross_entropy():
    logits = torch.tensor([[5.0, 1.0], [0.0, 2.0]])
    labels = torch.arange(2)
    expected = 0.5 * (
        torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels)
    )
    torch.testing.assert_close(contrastive_loss(logits), expected)
    assert contrastive_loss(torch.eye(3) * 100) < 1e-6
    with pytest.raises(ValueError, match="square"):
        contrastive_loss(torch.zeros(2, 3))


def test_gradients_reach_both_towers_and_the_temperature():
    m = _model().train()
    loss = contrastive_loss(m(_ids([1, 2], [3, 4], [5]), torch.rand(3, 3, 16, 16)))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
    assert m.logit_scale.grad.abs() > 0


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    m = _model(text_pool="mean")
    m.save_pretrained(tmp_path / "clip")
    loaded = DalleCLIP.from_pretrained(tmp_path / "clip")
    assert loaded.config == m.config
    ids, px = _ids([1, 2, 3], [4]), torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(loaded(ids, px), m(ids, px))


def test_bad_shapes_and_dtypes_are_clear_value_errors():
    m = _model()
    px = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"shape \[B, 8\], got \(2, 9\)"):
        m.encode_text(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        m.encode_text(torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"must lie in \[0, 50\)"):
        m.encode_text(torch.full((1, 8), 50))
    with pytest.raises(ValueError, match=r"shape \[B, 3, 16, 16\], got \(2, 3, 32, 32\)"):
        m.encode_image(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="float tensor"):
        m.encode_image((px * 255).to(torch.uint8))


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="text_n_embd"):
        CLIPConfig(**{**TINY, "text_n_embd": 30, "text_n_head": 4})
    with pytest.raises(ValueError, match="image_size"):
        CLIPConfig(**{**TINY, "image_size": 18, "image_widths": (8, 16, 32)})
    with pytest.raises(ValueError, match="text_pool"):
        CLIPConfig(**{**TINY, "text_pool": "cls"})
    with pytest.raises(ValueError, match="image_widths"):
        CLIPConfig(**{**TINY, "image_widths": ()})


def test_stem_stride_two_halves_the_work_but_keeps_the_interface():
    m = _model(image_stem_stride=2)
    assert m.encode_image(torch.rand(2, 3, 16, 16)).shape == (2, 24)
    with pytest.raises(ValueError, match="image_stem_stride"):
        CLIPConfig(**{**TINY, "image_stem_stride": 3})


def test_different_seeds_give_different_initial_models():
    torch.manual_seed(1)
    a = DalleCLIP(CLIPConfig(**TINY))
    torch.manual_seed(2)
    b = DalleCLIP(CLIPConfig(**TINY))
    assert not torch.equal(a.text.tok_emb.weight, b.text.tok_emb.weight)
