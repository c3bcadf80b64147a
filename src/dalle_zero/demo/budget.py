"""Turning the demo's minutes into step counts: measure steps per second, then share the time left.

Before a training stage starts, :func:`measure_steps_per_second` runs a few optimizer steps of that
stage (its real task, data, model and batch size) on a throw-away copy of the model and times them,
so the plan reflects this machine *now*, busy or not. :func:`plan_steps` gives the stage its share
of the training time still left among the stages still to run, so a stage that overran (or a slow
dataset build) shrinks the later ones instead of blowing the budget.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dalle_zero.training.loop import LoopConfig, TrainTask, prepare_cpu_process


def measure_steps_per_second(model: nn.Module, task: TrainTask, loop: LoopConfig, *, steps: int = 4) -> float:
    """Optimizer steps per second of ``task`` at ``loop``'s batch size and precision, data loading included.

    One untimed warm-up step (mask building, allocator), then ``steps`` timed ones on a deep copy of
    ``model``; the model, the task's state and torch's global RNG are left as they were.
    """
    prepare_cpu_process()  # as training.loop.train does on CPU: the probe must run as training will
    probe = copy.deepcopy(model)
    probe.train()
    optimizer = task.make_optimizer(probe)
    for group in optimizer.param_groups:
        group["lr"] = task.lr_at(0)
    dataset = task.train_dataset()
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("cannot time a stage with an empty training set")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if loop.precision == "bf16" else contextlib.nullcontext()
    elapsed = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(loop.seed)
        for k in range(steps + 1):
            t0 = time.perf_counter()
            for _ in range(loop.grad_accum):
                idx = torch.randint(n, (loop.batch_size,)).tolist()
                batch = task.collate([dataset[(i, 1_000_003 * k + j)] for j, i in enumerate(idx)])
                with autocast:
                    loss, _ = task.loss(probe, batch, 0)
                (loss / loop.grad_accum).backward()
            if loop.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(probe.parameters(), loop.clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if k > 0:  # the first step pays one-off costs
                elapsed += time.perf_counter() - t0
    return steps / max(elapsed, 1e-9)


@torch.no_grad()
def measure_sampling_rate(pipeline: Any, config: Any, captions: Sequence[str], *, images: int | None = None) -> float:
    """Images per second that the evaluation draws with ``pipeline`` at ``config`` (an ``EvalConfig``).

    One untimed warm-up batch of 8, then one timed batch of ``images`` (default ``config.batch_size``)
    through :func:`~dalle_zero.evaluation.evaluate.sample_candidates`: sampling with the key/value
    cache and guidance, then decoding. The cost does not depend on the weights, so an untrained
    model of the same shapes times it before any stage has trained. Torch's global RNG is untouched.
    """
    from dalle_zero.evaluation.evaluate import sample_candidates

    n = config.batch_size if images is None else images
    if n < 1 or not captions:
        raise ValueError(f"need captions and images >= 1, got {len(captions)} captions and images={n}")
    picks = [captions[i % len(captions)] for i in range(n)]
    generator = torch.Generator().manual_seed(0)
    sample_candidates(pipeline, picks[:8], config, generator=generator)
    t0 = time.perf_counter()
    sample_candidates(pipeline, picks, config, generator=generator)
    return n / max(time.perf_counter() - t0, 1e-9)


def best_sampling_rate(
    pipeline: Any, config: Any, captions: Sequence[str], thread_counts: Sequence[int]
) -> tuple[float, dict[int, float]]:
    """The fastest of :func:`measure_sampling_rate` over ``thread_counts`` (torch intra-op threads),
    and every count's rate; torch's thread count is left as it was.

    The evaluation chooses its own thread count when it starts, so a stage that chose fewer threads
    (a moment's contention) must not make the sampling time kept for it look twice as long."""
    before = torch.get_num_threads()
    rates: dict[int, float] = {}
    try:
        for n in sorted(set(thread_counts)):
            torch.set_num_threads(n)
            rates[n] = measure_sampling_rate(pipeline, config, captions)
    finally:
        torch.set_num_threads(before)
    return max(rates.values()), rates


def fastest_thread_count(
    candidates: Sequence[int] | None = None, *, repeats: int = 5, margin: float = 1.2
) -> tuple[int, dict[int, float]]:
    """The torch intra-op thread count that runs a small transformer-like workload fastest right now.

    On a machine shared with other busy processes, OpenMP threads that wait for each other at every
    operation can make 2 threads several times *slower* than 1 (measured here: a prior training step
    1.8 s with 1 thread vs 5 s with 2; cached sampling 0.75 s vs 45 s), while on a quiet machine 2
    threads are up to about twice as fast. So all the cores are used unless fewer threads are at
    least ``margin`` times faster (the best of ``repeats`` timings each). A tie keeps all the cores:
    a second core held up for a moment while the timings run once tied them and put a whole dVAE
    stage on 1 thread, at 4.4 steps/s where 2 threads train 7-13.
    Returns ``(chosen, {n: seconds})`` and leaves torch set to it.
    """
    import os

    cores = os.cpu_count() or 1
    options = sorted(set(candidates or (1, cores)))
    g = torch.Generator().manual_seed(0)
    x_big = torch.randn(1024, 256, generator=g)
    x_small = torch.randn(16, 256, generator=g)
    w = torch.randn(256, 1024, generator=g, requires_grad=True)
    timings: dict[int, float] = {}
    for n in options:
        torch.set_num_threads(n)
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            (x_big @ w).relu().sum().backward()  # a training-sized matmul and its backward
            with torch.no_grad():
                for _ in range(20):  # sampling-sized steps
                    torch.softmax(x_small @ w, dim=-1)
            best = min(best, time.perf_counter() - t0)
        timings[n] = best
    chosen = options[-1]
    for n in reversed(options[:-1]):  # fewer threads only when clearly faster
        if timings[n] * margin <= timings[chosen]:
            chosen = n
    torch.set_num_threads(chosen)
    return chosen, timings


def stage_seconds(share: float, remaining_shares: Sequence[float], seconds_left: float) -> float:
    """This stage's part of ``seconds_left``: ``share / sum(shares of the stages still to run)``."""
    total = sum(remaining_shares)
    if total <= 0:
        raise ValueError("the shares of the remaining stages must be positive")
    return max(0.0, seconds_left) * share / total


def plan_steps(seconds: float, rate: float, *, safety: float, min_steps: int, max_steps: int) -> int:
    """``safety · seconds · rate`` optimizer steps, clamped to ``[min_steps, max_steps]``."""
    if not math.isfinite(rate) or rate <= 0:
        return min_steps
    return int(min(max_steps, max(min_steps, math.floor(safety * seconds * rate))))


def every(steps: int, times: int, *, minimum: int = 1) -> int:
    """An interval so that something happens about ``times`` times in ``steps`` (checkpoints, logs)."""
    return max(minimum, math.ceil(steps / max(times, 1)))
