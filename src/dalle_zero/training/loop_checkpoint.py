"""What the training loop puts in a step checkpoint, and how it takes it back on ``resume``.

The file format (step folders, ``latest``, atomic writes) is :mod:`~dalle_zero.training.checkpoint`;
this module decides what of a live run goes in: the weights and EMA (gathered from the shards under
FSDP), the optimizer, each rank's random number streams, the task's state, the fp16 gradient scales
and the PowerSGD error buffers. Restoring comes in two parts because the weights must be loaded
before the model is sharded and the optimizer state after.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dalle_zero.io import load_state_dict_strict
from dalle_zero.training import checkpoint as ckpt
from dalle_zero.training import distributed
from dalle_zero.training.ema import EMA
from dalle_zero.training.full_copy import FullCopy

if TYPE_CHECKING:  # the loop imports this module
    from dalle_zero.training.loop import TrainTask


def save_loop_checkpoint(run_dir: Path, step: int, model: nn.Module, ema: EMA | None,
                         optimizer: torch.optim.Optimizer, task: TrainTask, ctx: distributed.DistContext,
                         full: FullCopy | None, *, keep: int, mixed: Any = None, powersgd: Any = None) -> None:
    """Write step ``step``'s checkpoint: weights, EMA, optimizer, every rank's random streams, the task's
    state, and (when given) the fp16 gradient scales and the PowerSGD error buffers; keep the newest
    ``keep``. Every rank calls it; rank 0 writes."""
    if full is not None:  # sharded: every rank sends its shards, rank 0 writes one process's files
        weights = full.weights(model)
        ema_weights = full.weights(ema.model) if ema is not None else None
        optimizer_state = distributed.full_optimizer_state_dict(model, optimizer)
    else:
        weights, optimizer_state = model.state_dict(), optimizer.state_dict()
        ema_weights = ema.state_dict() if ema is not None else None
    rng = distributed.gather_to_main(ckpt.rng_state(), ctx)  # each rank's streams (dropout draws differ)
    if not ctx.is_main:
        return
    assert rng is not None
    state = {
        "optimizer": optimizer_state,
        "rng": rng[0],
        "task": task.state_dict(),
        "ema_updates": ema.num_updates if ema is not None else 0,
    }
    if ctx.enabled:
        state["rng_ranks"] = rng
    if powersgd is not None:  # every rank's PowerSGD error buffers
        state["powersgd"] = powersgd
    if mixed is not None:  # fp16: the gradient scales and counters
        state["precision"] = mixed
    ckpt.save_checkpoint(run_dir, step, model=weights, ema=ema_weights, state=state, keep=keep)


def restore_weights(c: ckpt.Checkpoint, path: Path, model: nn.Module, ema: EMA | None, task: TrainTask) -> int:
    """Load a checkpoint's weights, EMA and task state (before anything is sharded); return its step."""
    load_state_dict_strict(model, c.model, source=str(path / "model.safetensors"))
    if ema is not None:
        if c.ema is None:
            raise ValueError(f"{path}: checkpoint has no EMA weights but this run uses EMA")
        ema.load_state_dict(c.ema, int(c.state["ema_updates"]))
    task.load_state_dict(c.state.get("task", {}))
    return c.step


def restore_state(c: ckpt.Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
                   ctx: distributed.DistContext, *, sharded: bool) -> None:
    """Load a checkpoint's optimizer state (into the shards under FSDP) and random number streams."""
    if sharded:
        distributed.load_full_optimizer_state_dict(model, optimizer, c.state["optimizer"])
    else:
        optimizer.load_state_dict(c.state["optimizer"])
    ranks = c.state.get("rng_ranks")
    if ranks is not None and len(ranks) == ctx.world_size:  # every rank continues its own streams
        ckpt.set_rng_state(ranks[ctx.rank])
    elif ctx.rank == 0:
        ckpt.set_rng_state(c.state["rng"])
    else:  # another world size (or an older checkpoint): the other ranks reseed, apart from rank 0's stream
        torch.manual_seed(c.step * 7919 + ctx.rank)
