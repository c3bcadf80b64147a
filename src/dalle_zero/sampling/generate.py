"""Ancestral sampling of image tokens from the DALL-E prior (paper §2.6, §3.3).

:func:`generate_image_tokens` samples the ``Ti = image_grid²`` image tokens of a batch of captions,
one raster position at a time:

- **cache** (default): one :meth:`~dalle_zero.models.transformer.DalleTransformer.prefill` of BOS +
  text (+ primed tokens), then one :meth:`~dalle_zero.models.transformer.DalleTransformer.decode_step`
  per token into a pre-allocated key/value cache. ``use_cache=False`` runs the full forward over
  the whole prefix at every step instead (slow; the reference the cache is tested against). With
  the same generator both give the same tokens for every attention pattern.
- **randomness**: each step draws one ``[B, Vi]`` block of Exp(1) noise from ``generator`` and takes
  ``argmax(probs / noise)``, an exact sample of ``probs`` (the exponential form of the Gumbel-max
  trick). The draws do not depend on the logits, so a run is reproducible from the generator alone.
- **filters**: temperature, top-k (a count of image codes), top-p; see :mod:`dalle_zero.sampling.filters`.
- **classifier-free guidance** (not in the paper; Ho & Salimans 2022, dalle-mini): the conditional
  and the unconditional (all-pad caption) streams run as one batch of 2B rows with their own cache
  rows, and ``logits = uncond + s · (cond - uncond)`` before temperature and filters. ``s = 1`` skips
  the unconditional stream, so it gives exactly the unguided tokens. Guidance moves probability only
  among the codes of the conditional distribution's nucleus (``guidance_top_p``, default 0.95): the
  extrapolation otherwise favours codes that the sharp unconditional model rules out and the
  conditional one also thinks unlikely, which turns a drawing into a noisy patchwork (see
  ``docs/sampling.md``). ``guidance_top_p=1`` is plain guidance. Inputs are never modified
  (DALLE-pytorch's guidance zeroed the caller's caption in place).
- **priming** (image-to-image, paper §3.3): ``prime_tokens[B, n]`` fixes the first ``n`` image
  tokens, e.g. the top rows of an encoded photo, and the rest are sampled.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dalle_zero.models.transformer import DalleTransformer
from dalle_zero.nn.attention import KVCache
from dalle_zero.nn.embeddings import PAD_ID
from dalle_zero.sampling.filters import check_temperature, check_top_k, check_top_p, filter_logits, top_p_filter

GUIDANCE_TOP_P = 0.95
# Below 0.05 or above 10, sampling is greedy or uniform noise in practice; far beyond, the scaled
# logits overflow to inf/NaN and every seed draws the same image. The same holds for guidance
# beyond 50 (`uncond + s * (cond - uncond)`); a negative scale would draw away from the caption.
# Settings a person or a model folder may ask for are kept within these.
TEMPERATURE_RANGE = (0.05, 10.0)
GUIDANCE_SCALE_RANGE = (0.0, 50.0)

ProgressCallback = Callable[[int, int], None]
"""Called after each sampled token with (tokens sampled so far, tokens to sample) of this call."""


def sample_tokens(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One sample per row of ``probs`` (FloatTensor[B, V], rows sum to 1) -> LongTensor[B].

    ``argmax(probs / E)`` with ``E ~ Exp(1)`` i.i.d. is distributed as ``probs``; codes of
    probability 0 are never chosen.
    """
    device = generator.device if generator is not None else probs.device
    noise = torch.empty(probs.shape, dtype=torch.float32, device=device).exponential_(generator=generator)
    noise = noise.to(probs.device).clamp_min_(torch.finfo(torch.float32).tiny)
    return (probs.float() / noise).argmax(dim=-1)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_inputs(model: DalleTransformer, text_ids: Tensor, prime_tokens: Tensor | None) -> tuple[Tensor, Tensor]:
    c = model.config
    if not isinstance(text_ids, Tensor) or text_ids.dim() != 2 or text_ids.shape[1] != c.text_seq_len:
        shape = tuple(text_ids.shape) if isinstance(text_ids, Tensor) else type(text_ids).__name__
        raise ValueError(f"text_ids must be a LongTensor [B, {c.text_seq_len}], got {shape}")
    if text_ids.is_floating_point() or text_ids.is_complex() or text_ids.shape[0] == 0:
        raise ValueError(f"text_ids must be a non-empty integer tensor, got dtype {text_ids.dtype}")
    if text_ids.numel() and (text_ids.min() < 0 or text_ids.max() >= c.text_vocab_size):
        raise ValueError(f"text_ids must lie in [0, {c.text_vocab_size}), got [{text_ids.min()}, {text_ids.max()}]")
    b = text_ids.shape[0]
    if prime_tokens is None:
        prime = torch.zeros(b, 0, dtype=torch.long)
    else:
        if not isinstance(prime_tokens, Tensor) or prime_tokens.dim() != 2 or prime_tokens.shape[0] != b:
            shape = tuple(prime_tokens.shape) if isinstance(prime_tokens, Tensor) else type(prime_tokens).__name__
            raise ValueError(f"prime_tokens must be a LongTensor [{b}, n] (n <= {c.image_seq_len}), got {shape}")
        if prime_tokens.shape[1] > c.image_seq_len or prime_tokens.is_floating_point():
            raise ValueError(
                f"prime_tokens must be integer codes [{b}, n] with n <= {c.image_seq_len}, "
                f"got {tuple(prime_tokens.shape)} {prime_tokens.dtype}"
            )
        if prime_tokens.numel() and (prime_tokens.min() < 0 or prime_tokens.max() >= c.image_vocab_size):
            raise ValueError(f"prime_tokens must lie in [0, {c.image_vocab_size})")
        prime = prime_tokens
    device = model.text_head.weight.device
    return text_ids.to(device=device, dtype=torch.long), prime.to(device=device, dtype=torch.long)


def _progress(progress: bool | ProgressCallback, total: int) -> tuple[ProgressCallback | None, Callable[[], None]]:
    """A per-token callback and a close function for ``progress`` (False, True = tqdm, or a callable)."""
    if callable(progress):
        return progress, lambda: None
    if not progress:
        return None, lambda: None
    bar = tqdm(total=total, unit="token", desc="sampling", dynamic_ncols=True)
    return (lambda done, _total: bar.update(1)), bar.close


def prefill_shared(model: DalleTransformer, text: Tensor, prime: Tensor | None) -> tuple[KVCache, Tensor]:
    """A filled cache and the first logits for streams starting with ``text`` (+ ``prime``), each distinct
    start computed once: a caption's candidates and guidance's empty-caption rows share theirs."""
    start = text if prime is None else torch.cat([text, prime], dim=1)
    unique, rows = torch.unique(start, dim=0, return_inverse=True)
    if len(unique) == len(start):
        cache = model.allocate_cache(len(start))
        return cache, model.prefill(text, cache, image_ids=prime)
    t = text.shape[1]
    cache = model.allocate_cache(len(unique))
    raw = model.prefill(unique[:, :t], cache, image_ids=None if prime is None else unique[:, t:])
    return cache.select_rows(rows), raw.index_select(0, rows)


@torch.inference_mode()
def generate_image_tokens(
    model: DalleTransformer,
    text_ids: Tensor,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float = 1.0,
    guidance_top_p: float | None = GUIDANCE_TOP_P,
    prime_tokens: Tensor | None = None,
    use_cache: bool = True,
    progress: bool | ProgressCallback = False,
) -> Tensor:
    """Sample image tokens for each caption row of ``text_ids``.

    Args:
        model: the prior; run in eval mode for the call (its mode is restored afterwards).
        text_ids: LongTensor[B, Tt], 0 = pad (an all-pad row is the empty caption).
        generator: source of all randomness (None: torch's global generator). Its device may differ
            from the model's.
        temperature, top_k, top_p: see :mod:`dalle_zero.sampling.filters` (paper: 1, None, None).
        guidance_scale: classifier-free guidance scale ``s``; 1 = plain conditional sampling.
        guidance_top_p: guided logits are kept only on the conditional distribution's top-p nucleus
            (None or 1: everywhere, plain classifier-free guidance). Unused when ``s = 1``.
        prime_tokens: LongTensor[B, n], the fixed first ``n`` image tokens (raster order).
        use_cache: key/value-cached decoding (fast) or a full forward per token (reference).
        progress: a tqdm bar over tokens if True, or a callback ``(done, total)`` per token.

    Returns:
        LongTensor[B, Ti] of image codes in raster order (on the model's device); the first ``n``
        equal ``prime_tokens``.
    """
    c = model.config
    check_temperature(temperature)
    check_top_k(top_k)
    check_top_p(top_p)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}")
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
    check_top_p(guidance_top_p)
    text, prime = _check_inputs(model, text_ids, prime_tokens)
    b, n_prime, ti = text.shape[0], prime.shape[1], c.image_seq_len

    out = torch.zeros(b, ti, dtype=torch.long, device=text.device)  # (B, Ti); unsampled = 0
    out[:, :n_prime] = prime
    if n_prime == ti:
        return out

    guided = float(guidance_scale) != 1.0
    if guided:  # rows [0, B) conditional, [B, 2B) the empty caption; one batch, separate cache rows
        text = torch.cat([text, torch.full_like(text, PAD_ID)])  # (2B, Tt)
        prime = torch.cat([prime, prime])  # (2B, n)

    def next_logits(raw: Tensor) -> Tensor:
        """raw FloatTensor[B or 2B, Vi] -> filtered logits FloatTensor[B, Vi] for the next token."""
        if guided:
            cond, uncond = raw[:b], raw[b:]
            raw = uncond + guidance_scale * (cond - uncond)
            if guidance_top_p is not None and guidance_top_p < 1.0:
                raw = raw.masked_fill(top_p_filter(cond, guidance_top_p).isneginf(), float("-inf"))
        return filter_logits(raw, temperature=temperature, top_k=top_k, top_p=top_p)

    callback, close = _progress(progress, ti - n_prime)
    try:
        with _eval_mode(model):
            if use_cache:
                cache, raw = prefill_shared(model, text, prime if n_prime else None)  # raw: (B', Vi)
            for j in range(n_prime, ti):
                if not use_cache:
                    # image_logits[:, j] predicts token j from tokens < j; the input at j is never read
                    ids = out[:, : j + 1].repeat(2, 1) if guided else out[:, : j + 1]
                    raw = model(text, ids)[1][:, j]  # (B', Vi)
                probs = next_logits(raw).softmax(dim=-1)
                token = sample_tokens(probs, generator)  # (B,)
                out[:, j] = token
                if callback is not None:
                    callback(j + 1 - n_prime, ti - n_prime)
                if use_cache and j + 1 < ti:
                    raw = model.decode_step(token.repeat(2) if guided else token, cache)
    finally:
        close()
    return out
