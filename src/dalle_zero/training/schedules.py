"""Annealing schedules as pure functions of the step (paper App. A.2; paper_spec §1.7).

The dVAE anneals three values with cosine schedules: the Gumbel-softmax temperature τ (1 → 1/16
over 150k updates), the KL weight β (0 → 6.6 over 5k updates, then fixed) and the learning rate
(1e-4 → 1.25e-6 over 1.2M updates) of a 3M-update run. Each schedule moves from ``start`` to
``end`` over ``length`` steps and then holds ``end``.
"""

from __future__ import annotations

import math


def cosine_schedule(step: int, *, start: float, end: float, length: int) -> float:
    """``end + (start - end)·½(1 + cos(π·min(step, length)/length))``; ``end`` once step ≥ length.

    A ``length`` of 0 means "already annealed": the value is ``end`` from step 0.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if length == 0 or step >= length:
        return float(end)
    return float(end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * step / length)))


def linear_warmup(step: int, *, peak: float, length: int) -> float:
    """``peak·min(1, (step + 1)/length)``; ``peak`` for ``length`` 0."""
    if length <= 0:
        return float(peak)
    return float(peak * min(1.0, (step + 1) / length))


def scaled_length(total_steps: int, fraction: float, steps: int | None = None) -> int:
    """Schedule length: ``steps`` when given, else ``round(fraction · total_steps)``.

    The paper's lengths are fractions of its 3M-update run (τ 150k = 5%, β 5k ≈ 0.17%,
    lr 1.2M = 40%); scaling them keeps a short run's schedule shaped like the paper's.
    """
    if steps is not None:
        return int(steps)
    return int(round(fraction * total_steps))
