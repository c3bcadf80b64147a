"""What every image–caption dataset shares: the item format, caption lines, image checks, skip counts.

:class:`ImageTextPairs` is the base of :class:`~dalle_zero.data.folder.ImageTextFolder` (a folder of
images with same-stem ``.txt`` captions), :class:`~dalle_zero.data.webdataset.ImageTextShards`
(WebDataset tar shards) and :class:`~dalle_zero.data.manifest.ImageTextManifest` (a CSV/JSONL
manifest). A subclass only says where its samples are and how to open one image; items, seeded
caption choice, transforms, the replacement of images that fail at load time and the one-line report
of what was skipped are the same for all, so every trainer can use any of them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from dalle_zero.config import read_json_file
from dalle_zero.data.transforms import aspect_ratio_ok, pil_to_tensor, to_rgb

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
CHECKS = ("load", "verify", "none")
IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)
# An image larger than this (width x height, read from its header before decoding) is skipped like a
# corrupt one: a 165 kB PNG can claim 144 megapixels and cost a gigabyte and more to decode.
MAX_PIXELS = 1 << 26  # 64 Mpx, e.g. 8192 x 8192
OVERSIZED = "image over the pixel cap"

Transform = Callable[[Image.Image, torch.Generator], torch.Tensor]
ImageSource = str | Path | IO[bytes]  # what ``PIL.Image.open`` accepts


def read_splits(
    path: str | Path, *, missing: str | None = None, error: type[Exception] = ValueError
) -> dict[str, list[str]]:
    """``{split name: [stems]}`` from a ``splits.json`` file; ``missing`` is the message for an absent
    file, ``error`` the exception type for a file that is not JSON or not an object of stem lists."""
    path = Path(path)
    data = read_json_file(path, missing=missing or f"splits file not found: {path}", error=error)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise error(f"{path}: expected an object mapping split names to lists of stems")
    return {str(k): [str(s) for s in v] for k, v in data.items()}


def split_list(
    path: str | Path, split: str, *, missing: str | None = None, error: type[Exception] = ValueError
) -> list[str]:
    """The stems of ``split`` in the splits file ``path``, in file order; a clear error if it has none."""
    splits = read_splits(path, missing=missing, error=error)
    if split not in splits:
        raise error(f"{path} has no split {split!r}; it has {sorted(splits)}")
    return splits[split]


def split_stems(path: Path, split: str) -> set[str]:
    """The stems of ``split`` in the splits file ``path``; a clear error if it has no such split."""
    return set(split_list(path, split))


def wanted_stems(split: str | None, splits_file: str | Path | None, default: Path, owner: str) -> set[str] | None:
    """The stems ``split`` keeps (None: every stem), from ``splits_file`` or else ``default``, a
    ``splits.json`` beside the data; a clear error if a split is asked for and there is none."""
    if split is None:
        return None
    path = Path(splits_file) if splits_file is not None else default
    if splits_file is None and not path.is_file():
        raise FileNotFoundError(f"{owner}: split {split!r} asked for but there is no splits.json")
    return split_stems(path, split)


def caption_lines(text: str) -> list[str]:
    """The non-empty, stripped lines of a caption file (each line is one caption of the image)."""
    return [s for s in (line.strip() for line in text.splitlines()) if s]


def check_max_pixels(max_pixels: int, owner: str) -> int:
    """``max_pixels`` if it is a positive integer, else a ValueError naming ``owner``."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"{owner}: max_pixels must be a positive integer, got {max_pixels!r}")
    return max_pixels


@contextlib.contextmanager
def open_image(source: ImageSource) -> Iterator[Image.Image]:
    """``PIL.Image.open(source)`` without Pillow's decompression-bomb warning: the readers check their own
    pixel cap (:func:`oversized`) from the header and skip what is over it, which says more."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(source)
    with im:
        yield im


def oversized(im: Image.Image, max_pixels: int) -> bool:
    """True if the opened (not yet decoded) image ``im`` has more than ``max_pixels`` pixels."""
    w, h = im.size
    return w * h > max_pixels


def image_problem(
    image: ImageSource, *, check: str, filter_aspect: bool, max_pixels: int = MAX_PIXELS
) -> str | None:
    """Why an image is unusable (``"unreadable image"``, :data:`OVERSIZED`, an aspect ratio outside
    [1/2, 2]), or None.

    ``check="load"`` decodes it fully (catches truncated files that ``verify()`` lets through),
    ``"verify"`` runs PIL's cheaper integrity check, ``"none"`` opens nothing unless ``filter_aspect``.
    The pixel cap is checked from the header, before any decoding (and at load time in any case).
    """
    if check == "none" and not filter_aspect:
        return None
    try:
        with open_image(image) as im:
            size = im.size
            if oversized(im, max_pixels):
                return OVERSIZED
            if check == "load":
                im.load()
            elif check == "verify":
                im.verify()
    except Image.DecompressionBombError:  # Pillow's own cap (twice its MAX_IMAGE_PIXELS), from the header
        return OVERSIZED
    except IMAGE_ERRORS:
        return "unreadable image"
    if filter_aspect and not aspect_ratio_ok(*size):
        return "aspect ratio outside [1/2, 2]"
    return None


class ImageTextPairs(Dataset):
    """Image–caption pairs; subclasses fill ``items`` and say how to open an image.

    Items are ``dict(pixels=FloatTensor[3, H, W] in [0, 1], caption=str, stem=str)``. A key is an index
    or ``(index, sample_seed)``: the seed drives the transform's randomness and the choice among several
    caption lines, so the same key always gives the same item (a plain index uses ``seed + index``).
    ``transform(image, generator)`` is e.g. a :mod:`dalle_zero.data.transforms` transform; without one,
    images are returned at their own size (RGB, alpha composited onto white).

    Subclasses set ``label`` (names the data in messages), ``transform``, ``seed``, ``skipped`` (a
    Counter of reasons), ``max_pixels`` (the pixel cap) and ``items`` (``[(where, caption lines)]``),
    and implement :meth:`_open_image`, :meth:`_stem` and :meth:`_describe` for their ``where``.
    """

    label: str
    transform: Transform | None
    seed: int
    skipped: Counter[str]
    items: list[tuple[Any, list[str]]]
    max_pixels: int = MAX_PIXELS

    def _setup(
        self, label: str, transform: Transform | None, seed: int, check: str, max_pixels: int = MAX_PIXELS
    ) -> None:
        """The fields every reader sets before it indexes; a clear error for an unknown ``check``."""
        if check not in CHECKS:
            raise ValueError(f"{type(self).__name__}: check must be one of {list(CHECKS)}, got {check!r}")
        self.label, self.transform, self.seed = label, transform, seed
        self.max_pixels = check_max_pixels(max_pixels, type(self).__name__)
        self.skipped = Counter()

    def _open_image(self, where: Any) -> ImageSource:
        raise NotImplementedError

    def _stem(self, where: Any) -> str:
        raise NotImplementedError

    def _describe(self, where: Any) -> str:
        raise NotImplementedError

    def _finish_index(self, split: str | None) -> None:
        """Report what was skipped; a clear error if nothing usable is left."""
        if self.skipped:
            self.report_skipped()
        if not self.items:
            where = f" in split {split!r}" if split else ""
            raise ValueError(f"{self.label}: no usable image-caption pairs{where} ({self._skipped_text()})")

    def _skipped_text(self) -> str:
        if not self.skipped:
            return "nothing skipped"
        return "skipped " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))

    def report_skipped(self) -> str:
        """Log and return one line: how many pairs are usable and what was skipped, by reason."""
        text = f"{self.label}: {len(self.items)} pairs, {self._skipped_text()}"
        logger.warning(text) if self.skipped else logger.info(text)
        return text

    @property
    def stems(self) -> list[str]:
        return [self._stem(where) for where, _ in self.items]

    def captions(self, index: int) -> list[str]:
        """Every caption line of item ``index``."""
        return list(self.items[index][1])

    def with_captions(self, choose: Callable[[str, list[str]], list[str]]) -> ImageTextPairs:
        """The same pairs with each image's caption lines replaced by ``choose(stem, lines)``; where
        that leaves none, the image keeps its lines. Keys still pick among the lines kept."""
        view = copy.copy(self)
        view.items = [(where, choose(self._stem(where), lines) or lines) for where, lines in self.items]
        return view

    def with_transform(self, transform: Transform | None) -> ImageTextPairs:
        """The same pairs (the index built once) seen through another ``transform``."""

        view = copy.copy(self)
        view.transform = transform
        return view

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), self.seed + int(key))
        for attempt in range(len(self.items)):
            i = (index + attempt) % len(self.items)
            where, lines = self.items[i]
            try:
                with open_image(self._open_image(where)) as im:
                    if oversized(im, self.max_pixels):  # from the header: nothing decoded yet
                        w, h = im.size
                        raise ValueError(f"{w}x{h} is over the cap of {self.max_pixels:,} pixels")
                    img = to_rgb(im)
                    img.load()
            except IMAGE_ERRORS as e:
                self.skipped["load error"] += 1
                logger.warning("%s: cannot load (%s); using the next image instead", self._describe(where), e)
                continue
            g = torch.Generator().manual_seed(seed)
            caption = lines[int(torch.randint(len(lines), (1,), generator=g))] if len(lines) > 1 else lines[0]
            pixels = self.transform(img, g) if self.transform is not None else pil_to_tensor(img)
            return {"pixels": pixels, "caption": caption, "stem": self._stem(where)}
        raise ValueError(f"{self.label}: no image of the dataset can be loaded any more")
