"""Logit filters for ancestral sampling of image tokens (paper §2.6).

The paper samples at temperature 1 with no filtering ("without temperature reduction"); these are
the usual knobs on top. All functions are pure: they take ``logits`` (FloatTensor[..., V], the last
dimension is the image vocabulary) and return a new tensor (or the input itself when they change
nothing), never modifying their argument.

- :func:`apply_temperature` divides by ``t > 0``.
- :func:`top_k_filter` keeps the ``k`` largest logits per row, counting **image codes** (DALLE-pytorch's
  ``thres`` counted a fraction of text + image vocabulary, so its effect changed with the tokenizer).
  Ties at the k-th value are all kept.
- :func:`top_p_filter` is nucleus sampling (Holtzman et al. 2020): keep the smallest set of most
  likely codes whose probability reaches ``p``; the most likely code is always kept.

Removed entries are set to ``-inf``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return float(temperature)


def check_top_k(top_k: int | None) -> int | None:
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer (a count of image codes) or None, got {top_k!r}")
    return top_k


def check_top_p(top_p: float | None) -> float | None:
    if top_p is None:
        return None
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be a number in (0, 1] or None, got {top_p!r}")
    return float(top_p)


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature`` (a new tensor; the input itself when ``temperature == 1``)."""
    t = check_temperature(temperature)
    return logits if t == 1.0 else logits / t


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    """Keep the ``k`` largest logits of each row (FloatTensor[..., V]); the rest become ``-inf``.

    ``k=None`` or ``k >= V`` returns ``logits`` unchanged; ``k=1`` makes sampling greedy.
    """
    k = check_top_k(k)
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float | None) -> Tensor:
    """Nucleus filter: keep the most likely codes until their probability reaches ``p`` (FloatTensor[..., V]).

    A code is removed if the codes more likely than it already hold probability ``>= p``, so the
    most likely code always stays. ``p=None`` or ``p=1`` returns ``logits`` unchanged.
    """
    p = check_top_p(p)
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely codes
    remove_sorted = mass_before >= p
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def filter_logits(
    logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """Temperature, then top-k, then top-p, as one pure function (FloatTensor[..., V] -> same shape)."""
    return top_p_filter(top_k_filter(apply_temperature(logits, temperature), top_k), top_p)
