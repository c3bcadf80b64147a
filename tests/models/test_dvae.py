"""DiscreteVAE (paper §2.1, App. A.1): shapes, codes, pixel mapping, save/load, config checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dalle_zero.models.dvae import DiscreteVAE, DVAEConfig, gumbel_softmax, map_pixels, unmap_pixels

TINY = DVAEConfig(image_size=16, group_count=2, n_blk_per_group=1, n_hid=8, n_init=8, vocab_size=32)


def _model(config: DVAEConfig = TINY, seed: int = 0) -> DiscreteVAE:
    torch.manual_seed(seed)
    return DiscreteVAE(config).eval()


def _pixels(b: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_default_config_is_the_papers_256px_32x32_8192_model():
    c = DVAEConfig()
    assert (c.image_size, c.grid_size, c.vocab_size, c.n_layers, c.post_gain) == (256, 32, 8192, 8, 1 / 64)


def test_default_model_parameter_counts_match_the_released_dvae():
    with torch.device("meta"):
        model = DiscreteVAE(DVAEConfig())
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    n_dec = sum(p.numel() for p in model.decoder.parameters())
    assert round(n_enc / 1e6, 1) == 53.8
    assert round(n_dec / 1e6, 1) == 43.8


def test_module_names_follow_the_released_model():
    names = set(_model(DVAEConfig(image_size=16, group_count=2, n_hid=8, n_init=8, vocab_size=4)).state_dict())
    for name in (
        "encoder.blocks.input.weight",
        "encoder.blocks.group_1.block_1.res_path.conv_1.weight",
        "encoder.blocks.group_2.block_1.id_path.weight",  # width doubles: 1×1 skip conv
        "encoder.blocks.output.conv.bias",
        "decoder.blocks.input.weight",
        "decoder.blocks.group_2.block_2.res_path.conv_4.weight",
        "decoder.blocks.output.conv.weight",
    ):
        assert name in names
    assert "encoder.blocks.group_1.block_1.id_path.weight" not in names  # same width: identity


def test_kernels_follow_the_paper_7x7_input_and_1x1_next_to_the_tokens():
    m = _model(DVAEConfig(image_size=16, group_count=2, n_hid=8, n_init=8, vocab_size=4))
    sd = m.state_dict()
    assert sd["encoder.blocks.input.weight"].shape[-1] == 7
    assert sd["encoder.blocks.output.conv.weight"].shape[-1] == 1
    assert sd["decoder.blocks.input.weight"].shape[-1] == 1
    assert sd["decoder.blocks.output.conv.weight"].shape[-1] == 1
    assert sd["encoder.blocks.group_1.block_1.res_path.conv_4.weight"].shape[-1] == 1
    assert sd["decoder.blocks.group_1.block_1.res_path.conv_1.weight"].shape[-1] == 1
    assert sd["decoder.blocks.group_1.block_1.res_path.conv_4.weight"].shape[-1] == 3


def test_init_is_normal_with_std_one_over_sqrt_fan_in_and_zero_bias():
    m = _model(DVAEConfig(image_size=16, group_count=2, n_hid=64, n_init=64, vocab_size=512))
    w = m.state_dict()["encoder.blocks.group_1.block_1.res_path.conv_2.weight"]  # (16, 16, 3, 3)
    assert w.std().item() == pytest.approx(1 / (16 * 9) ** 0.5, rel=0.1)
    assert all(float(v.abs().max()) == 0.0 for k, v in m.state_dict().items() if k.endswith("bias"))


def test_encode_returns_int64_codes_in_range_on_the_grid():
    m = _model()
    codes = m.encode(_pixels())
    assert codes.shape == (2, TINY.grid_size, TINY.grid_size) == (2, 8, 8)
    assert codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < TINY.vocab_size


def test_encode_is_argmax_of_encoder_logits():
    m = _model()
    x = _pixels()
    logits = m.encoder_logits(x)
    assert logits.shape == (2, 32, 8, 8) and logits.dtype == torch.float32
    assert torch.equal(m.encode(x), logits.argmax(1))


def test_decode_returns_pixels_in_unit_range():
    m = _model()
    out = m.decode(torch.randint(0, 32, (3, 8, 8)))
    assert out.shape == (3, 3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_decode_of_codes_equals_decode_soft_of_their_one_hot():
    m = _model()
    codes = torch.randint(0, 32, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    one_hot = F.one_hot(codes, 32).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(m.decode(codes), m.decode_soft(one_hot), atol=1e-5, rtol=1e-5)


def test_scaled_down_config_gives_the_expected_grid():
    c = DVAEConfig(image_size=32, group_count=3, n_hid=16, n_init=16, vocab_size=64)
    assert c.grid_size == 8
    assert _model(c).encode(_pixels(1, 32)).shape == (1, 8, 8)


def test_map_and_unmap_pixels_use_epsilon_point_one():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    torch.testing.assert_close(map_pixels(x), torch.tensor([0.1, 0.5, 0.9]).view(1, 1, 1, 3))
    torch.testing.assert_close(unmap_pixels(map_pixels(x)), x)
    assert unmap_pixels(torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)).tolist() == [[[[0.0, 1.0]]]]  # clamped


def test_pixel_mapping_rejects_non_4d_or_integer_input():
    with pytest.raises(ValueError, match="4-D"):
        map_pixels(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="floating-point"):
        unmap_pixels(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (torch.rand(3, 16, 16), "4-D"),
        (torch.rand(1, 1, 16, 16), "expected 3 channels"),
        (torch.rand(1, 3, 15, 15), "multiples of 2"),
        (torch.full((1, 3, 16, 16), 255.0), r"values in \[0, 1\], got min 255"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "floating-point"),
    ],
)
def test_encode_rejects_bad_pixels_with_expected_and_actual(pixels, message):
    with pytest.raises(ValueError, match=message):
        _model().encode(pixels)


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (torch.zeros(8, 8, dtype=torch.long), "3-D"),
        (torch.zeros(1, 8, 8), "integer"),
        (torch.full((1, 8, 8), 32), r"\[0, 31\], got min 32"),
    ],
)
def test_decode_rejects_bad_codes(codes, message):
    with pytest.raises(ValueError, match=message):
        _model().decode(codes)


def test_decode_soft_rejects_wrong_vocab_channels():
    with pytest.raises(ValueError, match=r"expected \[B, 32, h, w\]"):
        _model().decode_soft(torch.rand(1, 31, 8, 8))


def test_training_forward_uses_gumbel_noise_and_keeps_clean_logits():
    m = _model()
    x = _pixels()
    g = torch.Generator().manual_seed(0)
    out = m(x, tau=0.5, generator=g)
    torch.testing.assert_close(out.logits, m.encoder_logits(x))
    assert out.mu.shape == out.log_b.shape == (2, 3, 16, 16)
    same = m(x, tau=0.5, generator=torch.Generator().manual_seed(0))
    other = m(x, tau=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.mu, same.mu) and not torch.equal(out.mu, other.mu)


def test_gumbel_softmax_is_a_distribution_that_sharpens_as_tau_falls():
    logits = torch.randn(4, 32, 2, 2, generator=torch.Generator().manual_seed(0))
    soft = gumbel_softmax(logits, 1.0, generator=torch.Generator().manual_seed(0))
    hard = gumbel_softmax(logits, 1 / 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(soft.sum(1), torch.ones(4, 2, 2))
    assert hard.max(1).values.mean() > soft.max(1).values.mean()
    assert torch.equal(soft.argmax(1), hard.argmax(1))  # same noise: same winner


def test_save_then_load_gives_identical_outputs(tmp_path):
    m = _model(seed=3)
    x = _pixels()
    m.save_pretrained(tmp_path / "dvae")
    loaded = DiscreteVAE.from_pretrained(tmp_path / "dvae")
    assert loaded.config == m.config
    assert torch.equal(loaded.encode(x), m.encode(x))
    codes = m.encode(x)
    assert torch.equal(loaded.decode(codes), m.decode(codes))


def test_conv_weights_are_channels_last_and_compute_what_contiguous_weights_compute(tmp_path):
    m = _model(seed=4)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x = _pixels(3)
    logits = m.encoder_logits(x)
    assert logits.is_contiguous(memory_format=torch.channels_last)  # the activations follow the weights
    nchw = _model(seed=4).to(memory_format=torch.contiguous_format)
    assert not nchw.encoder.blocks.input.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nchw.encoder_logits(x), logits, rtol=1e-4, atol=1e-5)
    codes = m.encode(x)
    torch.testing.assert_close(nchw.decode(codes), m.decode(codes), rtol=1e-4, atol=1e-5)
    m.save_pretrained(tmp_path / "dvae")  # saved as contiguous copies; loading keeps channels-last
    loaded = DiscreteVAE.from_pretrained(tmp_path / "dvae")
    assert loaded.encoder.blocks.input.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(loaded.encoder_logits(x), logits)


def test_outputs_do_not_depend_on_the_rest_of_the_batch():
    m = _model()
    x = _pixels(4)
    assert torch.equal(m.encode(x)[1:2], m.encode(x[1:2]))


def test_inputs_are_not_mutated():
    m = _model()
    x = _pixels()
    before = x.clone()
    m(x, tau=1.0, generator=torch.Generator().manual_seed(0))
    m.encode(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_size": 30}, "divisible by 2\\*\\*\\(group_count-1\\) = 8"),
        ({"n_hid": 30}, "n_hid must be divisible by 4"),
        ({"vocab_size": 1}, "vocab_size must be >= 2"),
        ({"group_count": 0}, "group_count must be >= 1"),
        ({"input_kernel": 4}, "input_kernel must be odd"),
        ({"downsample": "stride"}, "downsample must be one of"),
        ({"n_init": 2.5}, "n_init must be an integer"),
    ],
)
def test_bad_config_values_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        DVAEConfig(**changes)


def test_config_round_trips_through_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(TINY.to_json())
    assert DVAEConfig.from_json_file(path) == TINY


def test_bf16_autocast_forward_keeps_token_convs_and_outputs_in_float32():
    m = _model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(_pixels(), tau=1.0, generator=torch.Generator().manual_seed(0))
    assert out.logits.dtype == out.mu.dtype == torch.float32
