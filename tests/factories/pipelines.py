"""Tiny, fast, real components for tests: a trained BPE, a dVAE, a prior and a CLIP (seconds on a CPU).

``tiny_pipeline()`` returns a :class:`TextToImagePipeline` whose models have random (non-zero) weights,
so different captions and seeds give different images; reuse it in any test that needs a whole model.
"""

from __future__ import annotations

import torch
from torch import nn

from dalle_zero.models.clip import CLIPConfig, DalleCLIP
from dalle_zero.models.dvae import DiscreteVAE, DVAEConfig
from dalle_zero.models.transformer import DalleTransformer, TransformerConfig
from dalle_zero.pipelines.text_to_image import TextToImagePipeline
from dalle_zero.tokenizers.bpe import BPETokenizer

COLOURS = ["red", "green", "blue", "yellow", "purple"]
SHAPES = ["square", "circle", "triangle", "star", "heart"]
CAPTIONS = [f"a {c} {s}" for c in COLOURS for s in SHAPES]

TEXT_SEQ_LEN = 8
IMAGE_SIZE = 16  # pixels; the dVAE halves twice -> a 4 x 4 token grid
IMAGE_VOCAB = 32


def randomize_(module: nn.Module, seed: int, std: float = 0.3) -> nn.Module:
    """Overwrite every parameter with N(0, std) from ``seed`` (fresh models have zero output heads)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def tiny_tokenizer(text_seq_len: int = TEXT_SEQ_LEN) -> BPETokenizer:
    return BPETokenizer.train(CAPTIONS * 2, vocab_size=300, text_seq_len=text_seq_len)


def tiny_dvae(vocab_size: int = IMAGE_VOCAB, image_size: int = IMAGE_SIZE, seed: int = 1) -> DiscreteVAE:
    config = DVAEConfig(
        image_size=image_size, group_count=3, n_blk_per_group=1, n_hid=8, n_init=8, vocab_size=vocab_size
    )
    torch.manual_seed(seed)
    return DiscreteVAE(config).eval()


def tiny_transformer(
    text_vocab_size: int,
    *,
    text_seq_len: int = TEXT_SEQ_LEN,
    image_grid: int = IMAGE_SIZE // 4,
    image_vocab_size: int = IMAGE_VOCAB,
    attn_pattern: tuple[str, ...] = ("row", "column", "conv"),
    seed: int = 2,
) -> DalleTransformer:
    config = TransformerConfig(
        n_layer=len(attn_pattern),
        n_head=2,
        n_embd=32,
        text_vocab_size=text_vocab_size,
        text_seq_len=text_seq_len,
        image_vocab_size=image_vocab_size,
        image_grid=image_grid,
        attn_pattern=attn_pattern,
        conv_kernel_size=3,
    )
    return randomize_(DalleTransformer(config), seed)


def tiny_clip(text_vocab_size: int, seed: int = 3) -> DalleCLIP:
    config = CLIPConfig(
        text_vocab_size=text_vocab_size,
        text_seq_len=TEXT_SEQ_LEN,
        text_n_layer=1,
        text_n_head=2,
        text_n_embd=16,
        image_size=IMAGE_SIZE,
        image_widths=(8, 16),
        embed_dim=16,
    )
    torch.manual_seed(seed)
    return DalleCLIP(config).eval()


def tiny_pipeline(*, clip: bool = False, tokenizer: BPETokenizer | None = None) -> TextToImagePipeline:
    tok = tokenizer or tiny_tokenizer()
    return TextToImagePipeline(
        tok, tiny_dvae(), tiny_transformer(tok.vocab_size), tiny_clip(tok.vocab_size) if clip else None
    )
