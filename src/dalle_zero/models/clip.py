"""A small CLIP-style contrastive dual encoder: the reranker (paper §2.6) and, trained apart, the R-precision CLIP.

The paper reranks its 512 samples per caption with OpenAI's CLIP (Radford et al. 2021), whose
weights cannot be downloaded here, so we train our own on the same image-caption pairs:

- text: a pre-LayerNorm transformer over our BPE ids (``text_seq_len`` positions, id 0 = pad).
  ``text_pool="last"`` uses causal attention and reads the last non-pad position (CLIP's choice);
  ``"mean"`` attends to non-pad keys only and averages the non-pad positions. An empty caption
  (all pads) reads position 0, i.e. a learned "empty caption" embedding;
- image: a small residual conv net on pixels in [0, 1] (``image_size`` × ``image_size``): a stem
  conv (stride 1 or 2), then one stage per entry of ``image_widths``, each after the first
  halving the resolution, global average pooled;
- both projected to ``embed_dim`` and L2-normalised; logits are the cosine similarities times a
  learned temperature ``exp(logit_scale)`` (init 1/0.07, clamped at 100, as CLIP).

:func:`contrastive_loss` is CLIP's symmetric cross-entropy over a batch of matching pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dalle_zero.config import Config, check_choice, check_float, check_int
from dalle_zero.io import PretrainedModel


@dataclass(frozen=True, kw_only=True)
class CLIPConfig(Config):
    """Shapes of a :class:`DalleCLIP`. Defaults suit 32 px emoji on a CPU."""

    text_vocab_size: int  # = tokenizer.vocab_size (id 0 = pad)
    text_seq_len: int = 256
    text_n_layer: int = 4
    text_n_head: int = 4
    text_n_embd: int = 128
    text_pool: str = "last"  # "last" (causal, CLIP) | "mean" (bidirectional over non-pad tokens)
    image_size: int = 32
    image_widths: tuple[int, ...] = (32, 64, 128)  # channels per stage; each stage after the first halves H, W
    image_blocks: int = 1  # residual blocks per stage
    image_stem_stride: int = 1  # 2 = the first stage already works at half resolution (cheaper)
    embed_dim: int = 128
    dropout: float = 0.0
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = 100.0

    def __post_init__(self) -> None:
        check_int(self, "text_vocab_size", min_value=2)
        check_int(self, "text_seq_len", min_value=1)
        for name in ("text_n_layer", "text_n_head", "text_n_embd", "image_blocks", "embed_dim"):
            check_int(self, name, min_value=1)
        check_int(self, "image_size", min_value=4)
        check_choice(self, "text_pool", ("last", "mean"))
        check_choice(self, "image_stem_stride", (1, 2))
        if self.text_n_embd % self.text_n_head:
            raise ValueError(
                f"CLIPConfig.text_n_embd ({self.text_n_embd}) must be divisible by text_n_head ({self.text_n_head})"
            )
        if not self.image_widths or not all(isinstance(w, int) and w >= 1 for w in self.image_widths):
            raise ValueError(f"CLIPConfig.image_widths must be positive integers, got {self.image_widths!r}")
        factor = self.image_stem_stride * 2 ** (len(self.image_widths) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"CLIPConfig.image_size ({self.image_size}) must be divisible by "
                f"image_stem_stride * 2**(len(image_widths) - 1) = {factor}"
            )
        check_float(self, "dropout", min_value=0.0, max_value=1.0)
        check_float(self, "logit_scale_max", min_value=1.0)
        check_float(self, "logit_scale_init", max_value=math.log(self.logit_scale_max))


# ---------------------------------------------------------------- text encoder


class _SelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``mask`` None = causal; else a boolean mask broadcastable to (B, nh, T, T), True = may attend."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=mask is None)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class _Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = _SelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), mask))
        return x + self.drop(self.mlp(self.ln_2(x)))


class TextEncoder(nn.Module):
    """BPE ids ``[B, Tt]`` -> pooled features ``[B, n_embd]``."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        c = config
        self.pool = c.text_pool
        self.tok_emb = nn.Embedding(c.text_vocab_size, c.text_n_embd)  # row 0 = the pad/empty embedding
        self.pos_emb = nn.Parameter(torch.zeros(c.text_seq_len, c.text_n_embd))
        self.blocks = nn.ModuleList(_Block(c.text_n_embd, c.text_n_head, c.dropout) for _ in range(c.text_n_layer))
        self.ln_f = nn.LayerNorm(c.text_n_embd)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        real = ids != 0  # (B, T)
        real = real.clone()
        empty = ~real.any(1)
        real[empty, 0] = True  # an empty caption reads position 0
        # causal for "last" (pads follow the caption, so they never reach it); else non-pad keys only
        mask = None if self.pool == "last" else real[:, None, None, :]  # (B, 1, 1, T)
        x = self.tok_emb(ids) + self.pos_emb  # (B, T, C)
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln_f(x)
        if self.pool == "last":
            pos = torch.arange(T, device=ids.device).expand(B, T)
            last = torch.where(real, pos, -1).amax(1)  # (B,)
            return x[torch.arange(B, device=ids.device), last]
        w = real.to(x.dtype)[..., None]  # (B, T, 1)
        return (x * w).sum(1) / w.sum(1)


# ---------------------------------------------------------------- image encoder


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _norm(channels), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ImageEncoder(nn.Module):
    """Pixels ``[B, 3, S, S]`` in [0, 1] -> pooled features ``[B, image_widths[-1]]``."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        widths = config.image_widths
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, stride=config.image_stem_stride, padding=1)]
        for i, w in enumerate(widths):
            if i > 0:
                layers.append(nn.Conv2d(widths[i - 1], w, 3, stride=2, padding=1))  # halve H, W
            layers.extend(_ResBlock(w) for _ in range(config.image_blocks))
        layers.extend([_norm(widths[-1]), nn.GELU()])
        self.net = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.net(pixels * 2.0 - 1.0)  # (B, C, H', W'), centred input
        return x.mean(dim=(2, 3))  # (B, C)


# ---------------------------------------------------------------- the dual encoder


class DalleCLIP(PretrainedModel):
    """Contrastive text/image encoders with a shared, L2-normalised embedding space."""

    config_class = CLIPConfig
    model_type = "clip"

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.text = TextEncoder(config)
        self.image = ImageEncoder(config)
        self.text_proj = nn.Linear(config.text_n_embd, config.embed_dim, bias=False)
        self.image_proj = nn.Linear(config.image_widths[-1], config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, TextEncoder):
            nn.init.normal_(m.pos_emb, std=0.01)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """``LongTensor[B, text_seq_len]`` (0 = pad) -> unit vectors ``[B, embed_dim]``."""
        self._check_ids(ids)
        return F.normalize(self.text_proj(self.text(ids)), dim=-1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``float[B, 3, image_size, image_size]`` in [0, 1] -> unit vectors ``[B, embed_dim]``."""
        self._check_pixels(pixels)
        return F.normalize(self.image_proj(self.image(pixels)), dim=-1)

    def temperature_scale(self) -> torch.Tensor:
        """``exp(logit_scale)``, clamped at ``logit_scale_max``."""
        return self.logit_scale.clamp(max=math.log(self.config.logit_scale_max)).exp()

    def forward(self, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities ``logits_per_image[Bi, Bt]``; the transpose is per text."""
        image = self.encode_image(pixels)  # (Bi, E)
        text = self.encode_text(ids)  # (Bt, E)
        return self.temperature_scale() * image @ text.t()

    def similarity(self, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``[Bi, Bt]`` of every image with every caption (no temperature)."""
        return self.encode_image(pixels) @ self.encode_text(ids).t()

    # ---- input checks: clear errors instead of shape soup deep inside ----

    def _check_ids(self, ids: torch.Tensor) -> None:
        c = self.config
        if not isinstance(ids, torch.Tensor):
            raise ValueError(f"text ids must be a LongTensor [B, {c.text_seq_len}], got {type(ids).__name__}")
        if ids.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
            raise ValueError(f"text ids must be an integer tensor, got dtype {ids.dtype}")
        if ids.dim() != 2 or ids.shape[1] != c.text_seq_len or ids.shape[0] == 0:
            raise ValueError(f"text ids must have shape [B, {c.text_seq_len}], got {tuple(ids.shape)}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= c.text_vocab_size:
            raise ValueError(f"text ids must lie in [0, {c.text_vocab_size}), got values in [{lo}, {hi}]")

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        s = self.config.image_size
        if not isinstance(pixels, torch.Tensor):
            raise ValueError(f"pixels must be a float tensor [B, 3, {s}, {s}], got {type(pixels).__name__}")
        if not pixels.is_floating_point():
            raise ValueError(f"pixels must be a float tensor with values in [0, 1], got dtype {pixels.dtype}")
        if pixels.dim() != 4 or pixels.shape[1:] != (3, s, s) or pixels.shape[0] == 0:
            raise ValueError(f"pixels must have shape [B, 3, {s}, {s}], got {tuple(pixels.shape)}")


def contrastive_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy: image i matches text i, over rows and over columns."""
    if logits_per_image.dim() != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(f"contrastive_loss needs square logits [B, B], got {tuple(logits_per_image.shape)}")
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    logits = logits_per_image.float()
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
