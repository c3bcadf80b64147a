"""The per-resblock gradient scales of fp16 training and their dynamics (paper App. D(1)).

The model multiplies each resblock's backward gradient by its scale (``nn/grad_scale.py``), so the
parameter gradients inside resblock ``k`` arrive multiplied by ``multipliers[k]``.
:meth:`ResblockGradScales.unscale_` divides them and says which resblocks hold a nonfinite gradient;
:meth:`~ResblockGradScales.update` then moves the scales, per resblock:

- a resblock whose gradients are all finite: scale × 2^(1/1000);
- a nonfinite gradient: the update is skipped, and the scale is divided by √2, but not twice within
  125 updates. A resblock whose scale was divided fewer than 125 updates ago keeps its scale (the
  update is still skipped: its gradient is unusable), so a burst of overflows lowers it once;
- every scale stays in [M·2⁷, M·2²⁴], starting from M·2¹³.

M is the number of data-parallel replicas. The paper divides each replica's loss by the *overall*
batch size and multiplies the scales by M (App. D(3)); here each replica's loss is the mean over its
own batch (DDP averages the replicas), which makes its gradients M times larger than the paper's.
The scales are kept and logged in the paper's units, and the backward pass multiplies by
``scale / M``: the product fp16 sees is the paper's. Under DDP every replica sees the same averaged
gradients, so all of them take the same decisions and their scales stay equal.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

GROWTH = 2.0 ** (1 / 1000)  # after a clean update
DECREASE = math.sqrt(2.0)  # after a nonfinite gradient
DECREASE_EVERY = 125  # updates: at most one decrease per resblock within this many
INIT_LOG2, MIN_LOG2, MAX_LOG2 = 13, 7, 24  # scale = M · 2^these


class ResblockGradScales:
    """One gradient scale per resblock, in float64 on the CPU (``scales``), and their backward-pass
    multipliers ``scales / M`` as fp32 on ``device`` (the tensor the model reads, updated in place).

    ``skipped`` counts the updates skipped so far (the trainer adds to it); the state round-trips
    through :meth:`state_dict`.
    """

    def __init__(self, n_resblocks: int, *, world_size: int = 1, device: torch.device | str = "cpu") -> None:
        if n_resblocks < 1 or world_size < 1:
            raise ValueError(f"need n_resblocks >= 1 and world_size >= 1, got {n_resblocks} and {world_size}")
        self.world_size = world_size
        self.low, self.high = world_size * 2.0**MIN_LOG2, world_size * 2.0**MAX_LOG2
        self.scales = torch.full((n_resblocks,), world_size * 2.0**INIT_LOG2, dtype=torch.float64)
        # the update at which each scale was last divided (far enough back that the first may be)
        self.last_decrease = torch.full((n_resblocks,), -DECREASE_EVERY, dtype=torch.int64)
        self.skipped = 0
        self.multipliers = torch.empty(n_resblocks, dtype=torch.float32, device=device)
        self._sync()

    def _sync(self) -> None:
        self.multipliers.copy_((self.scales / self.world_size).float())

    def unscale_(self, resblocks: list[list[nn.Parameter]]) -> torch.Tensor:
        """Divide the gradients of each resblock's parameters by its multiplier, in place; return
        BoolTensor[n_resblocks], True where every gradient of that resblock is finite."""
        if len(resblocks) != len(self.scales):
            raise ValueError(f"{len(self.scales)} gradient scales but {len(resblocks)} resblocks")
        finite = []
        for k, params in enumerate(resblocks):
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                torch._foreach_div_(grads, self.multipliers[k])
            finite.append(torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else torch.tensor(True))
        return torch.stack([f.cpu() for f in finite])

    def update(self, finite: torch.Tensor, step: int) -> bool:
        """Move the scales after update ``step`` (0-based) from ``finite`` (per resblock, from
        :meth:`unscale_`); return whether that update may be applied (False: skip it)."""
        finite = finite.to(torch.bool).cpu()
        may_decrease = (step - self.last_decrease) >= DECREASE_EVERY
        decrease = ~finite & may_decrease
        self.scales = torch.where(finite, self.scales * GROWTH, self.scales)
        self.scales = torch.where(decrease, self.scales / DECREASE, self.scales).clamp(self.low, self.high)
        self.last_decrease = torch.where(decrease, torch.full_like(self.last_decrease, step), self.last_decrease)
        self._sync()
        return bool(finite.all())

    def summary(self) -> dict[str, float]:
        """log2 of the smallest, median and largest scale (for metrics.jsonl)."""
        log2 = self.scales.log2()
        return {
            "grad_scale_log2_min": float(log2.min()),
            "grad_scale_log2_median": float(log2.median()),
            "grad_scale_log2_max": float(log2.max()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "scales": self.scales.clone(),
            "last_decrease": self.last_decrease.clone(),
            "skipped": self.skipped,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved state; scales saved under another number of replicas M are converted to this
        one's units (×M_now/M_then), so the product fp16 sees is unchanged."""
        scales = torch.as_tensor(state["scales"], dtype=torch.float64)
        if scales.shape != self.scales.shape:
            raise ValueError(f"checkpoint holds {scales.numel()} gradient scales, this model has {self.scales.numel()}")
        self.scales = (scales * self.world_size / int(state["world_size"])).clamp(self.low, self.high)
        self.last_decrease = torch.as_tensor(state["last_decrease"], dtype=torch.int64).clone()
        self.skipped = int(state["skipped"])
        self._sync()
