"""DalleTransformer: stream layout, masks in the model, loss, cache, presets (paper §2.2, App. B.1)."""

import math

import pytest
import torch

from dalle_zero.models.transformer import DalleTransformer, TransformerConfig
from dalle_zero.nn.embeddings import PAD_ID
from dalle_zero.nn.masks import KINDS, stream_pair_allowed

TT, GRID, VT, VI = 5, 4, 30, 12


def tiny_config(**changes) -> TransformerConfig:
    base = dict(
        n_layer=3,
        n_head=2,
        n_embd=16,
        text_vocab_size=VT,
        text_seq_len=TT,
        image_vocab_size=VI,
        image_grid=GRID,
        conv_kernel_size=3,
    )
    return TransformerConfig(**{**base, **changes})


def random_model(config: TransformerConfig, seed: int = 0) -> DalleTransformer:
    """A model whose every weight (heads included, which start at zero) is random, so outputs depend on inputs."""
    torch.manual_seed(seed)
    model = DalleTransformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    return model.eval()


def batch(b: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, VT, (b, TT), generator=g)
    text[:, -2:] = PAD_ID
    return text, torch.randint(0, VI, (b, GRID * GRID), generator=g)


PATTERNS = {kind: (kind,) * 3 for kind in KINDS} | {"paper": None}


# ---- config ----


def test_config_defaults_to_the_paper_layer_pattern_and_round_trips_json():
    cfg = tiny_config(n_layer=5)
    assert cfg.attn_pattern == ("row", "column", "row", "row", "conv")
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"attn_pattern": ("row",)}, "attn_pattern"),
        ({"attn_pattern": ("row", "diag", "row")}, "attn_pattern"),
        ({"conv_kernel_size": 4}, "odd"),
        ({"n_embd": 15}, "divisible"),
        ({"image_loss_weight": 1.5}, "image_loss_weight"),
    ],
)
def test_invalid_config_values_are_value_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**changes)


def test_paper_12b_has_12_09_billion_block_parameters_and_about_12_3_billion_in_total():
    cfg = TransformerConfig.paper_12b()
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.n_embd) == (64, 62, 64, 3968)
    assert cfg.stream_len == 1280 and cfg.attn_pattern.count("column") == 16
    with torch.device("meta"):
        model = DalleTransformer(cfg)
    d = cfg.n_embd
    matrices = sum(p.numel() for p in model.blocks.parameters() if p.dim() == 2)
    assert matrices == 64 * 12 * d * d and round(matrices / 1e9, 2) == 12.09
    assert model.num_parameters(blocks_only=True) == matrices + 64 * 13 * d  # + biases and LayerNorms
    assert round(model.num_parameters() / 1e9, 1) == 12.3


# ---- forward ----


def test_forward_shapes_and_fp32_logits_under_bf16_autocast():
    model = random_model(tiny_config())
    text, image = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        text_logits, image_logits = model(text, image)
    assert text_logits.shape == (2, TT, VT) and image_logits.shape == (2, GRID * GRID, VI)
    assert text_logits.dtype == image_logits.dtype == torch.float32
    text_logits, image_logits = model(text, image[:, :3])  # a partial image is scored too
    assert image_logits.shape == (2, 3, VI)


def test_zero_initialised_heads_give_uniform_predictions():
    model = DalleTransformer(tiny_config())
    text, image = batch()
    text_logits, image_logits = model(text, image)
    assert not text_logits.any() and not image_logits.any()


@pytest.mark.parametrize("kernel", ["sdpa_dense", "sdpa_banded"])
@pytest.mark.parametrize("name", PATTERNS)
def test_changing_a_token_never_changes_earlier_logits(name, kernel):
    model = random_model(tiny_config(attn_pattern=PATTERNS[name])).set_attention_kernel(kernel)
    text, image = batch()
    with torch.no_grad():
        base_text, base_image = model(text, image)
        for i in range(TT):  # text_ids[:, i] is predicted by text_logits[:, i]
            t2 = text.clone()
            t2[:, i] = (t2[:, i] + 1) % VT
            tl, il = model(t2, image)
            torch.testing.assert_close(tl[:, : i + 1], base_text[:, : i + 1], rtol=0, atol=0)
            assert not torch.allclose(il, base_image)  # image positions see all text
        for j in range(GRID * GRID):
            i2 = image.clone()
            i2[:, j] = (i2[:, j] + 1) % VI
            tl, il = model(text, i2)
            torch.testing.assert_close(tl, base_text, rtol=0, atol=0)
            torch.testing.assert_close(il[:, : j + 1], base_image[:, : j + 1], rtol=0, atol=0)


@pytest.mark.parametrize("kernel", ["sdpa_dense", "sdpa_banded"])
@pytest.mark.parametrize("kind", KINDS)
def test_one_layer_model_depends_on_exactly_the_masked_positions(kind, kernel):
    model = random_model(tiny_config(n_layer=1, attn_pattern=(kind,))).set_attention_kernel(kernel)
    text, image = batch()
    with torch.no_grad():
        _, base = model(text, image)
        for j in range(GRID * GRID - 1):  # image token j is input position TT + 1 + j
            i2 = image.clone()
            i2[:, j] = (i2[:, j] + 1) % VI
            changed = (model(text, i2)[1] - base).abs().amax(dim=(0, 2)) > 0  # per image output m
            m = torch.arange(GRID * GRID)
            allowed = stream_pair_allowed(kind, TT + m, torch.tensor(TT + 1 + j), TT + 1, GRID, 3)
            assert torch.equal(changed, allowed), (kind, j)


@pytest.mark.parametrize("name", ["row", "column", "conv", "paper"])
def test_banded_kernel_gives_the_dense_kernels_logits_and_gradients(name):
    model = random_model(tiny_config(attn_pattern=PATTERNS[name]))
    text, image = batch()
    results = []
    for kernel in ("sdpa_dense", "sdpa_banded"):
        model.set_attention_kernel(kernel).zero_grad()
        loss, _ = model.loss(text, image)
        loss.backward()
        results.append([loss] + [p.grad.clone() for p in model.parameters()])
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_banded_kernel_trains_under_bf16_autocast_like_the_dense_kernel():
    model = random_model(tiny_config(attn_pattern=PATTERNS["paper"]))
    text, image = batch()
    losses = []
    for kernel in ("sdpa_dense", "sdpa_banded"):
        model.set_attention_kernel(kernel).zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = model.loss(text, image)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=0.02)


def test_default_kernel_bands_the_row_and_column_layers_of_a_32x32_stream():
    kinds = ("row", "column", "conv")
    cfg = tiny_config(n_layer=3, text_seq_len=64, image_grid=32, attn_pattern=kinds, conv_kernel_size=11)
    model = DalleTransformer(cfg)
    masks = [model._mask(p, cfg.stream_len, torch.device("cpu")) for p in model.patterns]
    assert [type(m).__name__ for m in masks] == ["BandedLayout", "BandedLayout", "Tensor"]
    assert model._mask(model.patterns[0], 20, torch.device("cpu")).shape == (20, 20)  # prefixes: dense


@pytest.mark.parametrize("name", ["row", "column", "conv", "paper"])
def test_flex_attention_kernel_matches_sdpa(name):
    model = random_model(tiny_config(attn_pattern=PATTERNS[name]))
    text, image = batch()
    with torch.no_grad():
        expected = model(text, image)
        got = model.set_attention_kernel("flex")(text, image)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def test_every_empty_text_position_has_its_own_learned_pad():
    model = random_model(tiny_config())
    all_pad = torch.zeros(1, TT, dtype=torch.long)
    emb = model.text_embed(all_pad)[0]
    expected = model.text_embed.pad + model.text_embed.position
    torch.testing.assert_close(emb, expected)
    with torch.no_grad():
        model.text_embed.token.weight[PAD_ID] = 123.0  # the token row of id 0 is never read
    torch.testing.assert_close(model.text_embed(all_pad)[0], expected)
    text = torch.tensor([[7, 8, 0, 0, 0]])
    out = model.text_embed(text)[0]
    torch.testing.assert_close(out[2:], expected[2:])
    torch.testing.assert_close(out[0], model.text_embed.token.weight[7] + model.text_embed.position[0])


# ---- loss ----


def test_loss_is_one_eighth_text_plus_seven_eighths_image():
    model = DalleTransformer(tiny_config())  # zero heads: uniform predictions, CE = log V exactly
    text, image = batch()
    loss, parts = model.loss(text, image)
    torch.testing.assert_close(parts["text"], torch.tensor(math.log(VT)))
    torch.testing.assert_close(parts["image"], torch.tensor(math.log(VI)))
    torch.testing.assert_close(loss, torch.tensor(math.log(VT) / 8 + 7 * math.log(VI) / 8))


def test_text_loss_without_pad_targets_averages_over_real_tokens_only():
    cfg = tiny_config(text_loss_on_pad=False, image_loss_weight=0.5)
    model = random_model(cfg)
    text, image = batch()
    text[1] = PAD_ID  # an empty caption contributes no text targets
    loss, parts = model.loss(text, image)
    text_logits, image_logits = model(text, image)
    keep = text != PAD_ID
    ce_text = torch.nn.functional.cross_entropy(text_logits[keep], text[keep])
    ce_image = torch.nn.functional.cross_entropy(image_logits.flatten(0, 1), image.flatten())
    torch.testing.assert_close(parts["text"], ce_text)
    torch.testing.assert_close(loss, 0.5 * ce_text + 0.5 * ce_image)
    with_pads = random_model(tiny_config(image_loss_weight=0.5)).loss(text, image)[1]["text"]
    assert not torch.isclose(with_pads, ce_text)


def test_activation_checkpointing_gives_the_same_gradients():
    text, image = batch()
    grads = []
    for enabled in (False, True):
        model = random_model(tiny_config()).train().set_activation_checkpointing(enabled)
        model.loss(text, image)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


# ---- incremental decoding ----


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("primed", [0, 5])
def test_cached_decoding_equals_the_full_forward(name, primed):
    model = random_model(tiny_config(attn_pattern=PATTERNS[name]))
    text, image = batch(3)
    with torch.no_grad():
        _, expected = model(text, image)
    cache = model.allocate_cache(3)
    logits = [model.prefill(text, cache, image[:, :primed] if primed else None)]
    for j in range(primed, GRID * GRID - 1):
        logits.append(model.decode_step(image[:, j], cache))
    torch.testing.assert_close(torch.stack(logits, dim=1), expected[:, primed:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="already predicted"):
        model.decode_step(image[:, -1], cache)


def test_decode_step_needs_a_prefilled_cache():
    model = random_model(tiny_config())
    cache = model.allocate_cache(1)
    with pytest.raises(ValueError, match="prefill"):
        model.decode_step(torch.tensor([1]), cache)
    model.prefill(torch.zeros(1, TT, dtype=torch.long), cache)  # an empty caption (guidance) is fine
    with pytest.raises(ValueError, match="empty cache"):
        model.prefill(torch.zeros(1, TT, dtype=torch.long), cache)


# ---- save / load, training ----


def test_save_and_load_round_trip(tmp_path):
    model = random_model(tiny_config())
    model.save_pretrained(tmp_path / "prior")
    loaded = DalleTransformer.from_pretrained(tmp_path / "prior")
    assert loaded.config == model.config
    text, image = batch()
    with torch.no_grad():
        for a, b in zip(model(text, image), loaded(text, image)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_tiny_prior_overfits_a_few_captions_image_tokens():
    torch.manual_seed(0)
    model = DalleTransformer(tiny_config(n_layer=2, n_embd=32)).train()
    text, image = batch(4, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss, parts = model.loss(text, image)
        first = first if first is not None else parts["image"].item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first == pytest.approx(math.log(VI), rel=1e-4)
    assert parts["image"].item() < 0.05, parts
