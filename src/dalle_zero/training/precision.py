"""The number format a training run computes in (``LoopConfig.precision``; paper §2.4, App. D).

- ``"fp32"``: no autocast.
- ``"bf16"``: bf16 autocast; the weights, gradients and Adam moments stay fp32. The recommended
  mixed precision: bf16 has fp32's exponent range, so no loss scaling is needed (paper fn 12).
- ``"fp16"``: the paper's recipe for GPUs without bf16 (V100): fp16 autocast, the block matrices
  computed in fp16, and one gradient scale per resblock (``nn/grad_scale.py``, dynamics in
  ``training/grad_scales.py``) with updates skipped on a nonfinite gradient. Gains, biases,
  embeddings, unembeddings and the logits stay fp32 with fp32 gradients and Adam moments, and the
  identity path is fp32. All parameters are kept as fp32 master weights that autocast casts per
  operation (the paper stores the block matrices themselves in fp16 to save memory). Only for models
  with resblocks (the transformer prior), single-process or DDP, without PowerSGD.

:func:`make_precision` returns the object the loop calls around every update: ``autocast()`` around
the forward, ``unscale_()`` after the backward (True: the update may be applied), ``end_step()``
after it (moves the scales, adds metrics), and a ``state_dict`` saved in each checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from typing import Any

import torch
from torch import nn

from dalle_zero.training.grad_scales import ResblockGradScales

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_speedup(dtype: torch.dtype = torch.bfloat16, repeats: int = 3) -> float:
    """How many times faster a training-sized matrix product and its backward run under ``dtype``
    autocast than in fp32 on this CPU right now (best of ``repeats`` each; below 1: slower).

    CPUs with bf16 (AVX512-BF16, AMX) or fp16 (AVX512-FP16, AMX-FP16) instructions gain from it; on one
    without, autocast emulates the narrow type and runs many times slower than fp32
    (docs/history.md, "bf16 only where it is faster").
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 256, generator=g)
    w = torch.randn(256, 512, generator=g, requires_grad=True)
    timings = {}
    for low in (False, True):
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=low):
                y = (x @ w).relu()
            y.float().sum().backward()
            best = min(best, time.perf_counter() - t0)
        timings[low] = best
    return timings[False] / max(timings[True], 1e-9)


def bf16_speedup(repeats: int = 3) -> float:
    """:func:`autocast_speedup` for bf16."""
    return autocast_speedup(torch.bfloat16, repeats)


def _warn_if_slower(name: str) -> None:
    speedup = bf16_speedup() if name == "bf16" else autocast_speedup(torch.float16)
    if speedup < 0.5:  # far slower, not a noisy reading: this CPU has no such instructions
        logger.warning(
            "%s autocast runs at %.2gx the speed of fp32 on this CPU: precision fp32 trains faster here",
            name, speedup,
        )


def check_fp16_support(device: torch.device) -> None:
    """A one-line ValueError unless fp16 autocast computes a matrix product and its backward in fp16 on
    ``device`` (older torch builds silently fall back to fp32 on CPU, some devices have no autocast)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fall-back is a warning; the dtype check below names it
            w = torch.ones(2, 2, device=device, requires_grad=True)
            with torch.autocast(device.type, dtype=torch.float16):
                out = w @ w
            out.float().sum().backward()
    except (RuntimeError, NotImplementedError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"precision fp16 is not supported on device {device}: {reason}; use bf16 or fp32") from None
    if out.dtype != torch.float16:
        raise ValueError(
            f"precision fp16 is not supported on device {device} by torch {torch.__version__} "
            f"(autocast computes in {out.dtype}); use bf16 or fp32"
        )


class Precision:
    """fp32 or bf16: autocast only; every update is applied."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.name == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def unscale_(self) -> bool:
        """After the backward pass, before clipping: whether the update may be applied."""
        return True

    def end_step(self, step: int, applied: bool, metrics: dict[str, float]) -> None:
        """After update ``step`` (0-based), applied or skipped."""
        return None

    def close(self) -> None:
        """After training: the model computes as it did before."""
        return None

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        return None


class Fp16Precision(Precision):
    """fp16 autocast with per-resblock gradient scales (paper App. D)."""

    def __init__(self, model: nn.Module, device: torch.device, world_size: int) -> None:
        super().__init__("fp16", device)
        self.model = model
        self.resblocks = model.resblock_parameters()  # type: ignore[operator]
        resblock_ids = {id(p) for group in self.resblocks for p in group}
        self.others = [p for p in model.parameters() if id(p) not in resblock_ids]  # embeddings, heads: fp32
        self.scales = ResblockGradScales(len(self.resblocks), world_size=world_size, device=device)
        model.set_gradient_scales(self.scales.multipliers)  # type: ignore[operator]
        self._finite: torch.Tensor | None = None

    def unscale_(self) -> bool:
        self._finite = self.scales.unscale_(self.resblocks)
        others = [p.grad for p in self.others if p.grad is not None]
        return bool(self._finite.all()) and all(bool(torch.isfinite(g).all()) for g in others)

    def end_step(self, step: int, applied: bool, metrics: dict[str, float]) -> None:
        assert self._finite is not None, "unscale_() runs before end_step()"
        self.scales.update(self._finite, step)
        self.scales.skipped += int(not applied)
        metrics.update(self.scales.summary())
        metrics["skipped"] = 0.0 if applied else 1.0  # averaged over a log interval: the fraction skipped
        self._finite = None

    def close(self) -> None:
        self.model.set_gradient_scales(None)  # type: ignore[operator]

    def state_dict(self) -> dict[str, Any] | None:
        return self.scales.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            logger.info("the checkpoint holds no fp16 gradient scales: they start from M·2^13")
            return
        self.scales.load_state_dict(state)


def make_precision(
    name: str, model: nn.Module, device: torch.device, *, world_size: int = 1, sharded: bool = False,
    main: bool = True,
) -> Precision:
    """The :class:`Precision` of ``LoopConfig.precision`` ``name`` for ``model`` on ``device``; a one-line
    ValueError when fp16 cannot run (a model without resblocks, FSDP, a device without fp16)."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {name!r}")
    if name != "fp32" and device.type == "cpu" and main:
        _warn_if_slower(name)
    if name != "fp16":
        return Precision(name, device)
    if not hasattr(model, "set_gradient_scales"):
        raise ValueError(
            f"precision fp16 scales the gradients of each resblock, and {type(model).__name__} has none; "
            "use bf16 or fp32 (fp16 is for the transformer prior)"
        )
    if sharded:
        raise ValueError("precision fp16 runs single-process or under DDP, not with strategy 'fsdp'; use bf16")
    check_fp16_support(device)
    return Fp16Precision(model, device, world_size)
