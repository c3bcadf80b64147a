"""Rank 0's full copy of a sharded model (FSDP runs only).

Under FSDP no rank holds whole weights, yet evaluation, step checkpoints and ``model/`` need them:
:class:`FullCopy` gathers the shards once per step to rank 0's CPU and loads them into one
unsharded copy of the model kept there.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dalle_zero.training import distributed


class FullCopy:
    """Rank 0's full, unsharded copy of the model on its CPU (FSDP runs only): the gathered shards of
    the live model or of its EMA are loaded into it, to evaluate and to save ``model/``.

    A module's shards are gathered once until :meth:`release` (the loop releases after every step),
    however many of evaluation, checkpoint and ``model/`` need them at that step."""

    def __init__(self, model: nn.Module, ctx: distributed.DistContext) -> None:
        self.model = copy.deepcopy(model).cpu() if ctx.is_main else None
        self._gathered: dict[int, dict[str, torch.Tensor]] = {}  # id(module) -> its full state dict

    def weights(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """``module``'s full state dict on rank 0's CPU ({} elsewhere); every rank calls it."""
        if id(module) not in self._gathered:
            self._gathered[id(module)] = distributed.full_state_dict(module)
        return self._gathered[id(module)]

    def release(self) -> None:
        """Drop the weights gathered since the last release (rank 0's CPU memory)."""
        self._gathered = {}

    def of(self, module: nn.Module) -> nn.Module | None:
        """The copy holding ``module``'s gathered weights on rank 0, None elsewhere; every rank calls it."""
        weights = self.weights(module)
        if self.model is not None:
            self.model.load_state_dict(weights)
        return self.model
