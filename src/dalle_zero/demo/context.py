"""What the stages of ``dalle demo`` share: the :class:`DemoContext` (output folder, settings,
dataset, time used), the stage builders' type, and the helpers that turn a stage's preset into
train-config fields."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dalle_zero.config import Config
from dalle_zero.demo import budget
from dalle_zero.demo.config import DemoConfig
from dalle_zero.tokenizers.bpe import BPETokenizer
from dalle_zero.training.loop import TrainTask

# Builds (model, task, train config) for a given step count.
StageBuilder = Callable[[int], tuple[nn.Module, TrainTask, Config]]
PrecisionBuilder = Callable[[int, str], tuple[nn.Module, TrainTask, Config]]  # (steps, precision)


class DemoInterrupted(Exception):
    """A stage stopped before its end (Ctrl-C); its checkpoint lets the next run resume it."""


@dataclass
class DemoContext:
    """What the stages share: output folder, settings, dataset folder, time used so far."""

    out: Path
    config: DemoConfig
    data: Path | None = None
    progress: bool = True
    elapsed: float = 0.0  # seconds spent by finished stages (all runs) plus this run's current stage start
    done: list[str] = field(default_factory=list)  # training stages already finished
    log: Callable[[str], None] = print
    reserve: float | None = None  # seconds kept after training (plan_reserve); None: config.reserve_seconds
    windows: dict[str, float] = field(default_factory=dict)  # seconds of stages trained side by side

    @property
    def tokenizer_dir(self) -> Path:
        return self.out / "tokenizer"

    @property
    def tokens_dir(self) -> Path:
        return self.out / "tokens"

    def run_dir(self, stage: str) -> Path:
        return self.out / "runs" / stage

    @property
    def model_dir(self) -> Path:
        return self.out / "model"

    def seconds_left(self) -> float:
        reserve = self.config.reserve_seconds if self.reserve is None else self.reserve
        return self.config.minutes * 60.0 - self.elapsed - reserve


def data_dir(ctx: DemoContext) -> Path:
    if ctx.data is None:
        raise RuntimeError("the data stage has not run")
    return ctx.data


def load_tokenizer(ctx: DemoContext) -> BPETokenizer:
    return BPETokenizer.from_pretrained(ctx.tokenizer_dir)


def with_loop(fields: dict[str, Any], steps: int) -> dict[str, Any]:
    """Stage config fields with ``loop.steps`` set, checkpoints ~8 times and evaluation only at the end.

    A stage that keeps its best model (``loop.select_by``) is evaluated at every checkpoint, and at
    least every ``loop.eval_every`` steps when its preset sets that: over a long budget the prior's
    validation loss is lowest for a few thousand steps, and eight evaluations can miss them.
    """
    loop = dict(fields.get("loop") or {})
    loop["steps"] = steps
    loop.setdefault("checkpoint_every", budget.every(steps, 8))
    loop.setdefault("log_every", budget.every(steps, 100))
    every = loop["checkpoint_every"]
    loop["eval_every"] = min(every, loop.get("eval_every") or every) if loop.get("select_by") else 0
    return {**fields, "loop": loop}


def image_stage_fields(ctx: DemoContext, config: dict[str, Any], steps: int, **model: Any) -> dict[str, Any]:
    """:func:`with_loop` fields of a stage trained on the dataset's images: its folder, its image size
    (unless the stage config sets one) and ``model`` overrides."""
    fields = with_loop(config, steps)
    fields["data"] = str(data_dir(ctx))
    fields["model"] = {"image_size": ctx.config.dataset.size, **(fields.get("model") or {}), **model}
    return fields


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for a model's initialisation, then restore the previous stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
