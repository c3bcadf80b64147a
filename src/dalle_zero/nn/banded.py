"""Block-banded attention for the sparse image layers: each image block reads its own key window.

A dense boolean mask makes ``F.scaled_dot_product_attention`` compute every (query, key) score and
throw most of them away: at a 32×32 grid a row layer keeps ~100 of up to 1,088 keys per query. The row,
column and conv patterns of :mod:`dalle_zero.nn.masks` are *bands* once the image positions are in
the right order (raster order for row and conv; column-major for column, the paper's transposed
column attention): an image query only sees the text and a few earlier blocks of ``grid_size``
image positions (one image row, or one column, per block). So the image queries are cut into
blocks; block ``b`` is scored against all text keys (one large matmul) and against image blocks
``b - back .. b`` (views of the ordered keys, no gather), with the mask inside each window taken
from the same predicate (:meth:`AttentionPattern.allowed`). Outputs equal the dense kernel's to
rounding; text queries run causal attention over the text alone.

Keys per image query drop from up to ``L`` to ``text_len + (back + 1)·grid_size`` (row: back 1;
column: back 0; conv 11×11: back 6). Row and column layers run faster than with a dense mask; the
conv window is too wide to gain, so :meth:`BandedLayout.worthwhile` says when to use it
(``benchmarks/bench_attention.py``; BENCHMARKS.md, "Prior"). Everything is differentiable (training
on CPU, where flex_attention has no backward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dalle_zero.nn.masks import AttentionPattern


@dataclass(frozen=True, eq=False)
class BandedLayout:
    """Index plan of one pattern over the first ``length`` stream positions; build with :meth:`build`.

    ``order``: LongTensor[n_image], the image positions (0-based) in band order, None = raster;
    ``inverse``: its inverse permutation; ``bias``: FloatTensor[n_blocks, block, text_len + window],
    0 where a block's query may attend and -inf elsewhere (keys: text, then the window's image keys).
    """

    text_len: int
    n_image: int
    block: int
    back: int  # the window of block b is image blocks b - back .. b
    order: Tensor | None
    inverse: Tensor | None
    bias: Tensor

    @property
    def n_blocks(self) -> int:
        return -(-self.n_image // self.block)

    @property
    def window(self) -> int:
        return (self.back + 1) * self.block

    @classmethod
    def build(cls, pattern: AttentionPattern, length: int, device: torch.device | str | None = None) -> BandedLayout:
        """Plan for a row, column or conv ``pattern`` over stream positions [0, length)."""
        if pattern.kind == "full":
            raise ValueError("full attention is plain causal attention; the banded kernel is for row/column/conv")
        t, g = pattern.text_len, pattern.grid_size
        n = length - t
        if not 0 < n <= g * g:
            raise ValueError(f"banded attention needs 1..{g * g} image positions after {t} text ones, got {n}")
        raster = torch.arange(n)
        order = torch.argsort((raster % g) * g + raster // g) if pattern.kind == "column" else raster
        n_blocks = -(-n // g)
        qpos = torch.full((n_blocks * g,), -1, dtype=torch.long)  # ordered stream positions, -1 = padding
        qpos[:n] = t + order
        i, j = pattern.allowed(qpos[:n, None], qpos[None, :n]).nonzero(as_tuple=True)
        if bool((j > i).any()):
            raise ValueError(f"{pattern.kind} attention is not causal in its band order")
        back = int((i // g - j // g).max())
        kidx = (torch.arange(n_blocks)[:, None] - back) * g + torch.arange((back + 1) * g)[None, :]
        kvalid = (kidx >= 0) & (kidx < n)
        kpos = torch.where(kvalid, qpos[kidx.clamp(0, n - 1)], -1)
        qblk = qpos.view(n_blocks, g)
        text_part = pattern.allowed(qblk[:, :, None], torch.arange(t)[None, None, :])
        image_part = pattern.allowed(qblk[:, :, None], kpos[:, None, :]) & kvalid[:, None, :]
        allowed = torch.cat([text_part, image_part], dim=-1)
        allowed[qblk < 0] = True  # padding queries: anything finite (their outputs are dropped)
        column = pattern.kind == "column"
        return cls(
            text_len=t,
            n_image=n,
            block=g,
            back=back,
            order=order.to(device) if column else None,
            inverse=torch.argsort(order).to(device) if column else None,
            bias=torch.zeros(allowed.shape, device=device).masked_fill_(~allowed.to(device), float("-inf")),
        )

    def worthwhile(self) -> bool:
        """Few enough keys per query to beat dense masked attention (up to ~1/4 of the stream: BENCHMARKS.md, Prior)."""
        return 4 * (self.text_len + self.window) <= self.text_len + self.n_image


def banded_attention(q: Tensor, k: Tensor, v: Tensor, layout: BandedLayout) -> Tensor:
    """q, k, v: Tensor[B, nh, L, hs] with L = text_len + n_image -> Tensor[B, nh, L, hs]."""
    t, n, g, back, nb = layout.text_len, layout.n_image, layout.block, layout.back, layout.n_blocks
    if q.shape[2] != t + n:
        raise ValueError(f"banded layout is for {t + n} positions, got {q.shape[2]}")
    b, nh, _, hs = q.shape
    text_out = F.scaled_dot_product_attention(q[:, :, :t], k[:, :, :t], v[:, :, :t], is_causal=True)
    pad = nb * g - n

    def image(x: Tensor) -> Tensor:  # the image part in band order
        x = x[:, :, t:]
        return x if layout.order is None else x.index_select(2, layout.order)

    def windows(x: Tensor) -> Tensor:  # (B, nh, nb, window, hs): image blocks b - back .. b for each b
        x = F.pad(image(x), (0, 0, back * g, pad)).view(b, nh, nb + back, g, hs)
        return torch.cat([x[:, :, o : o + nb] for o in range(back + 1)], dim=3)

    qi = F.pad(image(q), (0, 0, 0, pad)) * hs**-0.5  # (B, nh, nb·g, hs)
    kt, vt = k[:, :, :t], v[:, :, :t]
    scores_text = (qi @ kt.transpose(-1, -2)).view(b, nh, nb, g, t)
    scores_window = qi.view(b, nh, nb, g, hs) @ windows(k).transpose(-1, -2)
    scores = torch.cat([scores_text, scores_window], dim=-1)
    wide = torch.promote_types(scores.dtype, torch.float32)  # softmax in fp32 (or wider) for bf16 inputs
    weights = (scores.to(wide) + layout.bias).softmax(dim=-1).to(scores.dtype)
    out = weights[..., :t].reshape(b, nh, nb * g, t) @ vt
    out = out + (weights[..., t:] @ windows(v)).view(b, nh, nb * g, hs)
    out = out[:, :, :n]
    if layout.inverse is not None:
        out = out.index_select(2, layout.inverse)
    return torch.cat([text_out, out.to(text_out.dtype)], dim=2)
