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
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch
from torch import nn

from dalle_zero.evaluation.samples import sampling_options, sampling_processes
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
    through :meth:`~dalle_zero.pipelines.text_to_image.TextToImagePipeline.generate_batch`: sampling
    with the key/value cache and guidance, then decoding. As in the evaluation, ``config.candidates``
    samples are drawn per caption (their text is computed once per caption); reranking, a small part,
    is left out. The cost does not depend on the weights, so an untrained model of the same shapes
    times it before any stage has trained. Torch's global RNG is untouched.
    """
    n = config.batch_size if images is None else images
    if n < 1 or not captions:
        raise ValueError(f"need captions and images >= 1, got {len(captions)} captions and images={n}")
    m = min(n, config.candidates)
    picks = [captions[i % len(captions)] for i in range(max(1, n // m))]
    generator = torch.Generator().manual_seed(0)
    options = sampling_options(config)
    pipeline.generate_batch(picks[: max(1, 8 // m)], n=m, candidates=m, generator=generator, **options)
    t0 = time.perf_counter()
    pipeline.generate_batch(picks, n=m, candidates=m, generator=generator, **options)
    return len(picks) * m / max(time.perf_counter() - t0, 1e-9)


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


def parallel_sampling_rate(pipeline: Any, config: Any, captions: Sequence[str]) -> float:
    """Images per second that ``config.workers`` processes draw together, as the evaluation runs them
    (:func:`~dalle_zero.evaluation.samples.draw_caption_lists`): each times
    :func:`measure_sampling_rate` on an equal part of the cores, all starting the timed batch together.
    """
    workers = config.workers
    barrier = multiprocessing.get_context("spawn").Barrier(workers, timeout=300)
    try:
        with sampling_processes(workers, _keep_probe, (pipeline, config, list(captions), barrier)) as ex:
            return sum(ex.map(_probe_rate, range(workers)))
    except BrokenProcessPool as e:
        raise RuntimeError(f"a sampling process stopped unexpectedly while timing the evaluation ({e})") from None


_PROBE: dict[str, Any] = {}  # a probe process's pipeline, config, captions and barrier


def _keep_probe(pipeline: Any, config: Any, captions: list[str], barrier: Any) -> None:
    _PROBE.update(pipeline=pipeline, config=config, captions=captions, barrier=barrier)


def _probe_rate(_: int) -> float:
    p = _PROBE
    measure_sampling_rate(p["pipeline"], p["config"], p["captions"], images=8)  # one-off costs, apart
    p["barrier"].wait()  # the other processes hold their cores while this one is timed
    return measure_sampling_rate(p["pipeline"], p["config"], p["captions"])


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
