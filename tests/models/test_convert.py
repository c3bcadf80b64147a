"""Import of OpenAI's released dVAE weights (openai/DALL-E's ``dall_e`` package): names, inferred config, same outputs.

The weights here are random tensors laid out exactly like ``dall_e``'s Encoder/Decoder state dicts
(4 groups, widths n_hid·(1, 2, 4, 8), ``.w``/``.b`` names), and the reference forward below is
written from the ``dall_e`` formulas, independently of our modules.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dalle_zero.io import save_state_dict
from dalle_zero.models.convert import convert_openai_dvae, load_openai_dvae
from dalle_zero.models.dvae import DiscreteVAE

N_HID, N_INIT, VOCAB, N_BLK = 8, 8, 16, 2


def _conv(state, name, n_in, n_out, k, g):
    state[f"{name}.w"] = torch.randn(n_out, n_in, k, k, generator=g) / (n_in * k * k) ** 0.5
    state[f"{name}.b"] = torch.randn(n_out, generator=g) * 0.1  # non-zero: biases must map too


def released_layout(seed=0):
    """dall_e Encoder/Decoder state dicts (group_count 4) with random values."""
    g = torch.Generator().manual_seed(seed)
    enc, dec = {}, {}
    _conv(enc, "blocks.input", 3, N_HID, 7, g)
    enc_w = [N_HID, 2 * N_HID, 4 * N_HID, 8 * N_HID]
    n_in = N_HID
    for gi, w in enumerate(enc_w, 1):
        for b in range(1, N_BLK + 1):
            p = f"blocks.group_{gi}.block_{b}"
            if n_in != w:
                _conv(enc, f"{p}.id_path", n_in, w, 1, g)
            for k, (i, o, ks) in enumerate(
                [(n_in, w // 4, 3), (w // 4, w // 4, 3), (w // 4, w // 4, 3), (w // 4, w, 1)], 1
            ):
                _conv(enc, f"{p}.res_path.conv_{k}", i, o, ks, g)
            n_in = w
    _conv(enc, "blocks.output.conv", 8 * N_HID, VOCAB, 1, g)
    _conv(dec, "blocks.input", VOCAB, N_INIT, 1, g)
    n_in = N_INIT
    for gi, w in enumerate(reversed(enc_w), 1):
        for b in range(1, N_BLK + 1):
            p = f"blocks.group_{gi}.block_{b}"
            if n_in != w:
                _conv(dec, f"{p}.id_path", n_in, w, 1, g)
            for k, (i, o, ks) in enumerate(
                [(n_in, w // 4, 1), (w // 4, w // 4, 3), (w // 4, w // 4, 3), (w // 4, w, 3)], 1
            ):
                _conv(dec, f"{p}.res_path.conv_{k}", i, o, ks, g)
            n_in = w
    _conv(dec, "blocks.output.conv", N_HID, 6, 1, g)
    return enc, dec


def _c(state, name, x):
    w = state[f"{name}.w"]
    return F.conv2d(x, w, state[f"{name}.b"], padding=(w.shape[-1] - 1) // 2)


def _block(state, p, x, post_gain):
    h = x
    for k in range(1, 5):
        h = _c(state, f"{p}.res_path.conv_{k}", F.relu(h))
    skip = _c(state, f"{p}.id_path", x) if f"{p}.id_path.w" in state else x
    return skip + post_gain * h


def reference_encoder(enc, x):
    post_gain = 1 / (4 * N_BLK) ** 2
    h = _c(enc, "blocks.input", x)
    for gi in range(1, 5):
        for b in range(1, N_BLK + 1):
            h = _block(enc, f"blocks.group_{gi}.block_{b}", h, post_gain)
        if gi < 4:
            h = F.max_pool2d(h, 2)
    return _c(enc, "blocks.output.conv", F.relu(h))


def reference_decoder(dec, z):
    post_gain = 1 / (4 * N_BLK) ** 2
    h = _c(dec, "blocks.input", z)
    for gi in range(1, 5):
        for b in range(1, N_BLK + 1):
            h = _block(dec, f"blocks.group_{gi}.block_{b}", h, post_gain)
        if gi < 4:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
    return _c(dec, "blocks.output.conv", F.relu(h))


def _converted(image_size=16):
    enc, dec = released_layout()
    config, state = convert_openai_dvae(enc, dec, image_size=image_size)
    model = DiscreteVAE(config)
    model.load_state_dict(state, strict=True)
    return enc, dec, model.eval()


def test_config_is_inferred_from_the_released_shapes():
    enc, dec = released_layout()
    config, _ = convert_openai_dvae(enc, dec, image_size=16)
    assert (config.group_count, config.n_blk_per_group, config.n_hid, config.n_init, config.vocab_size) == (
        4,
        N_BLK,
        N_HID,
        N_INIT,
        VOCAB,
    )
    assert (config.input_kernel, config.token_kernel, config.input_channels, config.grid_size) == (7, 1, 3, 2)


def test_converted_model_matches_the_released_formulas():
    enc, dec, model = _converted()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x_mapped = 0.8 * x + 0.1
    ref_logits = reference_encoder(enc, x_mapped)
    torch.testing.assert_close(model.encoder_logits(x), ref_logits, rtol=1e-5, atol=1e-5)
    codes = ref_logits.argmax(1)
    assert torch.equal(model.encode(x), codes)
    one_hot = F.one_hot(codes, VOCAB).permute(0, 3, 1, 2).float()
    ref_out = reference_decoder(dec, one_hot)
    ref_pixels = torch.clamp((torch.sigmoid(ref_out[:, :3]) - 0.1) / 0.8, 0, 1)
    torch.testing.assert_close(model.decode(codes), ref_pixels, rtol=1e-5, atol=1e-5)
    mu, log_b = model.decode_distribution(one_hot)
    torch.testing.assert_close(log_b, ref_out[:, 3:], rtol=1e-5, atol=1e-5)


def test_unexpected_released_key_is_named_in_the_error():
    enc, dec = released_layout()
    enc["blocks.group_1.block_1.res_path.conv_9.w"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['blocks.group_1.block_1.res_path.conv_9.w'\]"):
        convert_openai_dvae(enc, dec)


def test_missing_released_key_is_named_in_the_error():
    enc, dec = released_layout()
    del dec["blocks.group_2.block_1.res_path.conv_2.b"]
    with pytest.raises(ValueError, match=r"missing \['decoder:blocks.group_2.block_1.res_path.conv_2.b'\]"):
        convert_openai_dvae(enc, dec)


def test_mis_shaped_weight_is_reported():
    enc, dec = released_layout()
    enc["blocks.group_2.block_2.res_path.conv_2.w"] = torch.zeros(4, 4, 5, 5)
    with pytest.raises(ValueError, match="shape mismatch encoder.blocks.group_2.block_2.res_path.conv_2.weight"):
        convert_openai_dvae(enc, dec)


def test_encoder_and_decoder_must_share_the_vocabulary():
    enc, dec = released_layout()
    dec["blocks.input.w"] = torch.zeros(N_INIT, VOCAB + 1, 1, 1)
    with pytest.raises(ValueError, match="vocabulary differs"):
        convert_openai_dvae(enc, dec)


def test_pickled_modules_are_refused_with_a_hint():
    with pytest.raises(ValueError, match="expected a dict of tensors"):
        convert_openai_dvae(torch.nn.Linear(1, 1), {})  # type: ignore[arg-type]


def test_load_from_safetensors_files_and_save_as_a_model_folder(tmp_path):
    enc, dec, model = _converted(image_size=256)
    save_state_dict(enc, tmp_path / "encoder.safetensors")
    save_state_dict(dec, tmp_path / "decoder.safetensors")
    loaded = load_openai_dvae(tmp_path / "encoder.safetensors", tmp_path / "decoder.safetensors")
    loaded.save_pretrained(tmp_path / "openai-dvae")
    again = DiscreteVAE.from_pretrained(tmp_path / "openai-dvae")
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(again.encode(x), model.encode(x))
