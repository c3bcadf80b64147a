"""Pre-LayerNorm transformer block of the Sparse Transformer kind (paper App. B.1; Sparse Transformer §5.2, §6).

``H = H + attn(LN(H)); H = H + mlp(LN(H))`` — two residual branches ("resblocks") per layer, the MLP
``W2·GELU(W1·x + b1) + b2`` with hidden width ``mlp_ratio · d``. Dropout, if any, only on the
residual branches' outputs. With fp16 gradient scales (``scales``, one per resblock) each branch is
wrapped as :func:`~dalle_zero.nn.grad_scale.residual` describes (paper App. D). Initialisation
(:meth:`TransformerBlock.init_weights`): weights N(0, 0.125/√d_in), biases 0, the two branch output
projections scaled by 1/√(2·n_layer).
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from dalle_zero.nn.attention import LayerCache, SelfAttention
from dalle_zero.nn.grad_scale import residual


class MLP(nn.Module):
    def __init__(self, n_embd: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, mlp_ratio * n_embd)
        self.proj = nn.Linear(mlp_ratio * n_embd, n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class TransformerBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, *, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = SelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, mlp_ratio)
        self.dropout = nn.Dropout(dropout)

    def init_weights(self, n_layer: int) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.125 / math.sqrt(module.in_features))
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for out in (self.attn.proj, self.mlp.proj):
            out.weight.data.mul_(1.0 / math.sqrt(2 * n_layer))

    def resblock_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """The parameters of the attention resblock and of the MLP resblock, each with its LayerNorm."""
        return (
            [*self.ln_1.parameters(), *self.attn.parameters()],
            [*self.ln_2.parameters(), *self.mlp.parameters()],
        )

    def forward(self, x: Tensor, mask: Tensor | Any, kernel: str = "sdpa", scales: Tensor | None = None) -> Tensor:
        """x: Tensor[B, T, C] -> Tensor[B, T, C]; see :meth:`SelfAttention.forward` for mask/kernel.

        ``scales``: None, or Tensor[2] fp32, the gradient scales of the attention and MLP resblocks."""
        attn_scale, mlp_scale = (None, None) if scales is None else scales.unbind()
        x = residual(x, lambda h: self.dropout(self.attn(self.ln_1(h), mask, kernel=kernel)), attn_scale)
        return residual(x, lambda h: self.dropout(self.mlp(self.ln_2(h))), mlp_scale)

    def forward_cached(self, x: Tensor, cache: LayerCache, start: int) -> Tensor:
        x = x + self.dropout(self.attn.forward_cached(self.ln_1(x), cache, start))
        return x + self.dropout(self.mlp(self.ln_2(x)))
