"""CPU runtime settings of a process: denormal floats, the C allocator, the torch thread count,
and what a child process does when its parent is gone.

Each is a process-wide choice that code far from any model makes once, so they live here, below
every other module:

- :func:`flush_denormals`: x86 CPUs compute on denormal floats (below 1.2e-38 in fp32) many times
  slower than on normal ones, and a dVAE makes many: as its Gumbel-softmax temperature anneals to
  1/16, most of the softmax's outputs and their gradients underflow into that range
  (BENCHMARKS.md, "dVAE"). Flushing changes only values below fp32's
  smallest normal number. ``torch.set_flush_denormal`` sets the calling thread's floating-point mode,
  and threads inherit it when they start; torch starts its intra-op threads on its first parallel
  operation, so the setting must come before that to reach them. The ``dalle`` program applies it
  first thing; :func:`dalle_zero.training.loop.train` applies it too, but only the threads started
  after that call get it. ``DALLE_ZERO_DENORMALS=keep`` turns it off; a no-op on CPUs without the mode.
- :func:`keep_freed_memory`: glibc serves every allocation above its mmap threshold with a fresh
  ``mmap`` and unmaps it on free, so a CPU training step that allocates the same large activations
  every time pays a page fault per 4 KiB page, every step (and freed heap tops are trimmed back to
  the OS too). With mmap disabled and trimming off, the process keeps its peak heap and reuses it
  (BENCHMARKS.md, "Prior"); the resident memory stays at its peak until the
  process ends, which a training process reaches on its first step anyway. Applied by the training
  loop on CPU; ``DALLE_ZERO_MALLOC=default`` turns it off; a no-op without ``mallopt`` (macOS, musl).
- :func:`fastest_thread_count`: on a machine shared with other busy processes, OpenMP threads that
  wait for each other at every operation can make 2 threads several times slower than 1, while on a
  quiet machine 2 threads are up to about twice as fast; this times both and sets the faster.
- :func:`when_orphaned`: a spawned helper process (a sampling worker, a demo stage trained beside
  another) whose parent is killed outright (SIGKILL, or SIGTERM before any handler is set) is not
  told: a pool worker waits for work forever, a partner stage goes on writing to a run folder that a
  later run resumes. It watches its parent and acts once the parent is gone.

The bf16 probe (``bf16_speedup``) lives in :mod:`dalle_zero.training.precision`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)

DENORMALS_ENV = "DALLE_ZERO_DENORMALS"
MALLOC_ENV = "DALLE_ZERO_MALLOC"

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@functools.cache
def flush_denormals() -> bool:
    """Flush denormals to zero in this thread and the threads it starts later; True if applied."""
    if os.environ.get(DENORMALS_ENV, "").lower() == "keep":
        return False
    return bool(torch.set_flush_denormal(True))


def when_orphaned(action: Callable[[], object], *, every: float = 1.0) -> threading.Thread:
    """Call ``action`` in a daemon thread once this process's parent has gone (checked every ``every``
    seconds: an orphan is adopted by another process, so its parent id changes)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        action()

    thread = threading.Thread(target=watch, name="dalle-zero: parent watch", daemon=True)
    thread.start()
    return thread


def exit_now() -> None:
    """End this process at once, without cleanup: for a helper whose parent is gone and that holds
    nothing worth saving (a sampling worker)."""
    os._exit(1)


@functools.cache
def keep_freed_memory() -> bool:
    """Disable glibc's mmap for large blocks and heap trimming, once per process; True if applied."""
    if os.environ.get(MALLOC_ENV, "").lower() == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    if not ok:
        log.debug("mallopt refused the settings; keeping the C library's defaults")
    return ok


def fastest_thread_count(
    candidates: Sequence[int] | None = None, *, repeats: int = 5, margin: float = 1.2
) -> tuple[int, dict[int, float]]:
    """The torch intra-op thread count that runs a small transformer-like workload fastest right now.

    All the cores are used unless fewer threads are at least ``margin`` times faster (the best of
    ``repeats`` timings each). A tie keeps all the cores: a second core held up for a moment while the
    timings run must not put a whole training stage on 1 thread.
    Returns ``(chosen, {n: seconds})`` and leaves torch set to it.
    """
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
