"""Input embeddings of the DALL-E stream (paper App. B.1, Fig. 10).

- :class:`TextEmbedding`: token embedding + text position embedding, where every empty text position
  (id :data:`PAD_ID` = 0) uses its own learned pad embedding instead of a token embedding.
- :class:`ImageEmbedding`: image-vocabulary embedding + row embedding[r] + column embedding[c] for the
  token at raster position ``p = r * grid + c``.

Initialisation follows Sparse Transformer (paper App. B.1): token embeddings N(0, 0.125/√d), position
embeddings N(0, 0.125/√(d·n_emb)) with n_emb the number of position embeddings summed per token.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

PAD_ID = 0
"""Text id meaning "no token here"; replaced by the per-position pad embedding."""


class TextEmbedding(nn.Module):
    def __init__(self, vocab_size: int, seq_len: int, n_embd: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.token = nn.Embedding(vocab_size, n_embd)  # row PAD_ID is never read
        self.pad = nn.Parameter(torch.empty(seq_len, n_embd))
        self.position = nn.Parameter(torch.empty(seq_len, n_embd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d = self.position.shape[-1]
        nn.init.normal_(self.token.weight, std=0.125 / math.sqrt(d))
        nn.init.normal_(self.pad, std=0.125 / math.sqrt(d))
        nn.init.normal_(self.position, std=0.125 / math.sqrt(d))

    def forward(self, ids: Tensor, start: int = 0) -> Tensor:
        """ids LongTensor[B, T] at text positions start..start+T-1 -> FloatTensor[B, T, d]."""
        positions = slice(start, start + ids.shape[1])
        tok = self.token(ids)  # (B, T, d)
        pad = self.pad[positions].unsqueeze(0).to(tok.dtype)  # (1, T, d)
        return torch.where((ids == PAD_ID).unsqueeze(-1), pad, tok) + self.position[positions].to(tok.dtype)


class ImageEmbedding(nn.Module):
    def __init__(self, vocab_size: int, grid: int, n_embd: int) -> None:
        super().__init__()
        self.grid = grid
        self.token = nn.Embedding(vocab_size, n_embd)
        self.row = nn.Parameter(torch.empty(grid, n_embd))
        self.column = nn.Parameter(torch.empty(grid, n_embd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d = self.row.shape[-1]
        nn.init.normal_(self.token.weight, std=0.125 / math.sqrt(d))
        nn.init.normal_(self.row, std=0.125 / math.sqrt(2 * d))
        nn.init.normal_(self.column, std=0.125 / math.sqrt(2 * d))

    def forward(self, ids: Tensor, start: int = 0) -> Tensor:
        """ids LongTensor[B, T] at raster positions start..start+T-1 -> FloatTensor[B, T, d]."""
        p = torch.arange(start, start + ids.shape[1], device=ids.device)
        tok = self.token(ids)  # (B, T, d)
        return tok + (self.row[p // self.grid] + self.column[p % self.grid]).to(tok.dtype)
