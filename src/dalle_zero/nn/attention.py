"""Masked causal self-attention with a pluggable kernel, and its key/value cache (paper App. B.1).

Kernels, all derived from one :class:`~dalle_zero.nn.masks.AttentionPattern`:

- ``None`` for the causal "full" pattern -> ``F.scaled_dot_product_attention(is_causal=True)``;
- a :class:`~dalle_zero.nn.banded.BandedLayout` -> :func:`~dalle_zero.nn.banded.banded_attention`
  (row and column layers: each block of image queries reads only its window of keys; differentiable);
- a dense ``BoolTensor[T, T]`` mask -> ``F.scaled_dot_product_attention`` (CPU training and anything
  needing a backward pass on CPU: flex_attention has no CPU backward in torch 2.13);
- a flex_attention ``BlockMask`` -> ``flex_attention`` (GPU training; on CPU forward only, eager
  unfused unless compiled).

Incremental decoding uses :class:`LayerCache`, a pre-allocated key/value buffer per layer. A new image
token in a row, column or conv layer attends to the text keys plus its window of image keys
(:func:`~dalle_zero.nn.masks.image_key_window`); in a full layer, to every earlier key. Row layers
keep the text and a ring of the last ``grid_size + 1`` image keys, so a step reads exactly one
contiguous slice (and the cache is short); column layers store their image keys in column-major
order, like the paper's transposed column attention, so the window ends a short slice. In a batch of
at least ``SLICE_MIN_ROWS`` (stream, head) rows a window is read as a slice of the cache from its
start with a boolean mask over the keys outside it: a view, where gathering the window's keys copies
them at every step, which costs more than reading the masked keys at these lengths (BENCHMARKS.md,
"Sampling"). A smaller batch, or a slice over ``SLICE_OVER_GATHER`` times the window, copies out
exactly the window.

Rows of a batch that start from the same text (a caption's candidates, guidance's empty caption)
need its keys only once: :meth:`KVCache.select_rows` copies prefilled rows to the rows that share them.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from dalle_zero.nn.banded import BandedLayout, banded_attention
from dalle_zero.nn.masks import AttentionPattern

FLEX_KERNELS = ("flex", "flex_compiled")
# "sdpa": banded sparse layers where that pays (BandedLayout.worthwhile), else dense masks
SDPA_KERNELS = ("sdpa", "sdpa_dense", "sdpa_banded")
KERNELS = (*SDPA_KERNELS, *FLEX_KERNELS)
# a decode step reads its window as a masked slice of the cache while the slice is at most this many
# times the window's keys; beyond that it gathers them (BENCHMARKS.md, "Sampling")
SLICE_OVER_GATHER = 4
# ... and while the batch holds at least this many (stream, head) rows: below that, a gather copies little
SLICE_MIN_ROWS = 64
# One query against a short window in a large batch (the evaluation's and the showcase's sampling):
# two batched matmuls and a softmax beat torch's CPU SDPA kernel there; with fewer rows or longer
# windows SDPA is as fast or faster (BENCHMARKS.md, "Sampling")
DECODE_MATMUL_MIN_ROWS = 512
DECODE_MATMUL_MAX_KEYS = 128


@functools.cache
def _compiled_flex_attention() -> Any:
    return torch.compile(flex_attention, dynamic=False)


def flex_attention_call(q: Tensor, k: Tensor, v: Tensor, block_mask: Any, *, compiled: bool) -> Tensor:
    """flex_attention, compiled (fused kernel) or eager (materialises scores; fine on CPU for tests)."""
    if compiled:
        return _compiled_flex_attention()(q, k, v, block_mask=block_mask)
    with warnings.catch_warnings():  # eager is a deliberate choice here (no compile time)
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=block_mask)


def build_block_mask(pattern: AttentionPattern, length: int, device: torch.device | str) -> Any:
    """flex_attention BlockMask over the first ``length`` stream positions of ``pattern``."""
    return create_block_mask(pattern.mask_mod, None, None, length, length, device=device)


# False: bf16 attention with a backward on CPU stays in bf16 (what benchmarks/bench_prior.py's
# "bf16attn" precision times, against "bf16")
CPU_BF16_ATTENTION_IN_FP32 = True


def _sdpa_with_backward(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Masked (or causal, ``mask`` None) SDPA. On CPU, when bf16 inputs need a backward pass, it runs in
    fp32 and casts back: torch's bf16 flash-attention backward on CPU is several times slower than
    its fp32 one (``benchmarks/bench_prior.py --profile-dir`` shows where a bf16 step spends its time;
    BENCHMARKS.md, Prior)."""
    if (
        CPU_BF16_ATTENTION_IN_FP32 and q.device.type == "cpu" and q.dtype == torch.bfloat16
        and torch.is_grad_enabled() and q.requires_grad
    ):
        with torch.autocast("cpu", enabled=False):  # autocast would cast the fp32 inputs back to bf16
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=mask is None)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)


def _decode_attention(q: Tensor, k: Tensor, v: Tensor, visible: Tensor | None) -> Tensor:
    """One query per row: q Tensor[B, nh, 1, hs] against k, v Tensor[B, nh, n, hs]; ``visible``, a
    BoolTensor[1, n] of the keys it may read (None: all). Every query sees at least the text keys, so
    no row of the softmax is empty."""
    rows, n = q.shape[0] * q.shape[1], k.shape[2]
    if q.device.type != "cpu" or rows < DECODE_MATMUL_MIN_ROWS or n > DECODE_MATMUL_MAX_KEYS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, nh, 1, n)
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    return scores.softmax(dim=-1) @ v


class LayerCache:
    """Keys and values of one attention layer for stream positions ``[0, max_len)``.

    ``k``, ``v``: Tensor[B, nh, slots, hs], zero-initialised. Slots by kind:

    - full and conv: one slot per stream position (conv windows are gathered with an index);
    - row (``ring=True``, default): the text, then a ring of ``grid_size + 1`` slots holding the last
      image positions, which are exactly a row query's window: a decode step reads one contiguous
      slice and the cache is ``text_len + grid_size + 1`` slots long whatever the image size;
    - column: image keys in column-major slots (``slots`` maps stream position -> slot) so a
      column's earlier tokens are one slice, unless ``column_major=False`` (then gathered like conv's,
      which is slower).
    """

    def __init__(
        self,
        pattern: AttentionPattern,
        batch_size: int,
        n_head: int,
        head_dim: int,
        max_len: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        column_major: bool = True,
        ring: bool = True,
    ) -> None:
        self.pattern = pattern
        self.max_len = max_len
        self.slots: Tensor | None = None
        self.ring = pattern.grid_size + 1 if pattern.kind == "row" and ring else 0
        t, g = pattern.text_len, pattern.grid_size
        n_slots = min(max_len, t + self.ring) if self.ring else max_len
        if pattern.kind == "column" and column_major:
            p = torch.arange(g * g, device=device)
            image_slots = t + (p % g) * g + p // g
            self.slots = torch.cat([torch.arange(t, device=device), image_slots])[:max_len]
            n_slots = pattern.length
        shape = (batch_size, n_head, n_slots, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self._window = pattern.window.to(device)
        self._written = 0  # stream positions [0, _written) have been written
        self._slices: tuple[Tensor, list[int]] | None = None  # built on the first sliced step (_visibility)

    def write(self, start: int, k: Tensor, v: Tensor) -> None:
        """Store k, v: Tensor[B, nh, n, hs] of stream positions start..start+n-1."""
        n = k.shape[2]
        if start + n > self.max_len:
            raise ValueError(f"cache holds {self.max_len} positions; cannot write {start}..{start + n - 1}")
        self._written = max(self._written, start + n)
        if self.ring:
            t = self.pattern.text_len
            if start < t:  # text part
                m = min(n, t - start)
                self.k[:, :, start : start + m], self.v[:, :, start : start + m] = k[:, :, :m], v[:, :, :m]
            lo = max(start, t, start + n - self.ring)  # older image positions would be overwritten anyway
            if lo < start + n:
                idx = t + (torch.arange(lo, start + n, device=self.k.device) - t) % self.ring
                self.k.index_copy_(2, idx, k[:, :, lo - start :].to(self.k.dtype))
                self.v.index_copy_(2, idx, v[:, :, lo - start :].to(self.v.dtype))
        elif self.slots is None:
            self.k[:, :, start : start + n] = k
            self.v[:, :, start : start + n] = v
        else:
            idx = self.slots[start : start + n]
            self.k.index_copy_(2, idx, k.to(self.k.dtype))
            self.v.index_copy_(2, idx, v.to(self.v.dtype))

    def prefix(self, end: int) -> tuple[Tensor, Tensor]:
        """Keys and values of stream positions [0, end) in stream order: Tensor[B, nh, end, hs] each."""
        if self.ring:
            if self._written > self.pattern.text_len + self.ring:
                raise ValueError("a row layer's ring cache keeps only the last grid_size + 1 image positions")
            return self.k[:, :, :end], self.v[:, :, :end]
        if self.slots is None:
            return self.k[:, :, :end], self.v[:, :, :end]
        idx = self.slots[:end]
        return self.k.index_select(2, idx), self.v.index_select(2, idx)

    def decode_keys(self, pos: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """What an image query at stream position ``pos`` attends to: keys and values Tensor[B, nh, n, hs]
        (views of the cache where that pays, in slot order) and a BoolTensor[1, n] of the ones it may read
        (None: all)."""
        t = self.pattern.text_len
        if self.ring:  # text + ring: exactly the window, one slice
            end = t + min(pos - t + 1, self.ring)
            return self.k[:, :, :end], self.v[:, :, :end], None
        if self.pattern.kind == "full":
            return self.k[:, :, : pos + 1], self.v[:, :, : pos + 1], None
        if self.k.shape[0] * self.k.shape[1] >= SLICE_MIN_ROWS:
            if self._slices is None:
                self._slices = self._visibility()
            visible, ends = self._slices
            end = ends[pos]
            if end:
                return self.k[:, :, :end], self.v[:, :, :end], visible[pos : pos + 1, :end]
        # few rows, or a long cache and a short window: copy exactly the window
        p, g = pos - t, self.pattern.grid_size
        if self.pattern.kind == "row":  # raster-order cache (ring=False): contiguous window
            lo, hi = t + max(0, p - g), pos + 1
        elif self.slots is not None:  # column layer: contiguous in column-major slots
            lo = t + (p % g) * g
            hi = lo + p // g + 1
        else:  # conv (or raster-order column): gather
            idx = torch.cat([torch.arange(t, device=self.k.device), pos - self._window[self._window <= p]])
            return self.k.index_select(2, idx), self.v.index_select(2, idx), None
        keys = torch.cat([self.k[:, :, :t], self.k[:, :, lo:hi]], dim=2)  # small copies (text + window)
        return keys, torch.cat([self.v[:, :, :t], self.v[:, :, lo:hi]], dim=2), None

    def _visibility(self) -> tuple[Tensor, list[int]]:
        """``visible[pos, slot]``: may a query at ``pos`` read ``slot``; and, per ``pos``, the end of the
        shortest slice of slots holding all it reads, or 0 where that slice is more than
        ``SLICE_OVER_GATHER`` times the window and gathering the window costs less."""
        n_slots, device = self.k.shape[2], self.k.device
        slot_pos = torch.arange(n_slots, device=device)
        if self.slots is not None:  # slot -> stream position; slots of positions past max_len: never read
            slot_pos = torch.full((n_slots,), self.max_len, dtype=torch.long, device=device)
            slot_pos.scatter_(0, self.slots, torch.arange(len(self.slots), device=device))
        pos = torch.arange(self.max_len, device=device)
        visible = self.pattern.allowed(pos[:, None], slot_pos[None, :])
        ends = torch.where(visible, torch.arange(1, n_slots + 1, device=device), 0).amax(dim=1)
        ends = torch.where(ends <= SLICE_OVER_GATHER * visible.sum(dim=1), ends, 0)
        return visible, ends.tolist()  # read once per step and layer: a Python int, not a tensor index

    def select_rows(self, index: Tensor) -> LayerCache:
        """A cache whose row ``i`` is a copy of this one's row ``index[i]`` (the same positions filled)."""
        out = object.__new__(LayerCache)
        out.__dict__.update(self.__dict__)
        out.k, out.v = self.k.index_select(0, index), self.v.index_select(0, index)
        return out


class SelfAttention(nn.Module):
    """Multi-head self-attention; the mask (dense or BlockMask) is supplied per call."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, c = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)
        return q, k, v

    def _out(self, y: Tensor) -> Tensor:
        b, _, t, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))  # (B, T, C)

    def forward(self, x: Tensor, mask: Tensor | BandedLayout | Any, *, kernel: str = "sdpa") -> Tensor:
        """x: Tensor[B, T, C]; mask: for the SDPA kernels a BoolTensor[T, T], a BandedLayout, or None for
        causal (the "full" pattern: it equals the lower triangle); for the flex kernels a BlockMask."""
        q, k, v = self._qkv(x)
        if isinstance(mask, BandedLayout):
            y = banded_attention(q, k, v, mask)
        elif kernel in SDPA_KERNELS:
            y = _sdpa_with_backward(q, k, v, mask)
        elif kernel in FLEX_KERNELS:
            if q.device.type == "cpu" and q.requires_grad:
                raise ValueError("flex_attention has no backward on CPU: use kernel 'sdpa' to train on CPU")
            y = flex_attention_call(q, k, v, mask, compiled=kernel == "flex_compiled" or q.is_cuda)
        else:
            raise ValueError(f"attention kernel must be one of {list(KERNELS)}, got {kernel!r}")
        return self._out(y)

    def forward_cached(self, x: Tensor, cache: LayerCache, start: int) -> Tensor:
        """x: Tensor[B, n, C] at stream positions start..start+n-1; writes their keys into ``cache``."""
        q, k, v = self._qkv(x)
        cache.write(start, k, v)
        n, pattern = x.shape[1], cache.pattern
        if n == 1 and start >= pattern.text_len:  # one image query: text + its window of image keys
            keys, values, visible = cache.decode_keys(start)
            y = _decode_attention(q, keys.to(q.dtype), values.to(q.dtype), visible)
        else:
            keys, values = (k, v) if start == 0 else cache.prefix(start + n)  # prefill: the keys just made
            mask = None
            if n > 1:  # a single query may see every earlier position (text query or full layer)
                qpos = torch.arange(start, start + n, device=x.device)
                mask = pattern.allowed(qpos[:, None], torch.arange(start + n, device=x.device)[None, :])
            y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask)
        return self._out(y)


class KVCache:
    """Per-layer key/value caches of one batch of streams plus how many positions are filled."""

    def __init__(self, layers: list[LayerCache]) -> None:
        self.layers = layers
        self.length = 0  # stream positions [0, length) are cached

    @property
    def batch_size(self) -> int:
        return self.layers[0].k.shape[0]

    @property
    def max_len(self) -> int:
        return self.layers[0].max_len

    def select_rows(self, index: Tensor) -> KVCache:
        """A cache of ``len(index)`` streams, stream ``i`` a copy of this one's stream ``index[i]``."""
        out = KVCache([layer.select_rows(index) for layer in self.layers])
        out.length = self.length
        return out
