"""Tiny image folders (and the same pairs through every reader), and the captions that a run of the
resumable sampler draws from a dataset."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dalle_zero.data.folder import ImageTextFolder
from dalle_zero.data.manifest import ImageTextManifest
from dalle_zero.data.shard_writer import write_shards
from dalle_zero.data.tokens import TokenDataset, write_token_shards
from dalle_zero.data.webdataset import ImageTextShards
from dalle_zero.models.dvae import DiscreteVAE, DVAEConfig
from dalle_zero.training.sampler import ResumableBatchSampler, SampleKey

READERS = ("folder", "shards", "manifest", "tokens")


def write_image(path: Path, size=(20, 16), colour=(200, 30, 30), mode="RGB", fmt="PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)


def tiny_dvae(folder: Path) -> Path:
    """A run folder ``folder/dvae_run`` holding a tiny untrained dVAE (16 px images, 8×8 grid of 32 codes)."""
    torch.manual_seed(0)
    config = DVAEConfig(image_size=16, group_count=2, n_blk_per_group=1, n_hid=8, n_init=8, vocab_size=32)
    run = folder / "dvae_run"
    DiscreteVAE(config).save_pretrained(run / "model")
    return run


def good_folder(root: Path, n: int = 4) -> Path:
    """``n`` plain images ``img{i}.png``, each with one caption."""
    for i in range(n):
        write_image(root / f"img{i}.png", colour=(i * 50, 100, 200))
        (root / f"img{i}.txt").write_text(f"picture number {i}\n")
    return root


def noise_folder(root: Path, n: int = 6) -> Path:
    """``n`` random-noise images in several formats (one RGBA, one JPEG), some with several caption lines."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        if i == 3:
            Image.fromarray(pixels).save(root / f"img{i}.jpg")
        elif i == 4:
            alpha = rng.integers(0, 255, (20, 24, 1), dtype=np.uint8)
            Image.fromarray(np.concatenate([pixels, alpha], axis=2)).save(root / f"img{i}.png")  # RGBA
        else:
            Image.fromarray(pixels).save(root / f"img{i}.png")
        caption = f"noise number {i}\n" if i % 2 else f"noise {i}\nanother caption of {i}\n\n"
        (root / f"img{i}.txt").write_text(caption)
    return root


def caption_folder(root: Path, captions: dict[str, list[str]]) -> Path:
    """A folder of images ``<stem>.png`` with ``<stem>.txt`` holding the stem's captions, one a line."""
    for i, (stem, lines) in enumerate(captions.items()):
        write_image(root / f"{stem}.png", colour=(i * 20 % 256, 100, 200))
        (root / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return root


def write_jsonl_manifest(folder: Path, path: Path) -> Path:
    """A JSONL manifest ``path`` listing the images of ``folder`` (absolute paths) with their caption lists."""
    pairs = ImageTextFolder(folder, check="none")
    rows = [{"image": str(image.resolve()), "caption": lines} for image, lines in pairs.items]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def open_reader(kind: str, folder: Path, work: Path, **kw: Any) -> Any:
    """The pairs of the image folder ``folder`` read by reader ``kind`` (one of :data:`READERS`): the
    folder itself, WebDataset shards written from it, a JSONL manifest listing its images with their
    caption lists, or token shards of its captions (with all-zero codes); ``work`` is an empty folder
    for the converted data, ``kw`` go to the reader."""
    if kind == "folder":
        return ImageTextFolder(folder, **kw)
    if kind == "shards":
        write_shards(folder, work / "shards")
        return ImageTextShards(work / "shards", **kw)
    if kind == "manifest":
        return ImageTextManifest(write_jsonl_manifest(folder, work / "pairs.jsonl"), **kw)
    if kind == "tokens":
        pairs = ImageTextFolder(folder, check="none")
        items = [(stem, pairs.captions(i), torch.zeros(2, 2, dtype=torch.long)) for i, stem in enumerate(pairs.stems)]
        write_token_shards(work / "tokens", items, image_vocab_size=4, shard_size=3)
        return TokenDataset(work / "tokens", **kw)
    raise ValueError(f"unknown reader {kind!r}; choose from {list(READERS)}")


def sampler_batches(n: int, batch_size: int, *, seed: int, start: int = 0, count: int) -> list[list[SampleKey]]:
    """``count`` micro-batches of keys of a :class:`ResumableBatchSampler` started at micro-batch ``start``."""
    sampler = ResumableBatchSampler(n, batch_size, seed=seed, start=start)
    return list(itertools.islice(iter(sampler), count))


def drawn_captions(dataset: Any, batches: Iterable[list[SampleKey]]) -> list[list[tuple[str, str]]]:
    """``(stem, caption)`` of every key of every batch, as a training loop would read them."""
    out = []
    for batch in batches:
        items = [dataset[key] for key in batch]
        out.append([(item["stem"], item["caption"]) for item in items])
    return out


def two_colour_folder(root: Path, n: int = 12, size: int = 20) -> Path:
    """``n`` images split into two flat colours, captioned "picture {i}", 9 in train, the rest in validation."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    stems = []
    for i in range(n):
        colours = rng.integers(0, 256, (2, 3), dtype=np.uint8)
        img = np.empty((size, size, 3), dtype=np.uint8)
        img[:, : size // 2], img[:, size // 2 :] = colours[0], colours[1]
        stem = f"img_{i:02d}"
        Image.fromarray(img).save(root / "images" / f"{stem}.png")
        (root / "images" / f"{stem}.txt").write_text(f"picture {i}\n")
        stems.append(stem)
    splits = {"train": stems[:9], "validation": stems[9:]}
    (root / "splits.json").write_text(json.dumps(splits))
    return root
