"""The training loop every stage shares (dVAE, prior, CLIP, evaluator).

A stage describes *what* to train as a :class:`TrainTask` (data, loss, optimizer, learning rate,
evaluation); :func:`train` does the rest the same way for all of them: deterministic resumable
batches, gradient accumulation, bf16 or fp16 autocast (:mod:`~dalle_zero.training.precision`; fp16
with the paper's per-resblock gradient scales and skipped updates), gradient clipping, EMA of
weights, metrics.jsonl and a progress bar, step checkpoints with exact ``resume``
(:mod:`~dalle_zero.training.loop_checkpoint`), a clean stop on Ctrl-C or SIGTERM (under torchrun all
ranks stop after the same step, even when the signal reaches one of them), and DDP or FSDP when
launched by torchrun. The usable model (EMA weights when EMA is on) is saved to ``run_dir/model``.
The run folder's other files (``train_config.json``, ``metrics.jsonl``, the best model by
validation) are read and written by :mod:`~dalle_zero.training.run_files`.

Under FSDP (``strategy="fsdp"`` with several processes) every rank holds shards of the weights, the
gradients, the optimizer state and the EMA. Checkpoints and ``model/`` are the same files as
under DDP: the shards are gathered to rank 0's CPU and written there, so a run resumes under either
strategy. Rank 0 keeps one full copy of the model on its CPU (:mod:`~dalle_zero.training.full_copy`),
into which the gathered weights are loaded to save ``model/`` and to evaluate (moved to its device for
the evaluation). With a single process ``"fsdp"`` is the plain single-process loop.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from dalle_zero.config import Config, check_bool, check_choice, check_float, check_int
from dalle_zero.io import PretrainedModel
from dalle_zero.runtime import flush_denormals, keep_freed_memory
from dalle_zero.training import checkpoint as ckpt
from dalle_zero.training import distributed, precision
from dalle_zero.training.ema import EMA
from dalle_zero.training.full_copy import FullCopy
from dalle_zero.training.loop_checkpoint import restore_state, restore_weights, save_loop_checkpoint
from dalle_zero.training.run_files import keep_if_best, log_metrics, prepare_run_dir, truncate_metrics
from dalle_zero.training.sampler import ResumableBatchSampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LoopConfig(Config):
    """Run settings common to every stage (nested in each stage's train config)."""

    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    seed: int = 0
    precision: str = "fp32"  # "bf16" or "fp16" autocast (training/precision.py)
    clip_grad_norm: float | None = None
    ema_decay: float | None = None
    ema_every: int = 1
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    num_workers: int = 0
    activation_checkpointing: bool = False
    strategy: str = "ddp"  # with several processes: "ddp" (replicas) or "fsdp" (sharded, training/distributed.py)
    powersgd_rank: int = 0  # ddp only
    # PowerSGD (training/powersgd.py): "paper" (App. E) or "torch" (the stock hook); paper: 8 shards per matrix
    powersgd: str = "paper"
    powersgd_shards: int = 1
    # A validation figure (a key of the task's evaluate(), lower is better, e.g. "loss"): every evaluation
    # that lowers it saves the evaluated model to ``best_model/`` (a longer run that starts to memorise
    # its data keeps the model from before it did); None: only ``model/``, the last.
    select_by: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "ema_every", "log_every", "checkpoint_every"):
            check_int(self, name, min_value=1)
        for name in ("eval_every", "num_workers", "powersgd_rank", "seed"):
            check_int(self, name, min_value=0)
        check_int(self, "keep_checkpoints", min_value=1)
        if self.select_by is not None and (not isinstance(self.select_by, str) or not self.select_by):
            raise ValueError(f"LoopConfig.select_by must be a validation figure's name or null, got {self.select_by!r}")
        if self.select_by is not None and not self.eval_every:
            raise ValueError("LoopConfig.select_by needs eval_every > 0: the model is chosen at evaluations")
        check_choice(self, "precision", precision.PRECISIONS)
        if self.precision == "fp16" and self.powersgd_rank > 0:  # PowerSGD would compress scaled gradients
            raise ValueError("LoopConfig.precision fp16 does not combine with PowerSGD yet; set powersgd_rank to 0")
        check_bool(self, "activation_checkpointing")
        check_choice(self, "strategy", distributed.STRATEGIES)
        distributed.check_powersgd(self.powersgd, self.powersgd_rank, self.powersgd_shards)  # PowerSGD
        if self.strategy == "fsdp" and self.powersgd_rank > 0:
            raise ValueError(
                f"LoopConfig.powersgd_rank is {self.powersgd_rank} but PowerSGD compresses DDP's gradients only; "
                "set it to 0 with strategy 'fsdp'"
            )
        if self.clip_grad_norm is not None:
            check_float(self, "clip_grad_norm", min_value=0.0, strict_min=True)
        if self.ema_decay is not None:
            check_float(self, "ema_decay", min_value=0.0, max_value=1.0, strict_min=True)
            if self.ema_decay >= 1.0:
                raise ValueError(f"LoopConfig.ema_decay must be < 1, got {self.ema_decay}")


def prepare_cpu_process() -> None:
    """The process-wide CPU settings a training run (and the demo's probe of its steps) runs with: glibc
    keeps freed memory for the next step (:func:`~dalle_zero.runtime.keep_freed_memory`), and denormal
    floats are flushed to zero (:func:`~dalle_zero.runtime.flush_denormals`)."""
    keep_freed_memory()
    flush_denormals()


class TrainTask:
    """What a stage trains. Subclasses implement the data, optimizer, learning rate and loss.

    ``loss`` receives the live model and must call it (or its methods) to compute the loss; the
    loop takes care of DDP, autocast and accumulation around it.
    """

    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        return default_collate(items)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        raise NotImplementedError

    def lr_at(self, step: int) -> float:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        return {}

    def on_step_end(self, model: nn.Module, step: int, metrics: dict[str, float]) -> None:
        return None

    def on_evaluate(self, step: int, row: dict[str, float]) -> None:
        """The figures ``evaluate`` returned at ``step``, on every rank (rank 0 evaluates)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class _LossModule(nn.Module):
    """Makes the task's loss the module's forward, so DDP sees every parameter the loss uses (and FSDP
    gathers the parameters outside the blocks for the whole loss, whatever model methods it calls)."""

    def __init__(self, model: nn.Module, task: TrainTask) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.task.loss(self.model, batch, step)


class _StopFlag:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request to checkpoint and stop."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stop requested: saving a checkpoint and exiting (press Ctrl-C again to abort)")

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(
    model: PretrainedModel,
    task: TrainTask,
    loop: LoopConfig,
    run_dir: str | Path,
    *,
    train_config: Config,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
    stop_after: int | None = None,
    resume_hint: str | None = "continue with --resume",
) -> Path:
    """Train ``model`` on ``task`` for ``loop.steps`` updates; return the saved model folder.

    ``stop_after`` stops (with a checkpoint) after that many updates in this call, which is what a
    killed run looks like from the outside; tests use it to check resume. A stop by a signal prints
    where the checkpoint is and ``resume_hint``, how to go on (None: the caller says it).
    """
    run_dir = Path(run_dir)
    ctx = distributed.setup(device)
    sharded = loop.strategy == "fsdp" and ctx.enabled
    if ctx.is_main:
        prepare_run_dir(run_dir, train_config, resume=resume)
    distributed.barrier(ctx)

    torch.manual_seed(loop.seed + ctx.rank)
    if ctx.device.type == "cpu":
        prepare_cpu_process()  # no page faults on every step's large activations; no denormals
    full = FullCopy(model, ctx) if sharded else None
    if not sharded:
        model.to(ctx.device)  # (FSDP moves each unit to the device as it shards it)
    if loop.activation_checkpointing:
        if not hasattr(model, "set_activation_checkpointing"):
            raise ValueError(f"{type(model).__name__} does not support activation checkpointing")
        model.set_activation_checkpointing(True)
    ema = EMA(model, loop.ema_decay) if loop.ema_decay else None

    step, saved = 0, None
    if resume:
        path = ckpt.latest_step_dir(run_dir)
        if path is None:
            logger.info("no checkpoint in %s: starting from scratch", run_dir)
        else:
            saved = ckpt.load_checkpoint(path)
            step = restore_weights(saved, path, model, ema, task)
            logger.info("resumed from %s", path)
    if ctx.is_main:  # rows after the checkpoint (all of them without one) are logged again; a torn line goes
        truncate_metrics(run_dir / "metrics.jsonl", step)
    if step >= loop.steps:
        logger.info("run already complete at step %d", step)
        return _save_model(model, ema, run_dir, ctx, None)  # nothing is sharded yet: rank 0 saves its own

    mixed = precision.make_precision(loop.precision, model, ctx.device, world_size=ctx.world_size,
                                     sharded=sharded, main=ctx.is_main)
    loss_module: nn.Module = _LossModule(model, task)
    if sharded:
        param_dtype = torch.bfloat16 if loop.precision == "bf16" else None
        distributed.shard(loss_module, ctx, blocks=distributed.repeated_blocks(model), param_dtype=param_dtype)
        if ema is not None:  # sharded alike, so that each rank averages its own shards
            distributed.shard(ema.model, ctx, blocks=distributed.repeated_blocks(ema.model))
    else:
        loss_module = distributed.wrap(  # PowerSGD: the paper's hook compresses the blocks' matrices
            loss_module, ctx, powersgd_rank=loop.powersgd_rank, powersgd=loop.powersgd,
            powersgd_shards=loop.powersgd_shards, blocks=distributed.repeated_blocks(model), seed=loop.seed,
        )
    optimizer = task.make_optimizer(model)  # over the shards under FSDP
    if saved is not None:
        restore_state(saved, model, optimizer, ctx, sharded=sharded)
        mixed.load_state_dict(saved.state.get("precision"))  # fp16: the gradient scales
        distributed.load_powersgd_state(loss_module, saved.state.get("powersgd"), ctx)  # PowerSGD error buffers

    dataset = task.train_dataset()
    sampler = ResumableBatchSampler(
        len(dataset), loop.batch_size, seed=loop.seed, start=step * loop.grad_accum,
        rank=ctx.rank, world_size=ctx.world_size,
    )
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=task.collate, num_workers=loop.num_workers,
        persistent_workers=loop.num_workers > 0,
        generator=torch.Generator().manual_seed(loop.seed),  # keep the global RNG stream untouched
    )
    batches = iter(loader)

    bar = _progress_bar(loop.steps, step, enabled=progress and ctx.is_main)
    sums: dict[str, float] = {}
    n_logged, t_log, samples_since = 0, time.perf_counter(), 0
    stop_at = loop.steps if stop_after is None else min(loop.steps, step + stop_after)
    model.train()
    stopping = False
    with _StopFlag() as stop:
        while step < stop_at:
            lr = task.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            metrics: dict[str, float] = {}
            for micro in range(loop.grad_accum):
                batch = next(batches)
                sync = micro == loop.grad_accum - 1 or not ctx.enabled
                with contextlib.nullcontext() if sync else distributed.no_sync(loss_module):
                    with mixed.autocast():
                        loss, parts = loss_module(batch, step)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower the learning rate")
                    (loss / loop.grad_accum).backward()
                for k, v in {"loss": loss.item(), **parts}.items():
                    metrics[k] = metrics.get(k, 0.0) + float(v) / loop.grad_accum
            finite = mixed.unscale_()  # fp16: the gradients of each resblock divided by its scale
            if loop.clip_grad_norm is not None:
                clip = distributed.clip_sharded_grad_norm_ if sharded else distributed.grad_clipper(loss_module)
                metrics["grad_norm"] = float(clip(model.parameters(), loop.clip_grad_norm))
            # fp16, PowerSGD "paper": a nonfinite gradient skips the update
            applied = finite and distributed.update_is_finite(loss_module)
            if applied:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            mixed.end_step(step, applied, metrics)
            step += 1
            samples_since += loop.batch_size * loop.grad_accum * ctx.world_size
            if ema is not None and step % loop.ema_every == 0:
                ema.update(model)
            task.on_step_end(model, step, metrics)
            metrics["lr"] = lr
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            n_logged += 1
            bar.update(1)

            # a signal may reach one rank only, or the ranks at different steps: they stop together
            stopping = distributed.any_rank(stop.requested, ctx)
            last = step == stop_at or stopping
            if step % loop.log_every == 0 or last:
                now = time.perf_counter()
                row = {k: distributed.all_reduce_mean(v / n_logged, ctx) for k, v in sums.items()}
                row["samples_per_s"] = samples_since / max(now - t_log, 1e-9)
                log_metrics(run_dir, step, row, ctx)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                sums, n_logged, t_log, samples_since = {}, 0, now, 0
            if (loop.eval_every and step % loop.eval_every == 0) or step == loop.steps:
                row = _evaluate(task, model, ema, step, run_dir, ctx, full, select_by=loop.select_by)
                task.on_evaluate(step, distributed.from_main(row, ctx))
            if step % loop.checkpoint_every == 0 or last:
                save_loop_checkpoint(run_dir, step, model, ema, optimizer, task, ctx, full,
                                     keep=loop.keep_checkpoints, mixed=mixed.state_dict(),
                                     powersgd=distributed.gather_powersgd_state(loss_module, ctx))
                _save_model(model, ema, run_dir, ctx, full)
            if full is not None:
                full.release()  # the gathered weights are not kept between steps
            if stopping:
                break
    bar.close()
    mixed.close()
    if ctx.enabled:  # the wrappers hold the group's work objects (in reference cycles): free them first
        del loss_module, optimizer
        gc.collect()
    distributed.finish(ctx)
    if stopping and ctx.is_main and resume_hint is not None:
        print(f"stopped at step {step}; {resume_hint} (checkpoint in {run_dir})")
    return run_dir / "model"


def _evaluate(task: TrainTask, model: nn.Module, ema: EMA | None, step: int, run_dir: Path,
              ctx: distributed.DistContext, full: FullCopy | None, *,
              select_by: str | None = None) -> dict[str, float]:
    """The task's validation figures (on rank 0; empty on the others), logged, and the model kept if best."""
    target: nn.Module | None = ema.model if ema is not None else model
    if full is not None:
        target = full.of(target)
    if target is None or not ctx.is_main:
        return {}
    if full is not None:
        target.to(ctx.device)
    was_training = target.training
    target.eval()
    # the task may draw random numbers (e.g. sample images): keep the training RNG stream untouched
    state = ckpt.rng_state()
    with torch.no_grad():
        row = task.evaluate(target, step, run_dir)
    ckpt.set_rng_state(state)
    target.train(was_training)
    if full is not None:
        target.cpu()
    if row:
        log_metrics(run_dir, step, {f"val/{k}": v for k, v in row.items()}, ctx)
        logger.info("step %d validation: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
    if select_by is not None:
        keep_if_best(target, row, select_by, step, run_dir)
    return row


def _save_model(model: PretrainedModel, ema: EMA | None, run_dir: Path, ctx: distributed.DistContext,
                full: FullCopy | None) -> Path:
    out = run_dir / "model"
    target: nn.Module | None = ema.model if ema is not None else model
    if full is not None:
        target = full.of(target)
    if ctx.is_main and target is not None:
        target.save_pretrained(out)
    return out


def _progress_bar(total: int, initial: int, *, enabled: bool) -> Any:
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                desc="train")
