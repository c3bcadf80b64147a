"""The dVAE's objective (paper App. A.2-A.3) and the statistics of its codes, beside the model.

The loss is the negative evidence lower bound with the relaxed posterior:

    loss = [ Σ_pixels NLL_logit-Laplace(x | mu, b) + β · Σ_positions KL(q || uniform) ] / (3·H·W)

averaged over the batch, where the decoder sees a Gumbel-softmax sample ``softmax((logits + g)/τ)``
and the KL uses ``softmax(logits)`` of the *clean* logits, even while τ > 0 (author, issue #26). The
training task that anneals τ and β is :class:`~dalle_zero.training.dvae.DVAETask`.

:func:`codebook_stats` (perplexity and usage of the codes) is logged by training and reported by the
evaluation alike.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from dalle_zero.models.dvae import LOGIT_LAPLACE_EPS, map_pixels


def logit_laplace_nll(x: torch.Tensor, mu: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Per-value NLL of the logit-Laplace density at ``x`` in (0, 1) (paper App. A.3, Eq. 2):

    ``ln 2 + ln b + ln x + ln(1 - x) + |logit(x) - mu| / b``, elementwise (nats). Keeps the
    parameter-free ``ln x + ln(1 - x)`` term so that bits per dimension are meaningful.
    """
    return math.log(2.0) + log_b + torch.log(x) + torch.log1p(-x) + (torch.logit(x) - mu).abs() * torch.exp(-log_b)


def kl_to_uniform(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(softmax(logits) || uniform) along ``dim``: ``Σ_k q_k (ln q_k + ln K)`` (nats)."""
    log_q = torch.log_softmax(logits.float(), dim=dim)
    return (log_q.exp() * (log_q + math.log(logits.shape[dim]))).sum(dim)


class DVAELoss(NamedTuple):
    loss: torch.Tensor  # scalar: [Σ NLL + β Σ KL] / (C·H·W), batch mean
    nll: torch.Tensor  # scalar: reconstruction NLL, nats per sub-pixel (mapped pixel space)
    kl: torch.Tensor  # scalar: KL per token position (nats)


def dvae_loss(
    pixels: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, log_b: torch.Tensor, kl_weight: float
) -> DVAELoss:
    """Negative relaxed ELB of paper App. A.2, normalised by the number of sub-pixels.

    pixels [B, C, H, W] in [0, 1]; logits [B, V, h, w] (clean); mu, log_b [B, C, H, W].
    """
    x = map_pixels(pixels.float())  # targets in [ε, 1 - ε]
    n_dims = x.shape[1] * x.shape[2] * x.shape[3]
    nll_sum = logit_laplace_nll(x, mu, log_b).flatten(1).sum(1)  # (B,)
    kl_sum = kl_to_uniform(logits).flatten(1).sum(1)  # (B,)
    loss = ((nll_sum + kl_weight * kl_sum) / n_dims).mean()
    n_pos = logits.shape[2] * logits.shape[3]
    return DVAELoss(loss=loss, nll=(nll_sum / n_dims).mean(), kl=(kl_sum / n_pos).mean())


def nats_to_bits_per_dim(nll: float, eps: float = LOGIT_LAPLACE_EPS) -> float:
    """Per-sub-pixel NLL in the mapped space -> bits per dim of pixels on the 0..255 scale.

    The map x -> (1-2ε)/255·x + ε has Jacobian (1-2ε)/255, so the density on the 0..255 scale is
    the mapped density times that factor (a continuous density: no dequantisation).
    """
    return (nll - math.log((1 - 2 * eps) / 255.0)) / math.log(2.0)


class CodebookStats(NamedTuple):
    perplexity: float  # exp(entropy) of the code histogram: the effective number of codes in use
    usage: float  # share of the vocabulary used at least once
    used: int  # number of codes used at least once


def codebook_stats(codes: torch.Tensor, vocab_size: int) -> CodebookStats:
    """Histogram statistics of dVAE codes (any shape, integers in [0, vocab_size))."""
    flat = codes.flatten().long()
    if len(flat) == 0:
        raise ValueError("codebook_stats needs at least one code")
    lo, hi = int(flat.min()), int(flat.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"codes must lie in [0, {vocab_size}), got values in [{lo}, {hi}]")
    counts = torch.bincount(flat, minlength=vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * p.log()).sum())
    used = int((counts > 0).sum())
    return CodebookStats(perplexity=math.exp(entropy), usage=used / vocab_size, used=used)
