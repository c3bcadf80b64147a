"""Tokenize every image once with the frozen dVAE into token shards, for training the prior (paper §3.5).

The prior trains on these shards and never runs the dVAE. By default images get a plain resize to the
dVAE's ``image_size`` (no augmentation). The paper instead encodes an augmented crop every time it
reads an image (App. B.2, Listing 2: a near-centre square, resized to t in [res, 9/8·res], a random
res×res crop, no flip); ``augment`` K > 1 stores K such crops of every image, and the prior draws one
of them per epoch (:class:`~dalle_zero.data.tokens.TokenDataset`). The crops of an image are seeded by
``seed`` and its stem, so the tokens are deterministic either way and do not depend on which other
images are encoded with it.

The source folder's (for WebDataset shards, the shards' folder's) ``splits.json`` (restricted to the
encoded stems) goes into the token index and its ``metadata.jsonl`` is copied beside the token shards,
so the prior trains on "train" and validates on the rest. ``dalle encode`` is :func:`encode_folder` on the command line.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dalle_zero.data.pairs import read_splits
from dalle_zero.data.sources import data_folder, open_image_text_dataset
from dalle_zero.data.tokens import write_token_shards
from dalle_zero.data.transforms import PriorTransform, ResizeTransform
from dalle_zero.io import resolve_model_dir
from dalle_zero.models.dvae import DiscreteVAE

logger = logging.getLogger(__name__)


def encode_folder(
    dvae_path: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    batch_size: int = 64,
    split: str | None = None,
    shard_size: int = 10_000,
    device: str | torch.device = "cpu",
    progress: bool = True,
    augment: int = 1,
    seed: int = 0,
) -> Path:
    """Encode the images of ``data`` (an image folder or shards; optionally one split) with the dVAE at
    ``dvae_path`` (a run or model folder) into token shards in ``out``; returns ``out``.

    ``augment`` K > 1 encodes K Listing-2 crops of every image (seeded by ``seed`` and the image's
    stem) instead of one plain resize; ``batch_size`` counts token grids, K per image.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if isinstance(augment, bool) or not isinstance(augment, int) or augment < 1:
        raise ValueError(f"--augment must be an integer >= 1 (token grids per image; 1: no crops), got {augment}")
    data = Path(data)
    folder = data_folder(data)
    model_dir = resolve_model_dir(dvae_path)
    dvae = DiscreteVAE.from_pretrained(model_dir, map_location=device).eval()
    size = dvae.config.image_size
    transform = ResizeTransform(resolution=size) if augment == 1 else Crops(PriorTransform(resolution=size), augment)
    dataset = open_image_text_dataset(data, transform, split=split)
    image_stems = dataset.stems
    per_batch = max(1, batch_size // augment)  # images per dVAE call

    def key(i: int) -> int | tuple[int, int]:
        return i if augment == 1 else (i, crop_seed(seed, image_stems[i]))

    def items() -> Iterator[tuple[str, list[str], Any]]:
        same = 0  # images whose crops all encoded to the same grid
        with torch.inference_mode(), tqdm(total=len(dataset), unit="img", desc="encode", disable=not progress) as bar:
            for lo in range(0, len(dataset), per_batch):
                idx = range(lo, min(lo + per_batch, len(dataset)))
                batch = [dataset[key(i)] for i in idx]
                pixels = torch.stack([b["pixels"] for b in batch]).to(device)  # (B, 3, H, W) or (B, K, 3, H, W)
                codes = dvae.encode(pixels.flatten(0, pixels.dim() - 4)).cpu()  # (B·K, h, w)
                codes = codes.view(len(batch), *pixels.shape[1:-3], *codes.shape[-2:])  # (B, h, w) or (B, K, h, w)
                for i, b, c in zip(idx, batch, codes):
                    if augment > 1 and bool((c == c[0]).all()):
                        same += 1
                    yield b["stem"], dataset.captions(i), c
                bar.update(len(batch))
        if same:  # e.g. images no larger than the dVAE's input: Listing 2 has nothing to crop
            logger.warning(
                "%d of %d images gave %d identical token grids (an image must be larger than %d px to crop)",
                same, len(dataset), augment, size,
            )

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
        metadata={
            "data": str(data),
            "data_split": split,
            "skipped": dict(dataset.skipped),
            **({"augment": {"transform": "prior (Listing 2)", "seed": seed}} if augment > 1 else {}),
        },
        extra_files=extra,
        crops=augment,
    )


@dataclass(frozen=True)
class Crops:
    """``k`` draws of ``transform`` from one generator: ``(image, generator) -> [k, 3, res, res]``."""

    transform: PriorTransform
    k: int

    def __call__(self, image: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.stack([self.transform(image, generator) for _ in range(self.k)])


def crop_seed(seed: int, stem: str) -> int:
    """The seed of an image's crops: from the run's ``seed`` and the image's ``stem``, not its position,
    so encoding one split or all images gives an image the same crops."""
    digest = hashlib.blake2b(f"{seed}:{stem}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
