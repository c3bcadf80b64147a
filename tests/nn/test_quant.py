"""Int8 weight-only linear layers and the quantised transformer used for fast CPU sampling."""

import pytest
import torch

from dalle_zero.nn.quant import Int8Linear, quantize_linears_
from dalle_zero.sampling.generate import generate_image_tokens
from tests.factories.pipelines import tiny_transformer


def test_int8_linear_is_close_to_the_fp32_layer_and_keeps_the_callers_dtype():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 24)
    q = Int8Linear(linear)
    assert q.qweight.dtype == torch.int8 and q.qweight.shape == (24, 64)
    x = torch.randn(2, 5, 64)
    y, ref = q(x), linear(x)
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert (y - ref).abs().max() < 0.02 * ref.abs().max()  # int8 weights + bf16 activations
    assert q(x.bfloat16()).dtype == torch.bfloat16


def test_widths_the_kernel_cannot_take_are_refused_or_left_alone():
    with pytest.raises(ValueError, match="divisible by 16"):
        Int8Linear(torch.nn.Linear(12, 16))
    net = torch.nn.Sequential(torch.nn.Linear(32, 12), torch.nn.ReLU(), torch.nn.Linear(12, 32))
    assert quantize_linears_(net) == 1
    assert isinstance(net[0], Int8Linear) and isinstance(net[2], torch.nn.Linear)


def test_quantised_prior_predicts_like_the_fp32_one_and_samples_consistently(tmp_path):
    model = tiny_transformer(40, text_seq_len=6, image_grid=4, attn_pattern=("row", "column", "conv"))
    g = torch.Generator().manual_seed(0)
    text, image = torch.randint(1, 40, (3, 6), generator=g), torch.randint(0, 16, (3, 16), generator=g)
    with torch.no_grad():
        ref = model(text, image)[1].log_softmax(-1)
        model.quantize_int8()
        got = model(text, image)[1].log_softmax(-1)
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == 4 * 3  # qkv, proj, fc, proj per block
    kl = (ref.exp() * (ref - got)).sum(-1).mean()
    assert 0 < kl < 1e-3
    cached = generate_image_tokens(model, text, generator=torch.Generator().manual_seed(1))
    uncached = generate_image_tokens(model, text, generator=torch.Generator().manual_seed(1), use_cache=False)
    assert torch.equal(cached, uncached)
    with pytest.raises(ValueError, match="int8"):
        model.save_pretrained(tmp_path / "q")
