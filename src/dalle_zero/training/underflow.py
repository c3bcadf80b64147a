"""Measuring fp16 gradient underflow: one global scale against one scale per resblock (paper App. D).

fp16 holds magnitudes from about 6e-8 (the smallest subnormal) to 65504. A loss scale large enough
to keep a block's small gradients off zero can overflow another block's large ones, so one global
scale must fit the block with the largest gradients and leaves the others to underflow; per-resblock
scales fit each block on its own. These functions measure that on a real model and batch:

- :func:`fp16_resblock_gradients`: one fp16 forward and backward under given per-resblock scales;
  the unscaled parameter gradients of every resblock and whether they are finite;
- :func:`largest_finite_log2`: for each resblock, the largest power-of-two scale (within a range)
  at which its gradients stay finite, and the largest one at which all of them do (the best global
  scale). The filter of ``nn/grad_scale.py`` keeps the resblocks independent, so one sweep of
  shared scales answers both;
- :func:`zero_fraction`: the share of gradient entries that fp16 flushed to zero where fp32 has none.

``experiments/fp16_training.py`` and the tests use them; figures are in BENCHMARKS.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def fp16_resblock_gradients(
    model: nn.Module, loss_fn: Callable[[nn.Module], Tensor], scales: Tensor
) -> tuple[list[list[Tensor]], Tensor]:
    """Per resblock, its parameters' gradients (divided by its scale) after one fp16-autocast backward of
    ``loss_fn(model)`` with ``scales`` (Tensor[n_resblocks], fp32), and BoolTensor[n_resblocks]: all finite.

    ``model`` needs ``set_gradient_scales`` and ``resblock_parameters`` (``DalleTransformer``); its
    gradients are cleared before and left holding this backward's; its scales are restored after."""
    device = next(model.parameters()).device
    previous = model.grad_scales  # type: ignore[attr-defined]
    model.zero_grad(set_to_none=True)
    model.set_gradient_scales(scales.to(device=device, dtype=torch.float32))  # type: ignore[operator]
    try:
        with torch.autocast(device.type, dtype=torch.float16):
            loss = loss_fn(model)
        loss.backward()
    finally:
        model.set_gradient_scales(previous)  # type: ignore[operator]
    grads, finite = [], []
    for k, params in enumerate(model.resblock_parameters()):  # type: ignore[operator]
        block = [p.grad / scales[k] for p in params if p.grad is not None]
        grads.append(block)
        finite.append(all(bool(torch.isfinite(g).all()) for g in block))
    return grads, torch.tensor(finite)


def largest_finite_log2(
    model: nn.Module, loss_fn: Callable[[nn.Module], Tensor], *, low: int = 0, high: int = 24
) -> tuple[Tensor, int | None]:
    """(LongTensor[n_resblocks]: per resblock, the largest k in [low, high] at which scale 2^k keeps its
    gradients finite, ``low - 1`` if none does; the largest k at which every resblock's are, or None)."""
    n = len(model.resblock_parameters())  # type: ignore[operator]
    best = torch.full((n,), low - 1, dtype=torch.long)
    best_global = None
    for k in range(low, high + 1):
        _, finite = fp16_resblock_gradients(model, loss_fn, torch.full((n,), 2.0**k))
        best = torch.where(finite, torch.full_like(best, k), best)
        if bool(finite.all()):
            best_global = k
    return best, best_global


def zero_fraction(grads: list[Tensor], reference: list[Tensor]) -> float:
    """The fraction of entries that are zero in ``grads`` but not in ``reference`` (the fp32 gradients of
    the same parameters), among the nonzero entries of ``reference``."""
    zeros = nonzero = 0
    for g, ref in zip(grads, reference, strict=True):
        mask = ref != 0
        nonzero += int(mask.sum())
        zeros += int(((g == 0) & mask).sum())
    return zeros / max(nonzero, 1)
