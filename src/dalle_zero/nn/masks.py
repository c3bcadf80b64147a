"""The attention patterns of the DALL-E transformer, defined once (paper App. B.1, Fig. 11).

Every pattern is a predicate over (query, key) positions of one stream laid out as
``text_len`` text positions followed by the ``grid_size**2`` image positions in raster order:

- text queries attend causally to text (key <= query);
- every image query attends to all text positions;
- image query ``p`` attends to image key ``k`` by kind, with ``d = p - k`` (self always allowed):

  ========  =====================================================================================
  full      ``d >= 0`` (dense causal)
  row       ``0 <= d <= grid_size``: the previous ``grid_size + 1`` image tokens incl. itself,
            wrapping across row ends (Sparse Transformer's strided A¹; Ambiguity 13)
  column    ``d >= 0`` and ``d % grid_size == 0``: earlier tokens of the same column
  conv      ``d >= 0`` and ``d = grid_size * a + c`` with ``|a|, |c| <= kernel_size // 2``: the
            causal part of a kernel × kernel window in flattened raster offsets, columns wrapping
            into the neighbouring row like the row mask (Ambiguity 1, reading (a); 61 keys at 11×11)
  ========  =====================================================================================

The predicates are written with tensor operations only, so the same function yields the dense
boolean mask for ``F.scaled_dot_product_attention`` (:func:`attention_mask`), the ``mask_mod`` of a
flex_attention block mask (:meth:`AttentionPattern.mask_mod`) and the key window a cached sampler
needs (:func:`image_key_window`). All image patterns depend on ``d`` only, so a window of offsets
describes every image query.

How the model's stream lines up (see ``dalle_zero.models.transformer``): the model feeds
``[BOS, text_0 .. text_{Tt-1}, image_0 .. image_{Ti-2}]`` and position ``s`` predicts token ``s + 1``.
The masks index *input* positions, with the start token counted as text position 0, i.e. the model
uses ``attention_mask(kind, text_seq_len + 1, grid)`` cropped to its ``text_seq_len + Ti`` inputs.
So an input image token sees the previous image tokens of its pattern and BOS + all text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

KINDS = ("full", "row", "column", "conv")


def _check(kind: str, grid_size: int, kernel_size: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"attention kind must be one of {list(KINDS)}, got {kind!r}")
    if grid_size < 1:
        raise ValueError(f"grid_size must be >= 1, got {grid_size}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")


def image_pair_allowed(kind: str, q: Tensor, k: Tensor, grid_size: int, kernel_size: int = 11) -> Tensor:
    """May image query ``q`` attend to image key ``k``? Raster indices, any broadcastable int tensors."""
    d = q - k
    causal = d >= 0
    if kind == "full":
        return causal
    if kind == "row":
        return causal & (d <= grid_size)
    if kind == "column":
        return causal & (d % grid_size == 0)
    if kind == "conv":
        r = kernel_size // 2
        near = (d + r * grid_size).abs() <= r  # a = -r
        for a in range(-r + 1, r + 1):
            near = near | ((d - a * grid_size).abs() <= r)
        return causal & near
    raise ValueError(f"attention kind must be one of {list(KINDS)}, got {kind!r}")


def stream_pair_allowed(
    kind: str, q: Tensor, k: Tensor, text_len: int, grid_size: int, kernel_size: int = 11
) -> Tensor:
    """May stream position ``q`` attend to stream position ``k`` (text first, then image raster)?"""
    text_rule = k <= q
    image_rule = (k < text_len) | image_pair_allowed(kind, q - text_len, k - text_len, grid_size, kernel_size)
    return torch.where(q < text_len, text_rule, image_rule)


def attention_mask(
    kind: str,
    text_len: int,
    grid_size: int,
    kernel_size: int = 11,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """Dense mask, BoolTensor[L, L] with L = text_len + grid_size², query rows, key columns, True = may attend."""
    _check(kind, grid_size, kernel_size)
    if text_len < 0:
        raise ValueError(f"text_len must be >= 0, got {text_len}")
    pos = torch.arange(text_len + grid_size * grid_size, device=device)
    return stream_pair_allowed(kind, pos[:, None], pos[None, :], text_len, grid_size, kernel_size)


def image_key_window(kind: str, grid_size: int, kernel_size: int = 11) -> Tensor:
    """Offsets ``d`` (ascending LongTensor) such that image query ``p`` attends exactly to image keys
    ``p - d`` with ``p - d >= 0``. Derived from :func:`image_pair_allowed` at the last image position."""
    _check(kind, grid_size, kernel_size)
    n = grid_size * grid_size
    keys = torch.arange(n)
    allowed = image_pair_allowed(kind, torch.tensor(n - 1), keys, grid_size, kernel_size)
    return (n - 1 - keys[allowed]).flip(0)


def paper_layer_pattern(n_layer: int, *, column_period: int = 4, last: str | None = "conv") -> tuple[str, ...]:
    """Per-layer kinds as in the paper (App. B.1): row, column, row, row, ... and ``last`` in the final layer.

    0-indexed layer ``j`` is column if ``(j - 1) % column_period == 0``, else row; the last layer is
    ``last`` (None keeps the row/column rule there too). ``paper_layer_pattern(64)`` has 16 column
    layers (j = 1, 5, ..., 61), 47 row layers and one conv layer.
    """
    if n_layer < 1:
        raise ValueError(f"n_layer must be >= 1, got {n_layer}")
    if column_period < 1:
        raise ValueError(f"column_period must be >= 1, got {column_period}")
    if last is not None and last not in KINDS:
        raise ValueError(f"last must be one of {list(KINDS)} or None, got {last!r}")
    kinds = ["column" if (j - 1) % column_period == 0 else "row" for j in range(n_layer)]
    if last is not None:
        kinds[-1] = last
    return tuple(kinds)


@dataclass(frozen=True)
class AttentionPattern:
    """One layer's pattern over a stream of ``text_len`` text and ``grid_size**2`` image positions."""

    kind: str
    text_len: int
    grid_size: int
    kernel_size: int = 11

    def __post_init__(self) -> None:
        _check(self.kind, self.grid_size, self.kernel_size)

    @property
    def length(self) -> int:
        return self.text_len + self.grid_size * self.grid_size

    def allowed(self, q: Tensor, k: Tensor) -> Tensor:
        return stream_pair_allowed(self.kind, q, k, self.text_len, self.grid_size, self.kernel_size)

    @property
    def mask_mod(self) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
        """The predicate as a flex_attention ``mask_mod(b, h, q_idx, kv_idx)`` (a plain function)."""
        kind, text_len, grid, kernel = self.kind, self.text_len, self.grid_size, self.kernel_size

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return stream_pair_allowed(kind, q_idx, kv_idx, text_len, grid, kernel)

        return mask_mod

    def dense(self, length: int | None = None, device: torch.device | str | None = None) -> Tensor:
        """BoolTensor[length, length]: the top-left crop of :func:`attention_mask`."""
        n = self.length if length is None else length
        pos = torch.arange(n, device=device)
        return self.allowed(pos[:, None], pos[None, :])

    @cached_property
    def window(self) -> Tensor:
        return image_key_window(self.kind, self.grid_size, self.kernel_size)
