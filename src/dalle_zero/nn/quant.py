"""Weight-only int8 linear layers for fast sampling on CPU.

Sampling one image at a time is bound by reading the weights once per token (every block's four
matrices for each of the 1,024 tokens of a 32×32 image). Storing them as int8 with one scale per
output channel reads a quarter of the fp32 bytes; ``torch.ops.aten._weight_int8pack_mm`` (the
kernel torchao and gpt-fast use on CPU) multiplies bf16 activations by the int8 weights directly.
``benchmarks/bench_sampling.py`` times it against fp32 (BENCHMARKS.md, "Sampling").

Symmetric per-channel quantisation (``w ≈ scale[o] · q[o, i]``, ``q`` in [-127, 127]) is the usual
near-lossless choice for weights; activations stay in floating point and the residual stream, the
attention, the cache and the logits stay fp32. Inference only: quantised weights have no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# the CPU kernel reads the inner dimension in blocks of 16 (other widths crash it in torch 2.13)
K_MULTIPLE = 16


class Int8Linear(nn.Module):
    """``y = x @ (scale · q)ᵀ + b`` with int8 ``q`` [out, in]; input and output dtype are the caller's."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.in_features % K_MULTIPLE != 0:
            raise ValueError(f"int8 linear needs in_features divisible by {K_MULTIPLE}, got {linear.in_features}")
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(torch.bfloat16))
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def int8_kernel_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def quantize_linears_(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` inside ``module`` whose input width is a multiple of 16 by an
    :class:`Int8Linear`, in place (others stay as they are); returns how many were replaced."""
    if not int8_kernel_available():
        raise RuntimeError(f"this torch ({torch.__version__}) has no int8 weight kernel (_weight_int8pack_mm)")
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and child.in_features % K_MULTIPLE == 0:
            setattr(module, name, Int8Linear(child))
            count += 1
        elif not isinstance(child, nn.Linear):
            count += quantize_linears_(child)
    return count
