"""A CSV or JSONL manifest of ``image,caption`` rows as an image–caption dataset.

- ``.csv``: a header row naming at least the columns ``image`` and ``caption`` (others are ignored);
- ``.jsonl``: one JSON object per line with ``image`` and ``caption`` (a string, or a list of strings:
  several captions of one image).

``image`` is a path, relative to the manifest's folder unless absolute. A caption may hold several
lines; each non-empty line is one caption, as in a ``.txt`` caption file. An optional ``key`` column
names the sample (its ``stem``; default: the image file's stem), which a ``splits.json`` beside the
manifest (or ``splits_file``) uses to restrict a ``split``, as for an image folder.

Unusable rows are skipped and counted, never fatal: a row that is not valid JSON or lacks a field
("bad row"), an empty caption, a missing or zero-byte image file, an image PIL cannot decode (with
``check="load"``), an image of more than ``max_pixels`` pixels (from its header, before decoding), and
with ``filter_aspect`` an aspect ratio outside the paper's [1/2, 2]. A
manifest without the ``image`` and ``caption`` columns is a one-line error naming the file. Items,
keys and the report are those of :class:`~dalle_zero.data.pairs.ImageTextPairs`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dalle_zero.data.pairs import (
    MAX_PIXELS,
    ImageTextPairs,
    Transform,
    caption_lines,
    image_problem,
    wanted_stems,
)
from dalle_zero.errors import DataError

MANIFEST_SUFFIXES = (".csv", ".jsonl")


def is_manifest(data: str | Path) -> bool:
    """True if ``data`` names a manifest file (``.csv`` or ``.jsonl``)."""
    return Path(str(data)).suffix.lower() in MANIFEST_SUFFIXES


class ImageTextManifest(ImageTextPairs):
    """Image–caption pairs listed in a CSV or JSONL manifest; see the module docstring."""

    def __init__(
        self,
        path: str | Path,
        transform: Transform | None = None,
        *,
        split: str | None = None,
        splits_file: str | Path | None = None,
        check: str = "load",
        filter_aspect: bool = False,
        seed: int = 0,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest not found: {self.path}")
        if not is_manifest(self.path):
            raise ValueError(f"{self.path}: a manifest must be a .csv or .jsonl file")
        self._setup(str(self.path), transform, seed, check, max_pixels)
        wanted = wanted_stems(split, splits_file, self.path.parent / "splits.json", str(self.path))

        self.items: list[tuple[tuple[Path, str], list[str]]] = []  # ((image path, key), caption lines)
        for row in self._rows():
            if row is None:
                self.skipped["bad row"] += 1
                continue
            image, captions, key = row
            if wanted is not None and key not in wanted:
                continue
            reason = self._check(image, captions, check=check, filter_aspect=filter_aspect, max_pixels=self.max_pixels)
            if reason is not None:
                self.skipped[reason] += 1
                continue
            self.items.append(((image, key), captions))
        self._finish_index(split)

    def _rows(self) -> Iterator[tuple[Path, list[str], str] | None]:
        """``(image path, caption lines, key)`` per row, or None for a row without its fields."""
        folder = self.path.parent
        for record in self._records():
            if not isinstance(record, dict):
                yield None
                continue
            image, caption = record.get("image"), record.get("caption")
            if not isinstance(image, str) or not image.strip():
                yield None
                continue
            if isinstance(caption, list) and all(isinstance(c, str) for c in caption):
                caption = "\n".join(caption)
            if not isinstance(caption, str):
                yield None
                continue
            path = Path(image.strip())
            path = path if path.is_absolute() else folder / path
            key = record.get("key")
            key = str(key).strip() if key is not None and str(key).strip() else path.stem
            yield path, caption_lines(caption), key

    def _records(self) -> Iterator[Any]:
        text = self.path.read_text(encoding="utf-8", errors="replace")
        if self.path.suffix.lower() == ".csv":
            reader = csv.DictReader(io.StringIO(text, newline=""))  # a quoted caption may span lines
            missing = [c for c in ("image", "caption") if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{self.path}: no {' or '.join(repr(c) for c in missing)} column in the header "
                                f"(it has {reader.fieldnames or []})")
            yield from reader
            return
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                yield None

    @staticmethod
    def _check(
        image: Path, captions: list[str], *, check: str, filter_aspect: bool, max_pixels: int = MAX_PIXELS
    ) -> str | None:
        if not captions:
            return "empty caption"
        if not image.is_file():
            return "missing image file"
        if image.stat().st_size == 0:
            return "zero-byte image"
        return image_problem(image, check=check, filter_aspect=filter_aspect, max_pixels=max_pixels)

    def _open_image(self, where: tuple[Path, str]) -> Path:
        return where[0]

    def _stem(self, where: tuple[Path, str]) -> str:
        return where[1]

    def _describe(self, where: tuple[Path, str]) -> str:
        return f"{where[0]} ({self.path})"
