"""A folder of images with same-stem ``.txt`` captions (the layout img2dataset and ``dalle data emoji`` write).

``root/**/NAME.{png,jpg,jpeg,webp,bmp,gif}`` with ``NAME.txt`` beside it. If ``root/splits.json``
exists (``{"train": [stems], "validation": [...], ...}``), or ``splits_file`` is given, a ``split``
restricts the dataset to those stems. Unusable samples are skipped and counted, never fatal:

- at index time: a missing, empty or unreadable caption, a zero-byte image;
- once at construction (``check="load"``, the default): an image PIL cannot open or decode
  (truncated, random bytes), and with ``filter_aspect`` an aspect ratio outside the paper's [1/2, 2] (§5);
- at load time: an image that fails anyway (changed on disk) is logged, counted and replaced by the
  next good one, so a DataLoader never crashes on it.

``report_skipped()`` says what was skipped and why.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from dalle_zero.config import read_json_file
from dalle_zero.data.transforms import aspect_ratio_ok, pil_to_tensor, to_rgb

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
CHECKS = ("load", "verify", "none")
IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)

Transform = Callable[[Image.Image, torch.Generator], torch.Tensor]


def read_splits(path: str | Path) -> dict[str, list[str]]:
    """``{split name: [stems]}`` from a ``splits.json`` file."""
    path = Path(path)
    data = read_json_file(path, missing=f"splits file not found: {path}")
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path}: expected an object mapping split names to lists of stems")
    return {str(k): [str(s) for s in v] for k, v in data.items()}


class ImageTextFolder(Dataset):
    """Image–caption pairs from a folder.

    Items are ``dict(pixels=FloatTensor[3, H, W] in [0, 1], caption=str, stem=str)``. A key is an index
    or ``(index, sample_seed)``: the seed drives the transform's randomness and the choice among several
    caption lines, so the same key always gives the same item (a plain index uses ``seed + index``).
    ``transform(image, generator)`` is e.g. a :mod:`dalle_zero.data.transforms` transform; without one,
    images are returned at their own size (RGB, alpha composited onto white).
    """

    def __init__(
        self,
        root: str | Path,
        transform: Transform | None = None,
        *,
        split: str | None = None,
        splits_file: str | Path | None = None,
        check: str = "load",
        filter_aspect: bool = False,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder not found: {self.root}")
        if check not in CHECKS:
            raise ValueError(f"ImageTextFolder: check must be one of {list(CHECKS)}, got {check!r}")
        self.transform = transform
        self.seed = seed
        self.skipped: Counter[str] = Counter()
        wanted: set[str] | None = None
        if split is not None:
            path = Path(splits_file) if splits_file is not None else self.root / "splits.json"
            if splits_file is None and not path.is_file():
                raise FileNotFoundError(f"{self.root}: split {split!r} asked for but there is no splits.json")
            splits = read_splits(path)
            if split not in splits:
                raise ValueError(f"{path} has no split {split!r}; it has {sorted(splits)}")
            wanted = set(splits[split])

        self.items: list[tuple[Path, list[str]]] = []  # (image path, caption lines)
        for image in sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            if wanted is not None and image.stem not in wanted:
                continue
            reason, lines = self._check(image, check=check, filter_aspect=filter_aspect)
            if reason is not None:
                self.skipped[reason] += 1
                continue
            self.items.append((image, lines))
        if self.skipped:
            self.report_skipped()
        if not self.items:
            where = f" in split {split!r}" if split else ""
            raise ValueError(f"{self.root}: no usable image-caption pairs{where} ({self._skipped_text()})")

    @staticmethod
    def _check(image: Path, *, check: str, filter_aspect: bool) -> tuple[str | None, list[str]]:
        """(reason to skip or None, caption lines)."""
        caption = image.with_suffix(".txt")
        if not caption.is_file():
            return "no caption file", []
        try:
            lines = [s.strip() for s in caption.read_text(errors="replace").splitlines()]
        except OSError:
            return "unreadable caption", []
        lines = [s for s in lines if s]
        if not lines:
            return "empty caption", []
        if image.stat().st_size == 0:
            return "zero-byte image", []
        if check != "none" or filter_aspect:
            try:
                with Image.open(image) as im:
                    size = im.size
                    if check == "load":
                        im.load()  # decodes fully: catches truncated files that verify() lets through
                    elif check == "verify":
                        im.verify()
            except IMAGE_ERRORS:
                return "unreadable image", []
            if filter_aspect and not aspect_ratio_ok(*size):
                return "aspect ratio outside [1/2, 2]", []
        return None, lines

    def _skipped_text(self) -> str:
        if not self.skipped:
            return "nothing skipped"
        return "skipped " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))

    def report_skipped(self) -> str:
        """Log and return one line: how many pairs are usable and what was skipped, by reason."""
        text = f"{self.root}: {len(self.items)} pairs, {self._skipped_text()}"
        logger.warning(text) if self.skipped else logger.info(text)
        return text

    @property
    def stems(self) -> list[str]:
        return [p.stem for p, _ in self.items]

    def captions(self, index: int) -> list[str]:
        """Every caption line of item ``index``."""
        return list(self.items[index][1])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), self.seed + int(key))
        for attempt in range(len(self.items)):
            i = (index + attempt) % len(self.items)
            path, lines = self.items[i]
            try:
                with Image.open(path) as im:
                    img = to_rgb(im)
                    img.load()
            except IMAGE_ERRORS as e:
                self.skipped["load error"] += 1
                logger.warning("%s: cannot load (%s); using the next image instead", path, e)
                continue
            g = torch.Generator().manual_seed(seed)
            caption = lines[int(torch.randint(len(lines), (1,), generator=g))] if len(lines) > 1 else lines[0]
            pixels = self.transform(img, g) if self.transform is not None else pil_to_tensor(img)
            return {"pixels": pixels, "caption": caption, "stem": path.stem}
        raise ValueError(f"{self.root}: no image of the dataset can be loaded any more")
