"""Tiny real token shards, tokenizer and prior train config: captions "a <colour> <shape>" whose image
codes follow from the words, so a two-layer prior learns them in a few steps."""

from __future__ import annotations

from pathlib import Path

import torch

from dalle_zero.data.tokens import write_token_shards
from dalle_zero.models.transformer import DalleTransformer, TransformerConfig
from dalle_zero.tokenizers.bpe import BPETokenizer
from dalle_zero.training.loop import LoopConfig, train
from dalle_zero.training.prior import PriorTask, PriorTrainConfig, build_model

TEXT_SEQ_LEN = 12
GRID, IMAGE_VOCAB = 4, 16
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "star")


def examples() -> list[tuple[str, torch.Tensor]]:
    """Captions "a <colour> <shape>" whose image codes follow from the words (so they can be learnt)."""
    out = []
    for i, colour in enumerate(COLOURS):
        for j, shape in enumerate(SHAPES):
            codes = torch.tensor([(i * 4 + j + k * (k % 2)) % IMAGE_VOCAB for k in range(GRID * GRID)])
            out.append((f"a {colour} {shape}", codes))
    return out


def write_tiny_shards(root: Path) -> Path:
    """Train (12 x 2 captions) and validation (12) items written with the real shard writer."""
    ex = examples()
    train = [(f"t{k}_{i}", c, x.view(GRID, GRID)) for k in range(2) for i, (c, x) in enumerate(ex)]
    val = [(f"v{i}", c, x.view(GRID, GRID)) for i, (c, x) in enumerate(ex)]
    splits = {"train": [s for s, _, _ in train], "validation": [s for s, _, _ in val]}
    return write_token_shards(
        root, train + val, image_grid=GRID, image_vocab_size=IMAGE_VOCAB, splits=splits, shard_size=10
    )


def make_tokenizer(folder: Path, *, text_seq_len: int) -> Path:
    captions = [c for c, _ in examples()] * 3
    BPETokenizer.train(captions, vocab_size=300, text_seq_len=text_seq_len, min_frequency=1).save_pretrained(
        folder
    )
    return folder


def prior_config(data, **kw) -> PriorTrainConfig:
    tokens, tok_dir = data
    tok = BPETokenizer.from_pretrained(tok_dir)
    model = TransformerConfig(
        n_layer=2,
        n_head=2,
        n_embd=32,
        text_vocab_size=tok.vocab_size,
        text_seq_len=TEXT_SEQ_LEN,
        image_vocab_size=IMAGE_VOCAB,
        image_grid=GRID,
    )
    loop = LoopConfig(
        **{
            "steps": 12,
            "batch_size": 8,
            "checkpoint_every": 5,
            "log_every": 1,
            "ema_decay": 0.9,
            "ema_every": 2,
            "clip_grad_norm": 4.0,
            **kw.pop("loop", {}),
        }
    )
    fields = {
        "model": model,
        "loop": loop,
        "tokens": str(tokens),
        "tokenizer": str(tok_dir),
        "lr": 3e-3,
        "warmup_steps": 2,
        "plateau_patience": 3,
        "plateau_threshold": 0.2,
        "plateau_smoothing": 0.0,
        "bpe_dropout": 0.5,
        "null_caption_prob": 0.3,
        "eval_samples": 8,
        **kw,
    }
    return PriorTrainConfig(**fields)


def train_prior(cfg: PriorTrainConfig, run_dir: Path, **kw) -> tuple[DalleTransformer, PriorTask]:
    """A real training run of ``cfg`` in ``run_dir`` (``kw``: ``train``'s resume / stop_after ...)."""
    model = build_model(cfg)
    task = PriorTask(cfg)
    train(model, task, cfg.loop, run_dir, train_config=cfg, progress=False, **kw)
    return model, task


def train_prior_argv(data: tuple[Path, Path], out: Path, config: str) -> list[str]:
    """``dalle train prior`` arguments for the tiny shards and tokenizer ``data`` and a preset."""
    tokens, tok_dir = data
    paths = ["--tokens", str(tokens), "--tokenizer", str(tok_dir), "--out", str(out)]
    return ["train", "prior", *paths, "--config", config]
