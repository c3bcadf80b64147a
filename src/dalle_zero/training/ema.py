"""Exponential moving average of weights (paper App. A.2: dVAE decay 0.999; App. B.2: prior 0.99 every 25 updates).

The EMA is a full copy of the model, kept in eval mode, whose parameters and floating-point buffers
follow the trained ones: ``ema = decay·ema + (1 − decay)·live``. Early in a run the effective decay is
``min(decay, (1 + n) / (10 + n))`` for the n-th update (the usual warm-up), so that a short run's EMA
is not dominated by the random initial weights; long runs reach the configured decay after a few
thousand updates, as in the paper.

Under FSDP the copy is sharded like the trained model (``training/distributed.py``): each rank
averages only its own shards, with no communication, and the full average exists only when it is
gathered to be saved or evaluated.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) tensor, sharing its storage; a plain tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


class EMA:
    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``, which must be sharded as the average is (or neither)."""
        decay = self.current_decay()
        live = model.state_dict()
        for name, avg in self.model.state_dict().items():
            avg, src = _local(avg), _local(live[name])
            if avg.is_floating_point():
                avg.lerp_(src.to(avg.dtype), 1.0 - decay)
            else:
                avg.copy_(src)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.model.load_state_dict(state, strict=True)
        self.num_updates = num_updates
