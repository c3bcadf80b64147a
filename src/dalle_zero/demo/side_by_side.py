"""A demo stage trained in a second process while another trains in this one (``StageSpec.beside``).

On a 2-core machine the demo's dVAE and its CLIP reranker each keep more than half of their 2-thread
speed on 1 thread, so side by side they finish the same steps in less time than one after the
other, and the prior gets the difference (BENCHMARKS.md, "Two stages side by side").

:func:`start` plans the shared window (the main stage's share of the time left, the partner's share
left out), gives each process an equal part of the cores and starts the partner in a spawned
process that runs its usual stage function with that window (:func:`_train`). When the main stage
ends first, :func:`alone` lets the partner use all the cores. :func:`finish` waits
for it where the partner would have run, and adds only the waiting to the time used. The partner
writes its own ``stages/<name>.json``, marked ``beside``: its seconds ran in parallel, so the demo's
wall time counts its ``wait_seconds`` instead (:func:`wall_seconds`). Stopped, it leaves a
checkpoint, and interrupted seconds only for a stop while the demo waited for it (its other seconds
were the main stage's too); a later run resumes it, alone if the main stage has finished by then.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dalle_zero.demo.config import DemoConfig
from dalle_zero.demo.context import DemoContext, DemoInterrupted
from dalle_zero.demo.timed_training import plan_reserve, stage_window
from dalle_zero.io import atomic_write_text
from dalle_zero.runtime import flush_denormals, when_orphaned

INTERRUPTED = 3  # the partner's exit code when its training was stopped (Ctrl-C, SIGTERM)


@dataclass
class Partner:
    """A stage training in its own process."""

    name: str
    process: Any  # multiprocessing.Process


def partners_of(config: DemoConfig, name: str, done: Mapping[str, Any]) -> list[str]:
    """The stages not yet done that train beside stage ``name``."""
    return [s for s, spec in config.stages.items() if s not in done and config.stage(s).beside == name]


def start(ctx: DemoContext, name: str, partners: list[str], stage_fns: Mapping[str, Callable]) -> list[Partner]:
    """Plan stage ``name``'s window, set this process to its part of the cores and start ``partners``."""
    if ctx.reserve is None:
        ctx.reserve = plan_reserve(ctx)  # measured before the partners load the cores
    window = ctx.windows.get(name) or stage_window(ctx, name)
    ctx.windows[name] = window
    threads = max(1, (os.cpu_count() or 1) // (1 + len(partners)))
    torch.set_num_threads(threads)
    context = multiprocessing.get_context("spawn")  # a fork of a process whose OpenMP threads ran can hang
    started = []
    # A spawned child inherits ignored signals: until it has set its own handlers, a Ctrl-C at the
    # terminal or alone()'s SIGUSR1 must not end it (their default actions would).
    quiet = [sig for sig in (signal.SIGINT, getattr(signal, "SIGUSR1", None)) if sig is not None]
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in quiet}
    try:
        for partner in partners:
            fn = stage_fns[partner]
            args = (ctx.out, ctx.config, ctx.data, partner, fn, window, ctx.reserve, list(ctx.done), threads)
            process = context.Process(target=_train, args=args, name=f"dalle demo: {partner}")
            process.start()
            started.append(Partner(partner, process))
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    ctx.log(f"  {', '.join(partners)} trains beside it in another process ({threads} thread(s) each, {window:.0f} s)")
    return started


def finish(ctx: DemoContext, partner: Partner) -> dict[str, Any]:
    """Wait for ``partner``; its summary with the seconds waited for it (``wait_seconds``), which are
    added to the time used. Raises DemoInterrupted if it was stopped, RuntimeError if it failed."""
    t0 = time.perf_counter()
    try:
        partner.process.join()
    except BaseException:  # Ctrl-C while waiting: it runs in its own process group, so stop it here
        stop([partner])
        raise
    waited = time.perf_counter() - t0
    ctx.elapsed += waited
    code = partner.process.exitcode
    path = _done_path(ctx.out, partner.name)
    if code == INTERRUPTED:
        raise DemoInterrupted(f"stage {partner.name} stopped in its process; run the demo again to resume it")
    if not path.is_file():  # written last, atomically: with it the stage is done, however the process ended
        raise RuntimeError(f"stage {partner.name} failed in its process (exit code {code}); its error is above")
    summary = {**json.loads(path.read_text()), "wait_seconds": waited}
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    return summary


def alone(partners: list[Partner]) -> None:
    """The main stage has finished: running partners may use all the cores (a dVAE stopped by its
    ``max_steps`` at a long budget would otherwise leave a core idle while its reranker trains on)."""
    for p in partners:
        if hasattr(signal, "SIGUSR1") and p.process.is_alive() and p.process.pid is not None:
            os.kill(p.process.pid, signal.SIGUSR1)


def stop(partners: list[Partner], *, patience: float = 30.0) -> None:
    """Ask running partners to checkpoint and stop (the main stage was stopped or failed), and wait.

    A partner's training loop takes a Ctrl-C as a request to checkpoint and stop after the step it is
    on; one that lands just as a stretch of its steps ends can be missed, so it is sent again while
    the partner runs, ``patience`` seconds apart; one that still runs after three is terminated."""
    for _ in range(3):
        alive = [p for p in partners if p.process.is_alive() and p.process.pid is not None]
        if not alive:
            return
        for p in alive:
            os.kill(p.process.pid, signal.SIGINT)
        for p in alive:
            p.process.join(patience)
    for p in partners:
        if p.process.is_alive():
            p.process.terminate()
        p.process.join()


def wall_seconds(done: Mapping[str, Mapping[str, Any]]) -> float:
    """Seconds the finished stages took on the clock: a partner counts only its ``wait_seconds``."""
    return sum(s.get("wait_seconds", 0.0) if s.get("beside") else s["seconds"] for s in done.values())


def _done_path(out: Path, name: str) -> Path:
    return out / "stages" / f"{name}.json"


def _train(
    out: Path, config: DemoConfig, data: Path | None, name: str, stage_fn: Callable[[DemoContext], dict[str, Any]],
    window: float, reserve: float, done: list[str], threads: int,
) -> None:
    """The partner process: stage ``name`` in ``window`` seconds on ``threads`` threads."""
    # Only the main process tells it to stop (stop()): a Ctrl-C at the terminal stops the main stage,
    # which then stops this one, so the partner must not get the same keypress (a second Ctrl-C
    # aborts a training loop without its checkpoint). A shell's background job inherits SIGINT
    # ignored; here it always raises KeyboardInterrupt outside the loop (which has its own handler).
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "SIGUSR1"):  # alone(): the main stage is done, take all the cores
        signal.signal(signal.SIGUSR1, lambda signum, frame: torch.set_num_threads(os.cpu_count() or 1))
    # once the demo that started it is gone (killed), stop as on Ctrl-C (a checkpoint, then exit): a
    # later run must not find it still writing to the run folder it resumes
    when_orphaned(lambda: os.kill(os.getpid(), signal.SIGINT), every=2.0)
    flush_denormals()  # as the `dalle` program does, before torch starts its threads
    torch.set_num_threads(threads)
    beside = config.stage(name).beside

    def log(line: str) -> None:
        print(f"  [{name}]{line}", flush=True)

    ctx = DemoContext(out=out, config=config, data=data, progress=False, log=log, reserve=reserve)
    ctx.done, ctx.windows = done, {name: window}
    t0 = time.perf_counter()
    try:
        summary = stage_fn(ctx)
    except (DemoInterrupted, KeyboardInterrupt):
        log(" stopped; its last checkpoint resumes it")
        raise SystemExit(INTERRUPTED) from None
    summary = {**summary, "seconds": time.perf_counter() - t0, "threads": threads, "beside": beside}
    if hasattr(signal, "SIGUSR1"):  # Python's exit resets handlers: a late alone() must not kill it then
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    atomic_write_text(_done_path(out, name), json.dumps(summary, indent=2) + "\n")
    log(f"  done in {summary['seconds']:.0f} s, beside the {beside} stage")
