"""Every schedule of the training stages: learning rates, temperatures and loss weights by step.

Pure functions of the step:

- :func:`cosine_schedule`: the dVAE anneals three values with it (paper App. A.2):
  the Gumbel-softmax temperature τ (1 → 1/16 over 150k updates), the KL weight β (0 → 6.6 over 5k
  updates, then fixed) and the learning rate (1e-4 → 1.25e-6 over 1.2M updates) of a 3M-update run.
  Each schedule moves from ``start`` to ``end`` over ``length`` steps and then holds ``end``.
- :func:`linear_warmup` and :func:`warmup_cosine`: linear warm-up, then a cosine decay; the learning
  rate of CLIP, of the evaluator and of the prior's cosine option.

And one with state, the prior's learning rate (paper App. B.2). The paper warms it
up linearly to 4.5e-4 over 5,000 updates, then halves it "each time the training loss appears to
plateau", five times in all, ending at 1/32 of the peak. It does not say how a plateau was detected;
:class:`PlateauHalving` makes the rule explicit and stateful:

- the training loss is smoothed with a bias-corrected exponential moving average (``smoothing``);
- after warm-up, a step whose smoothed loss is below ``best · (1 − threshold)`` is an improvement;
- ``patience`` consecutive steps without improvement halve the rate (at most ``max_halvings``
  times), and the count starts afresh from the current smoothed loss.

Its state (halvings so far, best and smoothed loss, steps since the last improvement) is a small
dict of numbers that the prior task saves in every checkpoint, so a resumed run halves at exactly
the step an uninterrupted one would.

The paper reads its 250M pairs about 1.76 times (430,000 updates of 1,024), so its training loss is
nearly a held-out loss. A small dataset read dozens of times keeps lowering its training loss while
the model learns the captions by heart, so the same rule can watch the validation loss instead (the
prior's ``plateau_on="validation"``): one observation per evaluation, no smoothing (it is already a
mean over the held-out split), patience counted in evaluations.
"""

from __future__ import annotations

import math
from typing import Any


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


def warmup_cosine(step: int, *, peak: float, end: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to ``end`` at ``total_steps``."""
    if step < warmup_steps:
        return linear_warmup(step, peak=peak, length=warmup_steps)
    return cosine_schedule(step - warmup_steps, start=peak, end=end, length=max(total_steps - warmup_steps, 0))


class PlateauHalving:
    """Linear warm-up to ``peak``, then halve on plateaus of the smoothed training loss."""

    def __init__(
        self,
        peak: float,
        *,
        warmup_steps: int,
        patience: int,
        threshold: float = 1e-3,
        smoothing: float = 0.98,
        max_halvings: int = 5,
    ) -> None:
        if not peak > 0:
            raise ValueError(f"peak learning rate must be > 0, got {peak}")
        if warmup_steps < 0 or patience < 1 or max_halvings < 0:
            raise ValueError(
                f"need warmup_steps >= 0, patience >= 1, max_halvings >= 0; "
                f"got {warmup_steps}, {patience}, {max_halvings}"
            )
        if not 0.0 <= smoothing < 1.0 or not 0.0 <= threshold < 1.0:
            raise ValueError(f"smoothing and threshold must be in [0, 1), got {smoothing}, {threshold}")
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.patience = patience
        self.threshold = threshold
        self.smoothing = smoothing
        self.max_halvings = max_halvings
        # state
        self.halvings = 0
        self.n_observed = 0
        self.ema = 0.0  # raw (biased) moving average; smoothed_loss corrects the bias
        self.best = math.inf
        self.bad_steps = 0
        self.halved_at: list[int] = []  # steps after which the rate was halved

    @property
    def scale(self) -> float:
        return 0.5**self.halvings

    @property
    def smoothed_loss(self) -> float:
        if self.n_observed == 0:
            return math.nan
        return self.ema / (1.0 - self.smoothing**self.n_observed)

    def lr_at(self, step: int) -> float:
        return linear_warmup(step, peak=self.peak, length=self.warmup_steps) * self.scale

    def observe(self, step: int, loss: float) -> bool:
        """Feed the training loss of update ``step`` (1-based count of updates done); True if halved."""
        if not math.isfinite(loss):
            return False
        self.n_observed += 1
        self.ema = self.smoothing * self.ema + (1.0 - self.smoothing) * loss
        if step <= self.warmup_steps or self.halvings >= self.max_halvings:
            return False
        smoothed = self.smoothed_loss
        if smoothed < self.best * (1.0 - self.threshold):
            self.best = smoothed
            self.bad_steps = 0
            return False
        self.bad_steps += 1
        if self.bad_steps < self.patience:
            return False
        self.halvings += 1
        self.halved_at.append(step)
        self.best = smoothed
        self.bad_steps = 0
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "halvings": self.halvings,
            "n_observed": self.n_observed,
            "ema": self.ema,
            "best": self.best,
            "bad_steps": self.bad_steps,
            "halved_at": list(self.halved_at),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.halvings = int(state["halvings"])
        self.n_observed = int(state["n_observed"])
        self.ema = float(state["ema"])
        self.best = float(state["best"])
        self.bad_steps = int(state["bad_steps"])
        self.halved_at = [int(s) for s in state["halved_at"]]
