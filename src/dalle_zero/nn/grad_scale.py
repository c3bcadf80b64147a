"""Per-resblock gradient scaling: the residual ``x + f(x)`` of fp16 training (paper App. D(1), Fig. 4).

The identity path ``x`` stays fp32; the branch ``f`` runs in fp16 under autocast. fp16's 5-bit
exponent cannot hold the activation gradients of every resblock at once under one loss scale, so
each resblock gets its own scale ``s``. In the backward pass (paper Fig. 4):

1. the gradient arriving from the identity path (fp32) is multiplied by ``s`` *before* it is cast
   to the branch's fp16 (:class:`_ScaleGradient`), so that small gradients do not flush to zero;
2. it is backpropagated through the branch in fp16; the branch's parameter gradients come out
   multiplied by ``s`` (the trainer divides them and checks them, ``training/grad_scales.py``);
3. at the branch's input it is divided by ``s`` again and a filter sets Inf and NaN to zero
   (:class:`_UnscaleGradient`) before it is added to the identity path's gradient, so an overflow
   in one block shrinks that block's scale only, not the scales of the blocks below it.

With ``scale=None`` :func:`residual` is the plain ``x + f(x)``. Both functions are ordinary autograd
nodes inside the block's forward, so activation checkpointing recomputes them with the block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class _ScaleGradient(torch.autograd.Function):
    """Forward: the branch's output as fp32 (for the fp32 identity path). Backward: the fp32 gradient
    times the scale, then cast to the branch's dtype."""

    @staticmethod
    def forward(ctx: Any, out: Tensor, scale: Tensor) -> Tensor:
        ctx.scale = scale  # not saved for backward: the trainer changes it only after the backward pass
        ctx.dtype = out.dtype
        return out.float() if out.dtype != torch.float32 else out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return (grad * ctx.scale).to(ctx.dtype), None


class _UnscaleGradient(torch.autograd.Function):
    """Forward: identity. Backward: the gradient divided by the scale, with Inf and NaN set to zero."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad / ctx.scale
        return torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad)), None


def residual(x: Tensor, branch: Callable[[Tensor], Tensor], scale: Tensor | None = None) -> Tensor:
    """``x + branch(x)``; with ``scale`` (a 0-dim fp32 tensor on x's device) the branch's gradient is
    scaled by it as the module docstring describes. x: Tensor[..., C] fp32 -> Tensor[..., C]."""
    if scale is None:
        return x + branch(x)
    return x + _ScaleGradient.apply(branch(_UnscaleGradient.apply(x, scale)), scale)
