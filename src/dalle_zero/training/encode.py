"""Tokenize every image once with the frozen dVAE into token shards, for training the prior (paper §3.5).

The prior trains on these shards and never runs the dVAE. Images get a plain resize to the dVAE's
``image_size`` (no augmentation), so the tokens are deterministic. The source folder's (for WebDataset
shards, the shards' folder's) ``splits.json`` (restricted to the encoded stems) goes into the token
index and its ``metadata.jsonl`` is copied beside the token shards, so the prior trains on "train" and
validates on the rest. ``dalle encode`` is :func:`encode_folder` on the command line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dalle_zero.data.pairs import read_splits
from dalle_zero.data.sources import data_folder, open_image_text_dataset
from dalle_zero.data.tokens import write_token_shards
from dalle_zero.data.transforms import ResizeTransform
from dalle_zero.io import resolve_model_dir
from dalle_zero.models.dvae import DiscreteVAE


def encode_folder(
    dvae_path: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    batch_size: int = 64,
    split: str | None = None,
    shard_size: int = 10_000,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Encode the images of ``data`` (an image folder or shards; optionally one split) with the dVAE at
    ``dvae_path`` (a run or model folder) into token shards in ``out``; returns ``out``."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    data = Path(data)
    folder = data_folder(data)
    model_dir = resolve_model_dir(dvae_path)
    dvae = DiscreteVAE.from_pretrained(model_dir, map_location=device).eval()
    size = dvae.config.image_size
    dataset = open_image_text_dataset(data, ResizeTransform(resolution=size), split=split)

    def items() -> Iterator[tuple[str, list[str], Any]]:
        with torch.inference_mode(), tqdm(total=len(dataset), unit="img", desc="encode", disable=not progress) as bar:
            for lo in range(0, len(dataset), batch_size):
                idx = range(lo, min(lo + batch_size, len(dataset)))
                batch = [dataset[i] for i in idx]
                pixels = torch.stack([b["pixels"] for b in batch]).to(device)  # (B, 3, H, W) in [0, 1]
                codes = dvae.encode(pixels).cpu()  # (B, h, w)
                for i, b, c in zip(idx, batch, codes):
                    yield b["stem"], dataset.captions(i), c
                bar.update(len(batch))

    splits = None
    if (folder / "splits.json").is_file():
        encoded = set(dataset.stems)
        source_splits = read_splits(folder / "splits.json")
        splits = {name: [s for s in stems if s in encoded] for name, stems in source_splits.items()}
    meta = folder / "metadata.jsonl"
    extra = {"metadata.jsonl": meta.read_text()} if meta.is_file() else {}
    return write_token_shards(
        out,
        items(),
        image_vocab_size=dvae.config.vocab_size,
        shard_size=shard_size,
        dvae={"path": str(model_dir), "config": dvae.config.to_dict()},
        splits=splits,
        metadata={"data": str(data), "data_split": split, "skipped": dict(dataset.skipped)},
        extra_files=extra,
    )
