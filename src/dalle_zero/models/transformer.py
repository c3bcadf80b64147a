"""The DALL-E prior: a decoder-only sparse transformer over one text+image token stream (paper §2.2, App. B.1).

Stream (paper §2.2, App. B.1; the paper leaves the BOS placement open): the model reads
``[BOS, text_0 .. text_{Tt-1}, image_0 .. image_{Ti-2}]`` (``Tt + Ti`` inputs) and position ``s``
predicts token ``s + 1``: the ``Tt`` text tokens, then the ``Ti`` image tokens.

- Text ids (``text_ids``, LongTensor[B, Tt]) are in ``[0, text_vocab_size)`` and **0 means pad**: an
  empty position holds that position's own learned pad embedding (Fig. 10), and the text head
  predicts class 0 there. An empty caption (all pads) is a valid input, e.g. for guidance.
- Image ids (``image_ids``, LongTensor[B, n]) are dVAE codes in raster order, ``n <= image_grid²``.
- Embeddings: text token/pad + text position; image token + row[r] + column[c]; BOS is one vector.
- Blocks: pre-LN, GELU MLP ×``mlp_ratio``; layer ``j`` uses mask ``attn_pattern[j]`` (default: the
  paper's row, column, row, row, ..., conv last) over input positions, BOS counted as text.
- Separate text and image heads (the paper's "unembeddings", Ambiguity 4): text positions predict
  only text, image positions only image. Logits are fp32 (App. D), heads initialised to zero.
- Loss (§3.4): ``(1 - w) · CE_text + w · CE_image``, each averaged over its own tokens, w = 7/8.
  Pad targets count in the text CE by default (Ambiguity 3, as DALLE-pytorch/ru-dalle);
  ``text_loss_on_pad=False`` drops them.

Incremental decoding for samplers: :meth:`DalleTransformer.allocate_cache`, :meth:`~DalleTransformer.prefill`,
:meth:`~DalleTransformer.decode_step` (see ``dalle_zero.nn.attention`` for the per-layer windows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dalle_zero.config import Config, check_float, check_int
from dalle_zero.io import PretrainedModel
from dalle_zero.nn.attention import KERNELS, SDPA_KERNELS, KVCache, LayerCache, build_block_mask
from dalle_zero.nn.banded import BandedLayout
from dalle_zero.nn.block import TransformerBlock
from dalle_zero.nn.embeddings import PAD_ID, ImageEmbedding, TextEmbedding
from dalle_zero.nn.masks import KINDS, AttentionPattern, paper_layer_pattern
from dalle_zero.nn.quant import quantize_linears_


@dataclass(frozen=True, kw_only=True)
class TransformerConfig(Config):
    n_layer: int
    n_head: int
    n_embd: int
    text_vocab_size: int  # including the pad id 0
    text_seq_len: int
    image_vocab_size: int
    image_grid: int  # image tokens per side
    attn_pattern: tuple[str, ...] | None = None  # one kind per layer; None -> paper_layer_pattern(n_layer)
    conv_kernel_size: int = 11
    mlp_ratio: int = 4
    dropout: float = 0.0
    image_loss_weight: float = 7 / 8
    text_loss_on_pad: bool = True

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "text_seq_len", "image_grid", "mlp_ratio"):
            check_int(self, name, min_value=1)
        check_int(self, "text_vocab_size", min_value=2)
        check_int(self, "image_vocab_size", min_value=1)
        check_int(self, "conv_kernel_size", min_value=1)
        if self.conv_kernel_size % 2 == 0:
            raise ValueError(f"TransformerConfig.conv_kernel_size must be odd, got {self.conv_kernel_size}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"TransformerConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        check_float(self, "dropout", min_value=0.0, max_value=1.0)
        check_float(self, "image_loss_weight", min_value=0.0, max_value=1.0)
        if not isinstance(self.text_loss_on_pad, bool):
            raise ValueError(f"TransformerConfig.text_loss_on_pad must be true/false, got {self.text_loss_on_pad!r}")
        if self.attn_pattern is None:
            object.__setattr__(self, "attn_pattern", paper_layer_pattern(self.n_layer))
        pattern = tuple(self.attn_pattern)
        object.__setattr__(self, "attn_pattern", pattern)
        if len(pattern) != self.n_layer or any(k not in KINDS for k in pattern):
            raise ValueError(
                f"TransformerConfig.attn_pattern must list {self.n_layer} kinds from {list(KINDS)}, got {pattern}"
            )

    @property
    def image_seq_len(self) -> int:
        return self.image_grid * self.image_grid

    @property
    def stream_len(self) -> int:
        """Input positions of a full training example: BOS + text + all image tokens but the last."""
        return self.text_seq_len + self.image_seq_len

    @classmethod
    def paper_12b(cls) -> TransformerConfig:
        """The paper's 12B model: 64 layers, 62 heads × 64, 16,384 text ids + 256 pads, 32×32 of 8192."""
        return cls(
            n_layer=64,
            n_head=62,
            n_embd=3968,
            text_vocab_size=16384,
            text_seq_len=256,
            image_vocab_size=8192,
            image_grid=32,
        )


class DalleTransformer(PretrainedModel):
    config_class = TransformerConfig
    model_type = "transformer"

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.bos = nn.Parameter(torch.empty(c.n_embd))
        self.text_embed = TextEmbedding(c.text_vocab_size, c.text_seq_len, c.n_embd)
        self.image_embed = ImageEmbedding(c.image_vocab_size, c.image_grid, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.n_embd, c.n_head, mlp_ratio=c.mlp_ratio, dropout=c.dropout) for _ in range(c.n_layer)
        )
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.text_head = nn.Linear(c.n_embd, c.text_vocab_size, bias=False)
        self.image_head = nn.Linear(c.n_embd, c.image_vocab_size, bias=False)
        # Masks index input positions with BOS as text position 0 (see dalle_zero.nn.masks).
        self.patterns = tuple(
            AttentionPattern(kind, c.text_seq_len + 1, c.image_grid, c.conv_kernel_size) for kind in c.attn_pattern
        )
        self.kernel = "sdpa"
        self.activation_checkpointing = False
        self.grad_scales: Tensor | None = None  # fp16 training: one per resblock (set_gradient_scales)
        self.quantized: str | None = None  # "int8" after quantize_int8() (inference only)
        self._masks: dict[tuple[Any, ...], Any] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Sparse Transformer initialisation (paper App. B.1); zero output layers."""
        nn.init.normal_(self.bos, std=0.125 / math.sqrt(self.config.n_embd))
        self.text_embed.reset_parameters()
        self.image_embed.reset_parameters()
        for block in self.blocks:
            block.init_weights(self.config.n_layer)
        nn.init.ones_(self.ln_f.weight)
        nn.init.zeros_(self.ln_f.bias)
        nn.init.zeros_(self.text_head.weight)
        nn.init.zeros_(self.image_head.weight)

    # ---- options (not part of the weights) ----

    def set_attention_kernel(self, kernel: str) -> DalleTransformer:
        """ "sdpa" (default; any device, backward everywhere: causal SDPA for full layers, over whole
        training streams banded attention for sparse layers whose windows are small enough to gain
        (``BandedLayout.worthwhile``: row and column at 32×32), a dense bool mask otherwise),
        "sdpa_dense" (a dense mask for every sparse layer), "sdpa_banded" (banded for every sparse layer
        over whole streams), "flex" (flex_attention BlockMask; compiled on CUDA, eager on CPU, forward
        only on CPU) or "flex_compiled" (always compiled)."""
        if kernel not in KERNELS:
            raise ValueError(f"attention kernel must be one of {list(KERNELS)}, got {kernel!r}")
        self.kernel = kernel
        return self

    def set_activation_checkpointing(self, enabled: bool = True) -> DalleTransformer:
        """Recompute each block's activations in the backward pass (training only)."""
        self.activation_checkpointing = bool(enabled)
        return self

    def set_gradient_scales(self, scales: Tensor | None) -> DalleTransformer:
        """fp16 training (paper App. D): Tensor[2 · n_layer] fp32 on the model's device, the backward
        pass's multiplier of each resblock, in the order of :meth:`resblock_parameters`; read at every
        forward, so the trainer updates it in place. None: no scaling."""
        n = 2 * self.config.n_layer
        if scales is not None and tuple(scales.shape) != (n,):
            raise ValueError(f"gradient scales must have shape ({n},) (two per layer), got {tuple(scales.shape)}")
        self.grad_scales = scales
        return self

    def resblock_parameters(self) -> list[list[nn.Parameter]]:
        """The parameters of each resblock: layer 0's attention, layer 0's MLP, layer 1's attention, ..."""
        return [group for block in self.blocks for group in block.resblock_parameters()]

    def repeated_blocks(self) -> list[nn.Module]:
        """The layers, in order: the units a wrapper may treat one at a time (FSDP shards each alone)."""
        return list(self.blocks)

    def quantize_int8(self) -> DalleTransformer:
        """Store the blocks' matrices as int8 with per-channel scales, in place, for faster sampling on CPU.

        Inference only (no gradients; :meth:`save_pretrained` refuses): sampling at batch 1 reads a
        quarter of the weight bytes per token. Embeddings, LayerNorms, heads and logits stay fp32; see
        :mod:`dalle_zero.nn.quant`.
        """
        if self.quantized is None:
            quantize_linears_(self.blocks)
            self.quantized = "int8"
            self.eval()
        return self

    def save_pretrained(self, folder: str | Path) -> Path:
        if self.quantized is not None:
            raise ValueError(f"this transformer holds {self.quantized} sampling weights; save before quantize_int8()")
        return super().save_pretrained(folder)

    def _mask(self, pattern: AttentionPattern, length: int, device: torch.device) -> Any:
        """The mask for the first ``length`` positions: dense masks are built once at full length and
        cropped (a causal mask's top-left corner is the mask of the shorter stream), banded layouts for
        whole training streams only (other lengths are rare: scoring prefixes), block masks per length."""
        if self.kernel in SDPA_KERNELS:
            if pattern.kind == "full":
                return None  # plain causal: SDPA's is_causal path needs no mask and runs faster
            if self.kernel != "sdpa_dense" and length == self.config.stream_len:
                key: tuple[Any, ...] = (pattern.kind, "banded", str(device), self.kernel)
                if key not in self._masks:
                    layout = BandedLayout.build(pattern, length, device)
                    use = self.kernel == "sdpa_banded" or layout.worthwhile()
                    self._masks[key] = layout if use else None
                if self._masks[key] is not None:
                    return self._masks[key]
            key = (pattern.kind, str(device), "dense")
            if key not in self._masks:
                self._masks[key] = pattern.dense(self.config.stream_len, device=device)
            return self._masks[key][:length, :length]
        key = (pattern.kind, length, str(device), self.kernel)
        if key not in self._masks:
            self._masks[key] = build_block_mask(pattern, length, device)
        return self._masks[key]

    # ---- full forward (training, scoring) ----

    def _embed(self, text_ids: Tensor, image_ids: Tensor | None) -> Tensor:
        c = self.config
        b = text_ids.shape[0]
        if text_ids.dim() != 2 or text_ids.shape[1] != c.text_seq_len:
            raise ValueError(f"text_ids must have shape [B, {c.text_seq_len}], got {tuple(text_ids.shape)}")
        parts = [self.bos.view(1, 1, -1).expand(b, 1, -1), self.text_embed(text_ids)]
        if image_ids is not None:
            if image_ids.dim() != 2 or image_ids.shape[0] != b or image_ids.shape[1] > c.image_seq_len:
                raise ValueError(
                    f"image_ids must have shape [{b}, n] with n <= {c.image_seq_len}, got {tuple(image_ids.shape)}"
                )
            parts.append(self.image_embed(image_ids))
        return torch.cat([p.to(parts[1].dtype) for p in parts], dim=1)  # (B, 1 + Tt + n, d)

    def _logits(self, head: nn.Linear, h: Tensor) -> Tensor:
        with torch.autocast(h.device.type, enabled=False):  # fp32 logits (paper App. D)
            return F.linear(h.float(), head.weight.float())

    def forward(self, text_ids: Tensor, image_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher-forced logits.

        text_ids LongTensor[B, Tt], image_ids LongTensor[B, n] (0 <= n <= Ti) ->
        (text_logits FloatTensor[B, Tt, Vt], image_logits FloatTensor[B, n, Vi]), fp32, where
        ``text_logits[:, i]`` predicts ``text_ids[:, i]`` from BOS and text before it and
        ``image_logits[:, j]`` predicts ``image_ids[:, j]`` from all text and ``image_ids[:, :j]``.
        """
        tt = self.config.text_seq_len
        n = 0 if image_ids is None else image_ids.shape[1]
        x = self.drop(self._embed(text_ids, image_ids)[:, : tt + n])  # drop the last input: (B, L, d)
        length = x.shape[1]
        scales = self.grad_scales if torch.is_grad_enabled() else None
        for j, (block, pattern) in enumerate(zip(self.blocks, self.patterns)):
            mask = self._mask(pattern, length, x.device)
            pair = None if scales is None else scales[2 * j : 2 * j + 2]
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, self.kernel, pair, use_reentrant=False)
            else:
                x = block(x, mask, self.kernel, pair)
        h = self.ln_f(x)
        return self._logits(self.text_head, h[:, :tt]), self._logits(self.image_head, h[:, tt:])

    def loss(self, text_ids: Tensor, image_ids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted CE (paper §2.2): returns (loss, {"text": CE_text, "image": CE_image}) (parts detached)."""
        c = self.config
        text_logits, image_logits = self(text_ids, image_ids)
        text_ce = F.cross_entropy(text_logits.flatten(0, 1), text_ids.flatten(), reduction="none")
        if c.text_loss_on_pad:
            text_loss = text_ce.mean()
        else:
            keep = (text_ids.flatten() != PAD_ID).to(text_ce.dtype)
            text_loss = (text_ce * keep).sum() / keep.sum().clamp(min=1.0)
        image_loss = F.cross_entropy(image_logits.flatten(0, 1), image_ids.flatten())
        loss = (1.0 - c.image_loss_weight) * text_loss + c.image_loss_weight * image_loss
        return loss, {"text": text_loss.detach(), "image": image_loss.detach()}

    # ---- incremental decoding (samplers) ----

    def allocate_cache(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """Zeroed key/value buffers for ``batch_size`` streams (defaults: the model's device and dtype)."""
        ref = self.text_head.weight
        c = self.config
        head_dim = c.n_embd // c.n_head
        layers = [
            LayerCache(
                p, batch_size, c.n_head, head_dim, c.stream_len, device=device or ref.device, dtype=dtype or ref.dtype
            )
            for p in self.patterns
        ]
        return KVCache(layers)

    def _run_cached(self, x: Tensor, cache: KVCache) -> Tensor:
        start = cache.length
        for block, layer_cache in zip(self.blocks, cache.layers):
            x = block.forward_cached(x, layer_cache, start)
        cache.length = start + x.shape[1]
        return self.ln_f(x)

    @torch.no_grad()
    def prefill(self, text_ids: Tensor, cache: KVCache, image_ids: Tensor | None = None) -> Tensor:
        """Feed BOS + text (+ an optional image prefix of n tokens) into an empty cache in one call.

        Returns fp32 logits FloatTensor[B, Vi] for image token n (0 without a prefix).
        """
        n = 0 if image_ids is None else image_ids.shape[1]
        if cache.length != 0:
            raise ValueError(f"prefill needs an empty cache, this one holds {cache.length} positions")
        if n >= self.config.image_seq_len:
            raise ValueError(
                f"image prefix has {n} tokens; at most {self.config.image_seq_len - 1} leave one to predict"
            )
        h = self._run_cached(self._embed(text_ids, image_ids), cache)
        return self._logits(self.image_head, h[:, -1])

    @torch.no_grad()
    def decode_step(self, image_ids: Tensor, cache: KVCache) -> Tensor:
        """Append image token j (LongTensor[B] or [B, 1]) and return fp32 logits FloatTensor[B, Vi] of token j + 1."""
        c = self.config
        j = cache.length - (c.text_seq_len + 1)  # raster index of the token being fed
        if j < 0:
            raise ValueError("decode_step needs a cache filled by prefill(text_ids, cache) first")
        if j >= c.image_seq_len - 1:
            raise ValueError(f"all {c.image_seq_len} image tokens are already predicted; nothing left to decode")
        ids = image_ids.reshape(cache.batch_size, 1)
        h = self._run_cached(self.image_embed(ids, start=j), cache)
        return self._logits(self.image_head, h[:, -1])

    def num_parameters(self, *, blocks_only: bool = False) -> int:
        params = self.blocks.parameters() if blocks_only else self.parameters()
        return sum(p.numel() for p in params)
