"""Flush denormal floats to zero on CPU, once per process.

x86 CPUs compute on denormal floats (below 1.2e-38 in fp32) tens of times slower than on normal ones,
and a dVAE makes many: as its Gumbel-softmax temperature anneals to 1/16, most of the softmax's outputs
and their gradients underflow into that range. At the end of its schedule the demo's dVAE step ran
1.7x slower with them than with them flushed (``benchmarks/bench_dvae.py --shape demo --tau 0.0625
--denormals both``). Flushing changes only values below fp32's smallest normal number.

``torch.set_flush_denormal`` sets the calling thread's floating-point mode, and threads inherit it when
they start. torch starts its intra-op threads on its first parallel operation, so the setting must come
before that to reach them: the ``dalle`` program applies it first thing. A script that trains through
:func:`dalle_zero.training.loop.train` gets it from there too, but only in the threads started after
the call; call :func:`flush_denormals` before any torch work to have it everywhere.

``DALLE_ZERO_DENORMALS=keep`` turns it off. A no-op on CPUs without the mode (``set_flush_denormal``
returns False there).
"""

from __future__ import annotations

import functools
import os

import torch

ENV = "DALLE_ZERO_DENORMALS"


@functools.cache
def flush_denormals() -> bool:
    """Flush denormals to zero in this thread and the threads it starts later; True if applied."""
    if os.environ.get(ENV, "").lower() == "keep":
        return False
    return bool(torch.set_flush_denormal(True))
