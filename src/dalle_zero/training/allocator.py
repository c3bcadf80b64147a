"""Keep freed CPU memory for the next training step instead of returning it to the OS (glibc malloc).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
unmaps it on free, so a CPU training step that allocates the same large activations every time pays
a page fault per 4 KiB page, every step (and freed heap tops are trimmed back to the OS too). With
mmap disabled and trimming off, the process keeps its peak heap and reuses it: the ``large32``
prior's fp32 step with the paper pattern took 4.14 s against 5.42 s with the defaults
(``benchmarks/bench_prior.py``, BENCHMARKS.md). The cost is that the resident memory stays at its
peak until the process ends, which a training process reaches on its first step anyway.

Applied by :func:`dalle_zero.training.loop.train` on CPU; ``DALLE_ZERO_MALLOC=default`` turns it off.
A no-op where the C library has no ``mallopt`` (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
ENV = "DALLE_ZERO_MALLOC"


@functools.cache
def keep_freed_memory() -> bool:
    """Disable glibc's mmap for large blocks and heap trimming, once per process; True if applied."""
    if os.environ.get(ENV, "").lower() == "default":
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
