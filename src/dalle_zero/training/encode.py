"""Tokenize every image once with the frozen dVAE into token shards, for training the prior (paper §3.5).

The prior trains on these shards and never runs the dVAE. By default images get a plain resize to the
dVAE's ``image_size`` (no augmentation). The paper instead encodes an augmented crop every time it
reads an image (App. B.2, Listing 2: a near-centre square, resized to t in [res, 9/8·res], a random
res×res crop, no flip); ``augment`` K > 1 stores the plain resize and K - 1 such crops of every image
(:class:`ImageViews`), and the prior draws one of the K per epoch and validates on the plain one
(:class:`~dalle_zero.data.tokens.TokenDataset`). The crops of an image come from a generator of their
own, seeded by ``seed`` and the image's stem alone, so the tokens are deterministic either way and do
not depend on the image's caption lines or on which other images are encoded with it. An image that
cannot be loaded any more when it is encoded (it was readable when the folder was indexed) is left out.

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

import torch
from PIL import Image
from tqdm.auto import tqdm

from dalle_zero.data.pairs import ImageTextPairs, read_splits
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

    ``augment`` K > 1 encodes the plain resize and K - 1 Listing-2 crops of every image (seeded by
    ``seed`` and the image's stem) instead of the plain resize alone; ``batch_size`` counts token
    grids, K per image.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if isinstance(augment, bool) or not isinstance(augment, int) or augment < 1:
        raise ValueError(f"--augment must be an integer >= 1 (token grids per image; 1: no crops), got {augment}")
    data = Path(data)
    folder = data_folder(data)
    model_dir = resolve_model_dir(dvae_path)
    dvae = DiscreteVAE.from_pretrained(model_dir, map_location=device).eval()
    dataset = open_image_text_dataset(data, split=split)
    items = encoded_items(
        dvae, dataset, ImageViews(dvae.config.image_size, augment, seed),
        batch_size=batch_size, device=device, progress=progress,
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
        items,
        image_vocab_size=dvae.config.vocab_size,
        shard_size=shard_size,
        dvae={"path": str(model_dir), "config": dvae.config.to_dict()},
        splits=splits,
        metadata={
            "data": str(data),
            "data_split": split,
            "skipped": dict(dataset.skipped),
            **({"augment": {"transform": "prior (Listing 2)", "seed": seed, "crop_0": "resize"}}
               if augment > 1 else {}),
        },
        extra_files=extra,
        crops=augment,
    )


@dataclass(frozen=True)
class ImageViews:
    """What ``dalle encode`` encodes of an image: ``(image, stem) -> [k, 3, res, res]``.

    View 0 is the plain resize (:class:`~dalle_zero.data.transforms.ResizeTransform`, all that
    ``k`` = 1 encodes); views 1 to k - 1 are Listing-2 crops (:class:`~dalle_zero.data.transforms.PriorTransform`)
    from a generator seeded by :func:`stem_crop_seed` of ``seed`` and ``stem``, and by nothing else.
    """

    resolution: int
    k: int = 1
    seed: int = 0

    def __call__(self, image: Image.Image, stem: str) -> torch.Tensor:
        views = [ResizeTransform(resolution=self.resolution)(image)]
        if self.k > 1:
            g = torch.Generator().manual_seed(stem_crop_seed(self.seed, stem))
            crop = PriorTransform(resolution=self.resolution)
            views += [crop(image, g) for _ in range(self.k - 1)]
        return torch.stack(views)


def encoded_items(
    dvae: DiscreteVAE,
    dataset: ImageTextPairs,
    views: ImageViews,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Iterator[tuple[str, list[str], torch.Tensor]]:
    """``(stem, caption lines, codes)`` of every image of ``dataset`` that still loads, for
    :func:`~dalle_zero.data.tokens.write_token_shards`: codes ``[h, w]``, or ``[k, h, w]`` with k views;
    ``batch_size`` counts token grids, ``views.k`` per image."""
    k, size = views.k, views.resolution
    images = dataset.with_transform(_as_loaded)  # the views are made here, from the image and its stem
    stems = dataset.stems
    per_batch = max(1, batch_size // k)  # images per dVAE call
    same = 0  # images whose views all encoded to the same grid
    with torch.inference_mode(), tqdm(total=len(images), unit="img", desc="encode", disable=not progress) as bar:
        for lo in range(0, len(images), per_batch):
            idx = range(lo, min(lo + per_batch, len(images)))
            batch = [(i, images[i]) for i in idx]
            # an image that fails to load now comes back as the next one: leave it out (that one has its own turn)
            batch = [(i, views(b["pixels"], stems[i])) for i, b in batch if b["stem"] == stems[i]]
            if batch:
                pixels = torch.stack([v for _, v in batch]).to(device)  # (B, k, 3, H, W)
                codes = dvae.encode(pixels.flatten(0, 1)).cpu()  # (B·k, h, w)
                codes = codes.view(len(batch), k, *codes.shape[-2:])  # (B, k, h, w)
                for (i, _), c in zip(batch, codes):
                    if k > 1 and bool((c == c[0]).all()):
                        same += 1
                    yield stems[i], dataset.captions(i), (c if k > 1 else c[0])
            bar.update(len(idx))
    if same:  # e.g. images no larger than the dVAE's input: Listing 2 has nothing to crop
        logger.warning(
            "%d of %d images gave %d identical token grids (an image must be larger than %d px to crop)",
            same, len(images), k, size,
        )


def _as_loaded(image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
    return image


def stem_crop_seed(seed: int, stem: str) -> int:
    """The seed of an image's crops: from the run's ``seed`` and the image's ``stem``, not its position
    or its captions, so encoding one split or all images gives an image the same crops."""
    digest = hashlib.blake2b(f"{seed}:{stem}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
