"""A folder of images with same-stem ``.txt`` captions (the layout img2dataset and ``dalle data emoji`` write).

``root/**/NAME.{png,jpg,jpeg,webp,bmp,gif}`` with ``NAME.txt`` beside it (UTF-8, one caption a line).
If ``root/splits.json`` exists (``{"train": [stems], "validation": [...], ...}``), or ``splits_file``
is given, a ``split`` restricts the dataset to those stems. Unusable samples are skipped and counted, never fatal:

- at index time: a missing, empty or unreadable caption, a zero-byte image;
- once at construction (``check="load"``, the default): an image PIL cannot open or decode
  (truncated, random bytes), an image of more than ``max_pixels`` pixels (read from its header, before
  decoding; default :data:`~dalle_zero.data.pairs.MAX_PIXELS`), and with ``filter_aspect`` an aspect
  ratio outside the paper's [1/2, 2] (§5);
- at load time: an image that fails anyway (changed on disk) is logged, counted and replaced by the
  next good one, so a DataLoader never crashes on it.

``report_skipped()`` says what was skipped and why. Items, keys and reports are those of
:class:`~dalle_zero.data.pairs.ImageTextPairs`, shared with the WebDataset shards reader.
"""

from __future__ import annotations

from pathlib import Path

from dalle_zero.data.pairs import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ImageTextPairs,
    Transform,
    caption_lines,
    image_problem,
    read_splits,
    wanted_stems,
)

__all__ = ["IMAGE_SUFFIXES", "ImageTextFolder", "read_splits"]


class ImageTextFolder(ImageTextPairs):
    """Image–caption pairs from a folder; items and keys as described in :class:`ImageTextPairs`."""

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
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder not found: {self.root}")
        self._setup(str(self.root), transform, seed, check, max_pixels)
        wanted = wanted_stems(split, splits_file, self.root / "splits.json", str(self.root))

        self.items: list[tuple[Path, list[str]]] = []  # (image path, caption lines)
        for image in sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            if wanted is not None and image.stem not in wanted:
                continue
            reason, lines = self._check(image, check=check, filter_aspect=filter_aspect, max_pixels=self.max_pixels)
            if reason is not None:
                self.skipped[reason] += 1
                continue
            self.items.append((image, lines))
        self._finish_index(split)

    @staticmethod
    def _check(
        image: Path, *, check: str, filter_aspect: bool, max_pixels: int = MAX_PIXELS
    ) -> tuple[str | None, list[str]]:
        """(reason to skip or None, caption lines)."""
        caption = image.with_suffix(".txt")
        if not caption.is_file():
            return "no caption file", []
        try:
            lines = caption_lines(caption.read_text(encoding="utf-8", errors="replace"))  # not the locale's
        except OSError:
            return "unreadable caption", []
        if not lines:
            return "empty caption", []
        if image.stat().st_size == 0:
            return "zero-byte image", []
        return image_problem(image, check=check, filter_aspect=filter_aspect, max_pixels=max_pixels), lines

    def _open_image(self, where: Path) -> Path:
        return where

    def _stem(self, where: Path) -> str:
        return where.stem

    def _describe(self, where: Path) -> str:
        return str(where)
