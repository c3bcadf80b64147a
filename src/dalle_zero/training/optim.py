"""Optimizer helpers shared by every stage: AdamW with weight decay on matrices only.

The paper decays the transformer's matrices (paper App. B.2, wd 4.5e-2) and the dVAE's weights
(§1.7, wd 1e-4). Following nanoGPT, "matrix" means a parameter with two or more dimensions (linear
and convolution weights, embedding tables); gains and biases are never decayed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, *, no_decay: Iterable[str] = ()) -> list[dict]:
    """Split trainable parameters into a decayed group (dim >= 2) and an undecayed one.

    ``no_decay`` lists name fragments that are never decayed even if they are matrices (e.g. "embed").
    """
    skip = tuple(no_decay)
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() >= 2 and not any(s in name for s in skip):
            decay.append(p)
        else:
            keep.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": keep, "weight_decay": 0.0},
    ]


def adamw(
    model: nn.Module,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    no_decay: Iterable[str] = (),
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, as one fused kernel on CPU and CUDA.

    torch's default CPU AdamW loops over tensors; the fused kernel computes the same update in one
    pass, which matters on a small prior whose optimizer step is a visible share of its train step.
    """
    groups = param_groups(model, weight_decay, no_decay=no_decay)
    device = next(model.parameters()).device
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=device.type in ("cpu", "cuda"))
