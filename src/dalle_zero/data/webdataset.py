"""WebDataset tar shards (the img2dataset output format) as a map-style image–caption dataset.

A shard is an uncompressed tar file whose members are grouped by key: ``KEY.jpg`` (or ``.jpeg``,
``.png``, ``.webp``, ``.bmp``, ``.gif``) is the image, ``KEY.txt`` its caption (one caption per line)
and ``KEY.json`` optional metadata, which is not read. As in WebDataset, a member's key is its path up
to the first dot of its file name, and an item's ``stem`` is its key. A shard source is

- a folder holding ``*.tar`` files (img2dataset's output folder),
- a single ``.tar`` file, or
- a brace pattern such as ``shards/{00000..00009}.tar`` or ``shards/{00000,00007}.tar``.

:class:`ImageTextShards` indexes every shard once, at construction (with :mod:`tarfile`: the byte
range of each image and the caption lines, kept in memory), and reads a sample by seeking into its
shard. Being a map-style dataset, it works with the resumable sampler, step-exact resume and the split
of every batch across DDP ranks and DataLoader workers exactly as
:class:`~dalle_zero.data.folder.ImageTextFolder` does, whose items, checks and skip counts it shares
(:mod:`dalle_zero.data.pairs`). Only uncompressed tar files can be read by seeking (img2dataset
writes them uncompressed).

Splits: a ``splits.json`` in the folder holding the shards restricts a ``split`` to its stems (keys),
as in an image folder; without one, the whole shard set is the train split.

Unusable samples are skipped and counted, never fatal, as in the image folder: a key without an
image ("no image file") or without a caption, an empty caption, a zero-byte or undecodable image, an
image of more than ``max_pixels`` pixels (from its header, before decoding), and a caption or image
member larger than ``max_member_bytes`` (from its tar header, before reading it: "oversized member";
default :data:`MAX_MEMBER_BYTES`). A
tar file that is truncated or corrupt keeps the samples stored before the damage, counts once as a
"damaged shard" and is named, with what is wrong, in a warning and in :meth:`~ImageTextShards.report_skipped`.

:func:`~dalle_zero.data.shard_writer.write_shards` converts an image folder into shards (``dalle data shards``).
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
from pathlib import Path
from typing import NamedTuple

from dalle_zero.data.pairs import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ImageTextPairs,
    Transform,
    caption_lines,
    image_problem,
    wanted_stems,
)

logger = logging.getLogger(__name__)

SHARD_SUFFIX = ".tar"
IMAGE_EXTENSIONS = tuple(s.removeprefix(".") for s in IMAGE_SUFFIXES)  # member extensions, preferred first
BLOCK = tarfile.BLOCKSIZE
# A caption or image member larger than this is skipped, from its tar header, without reading it (a
# 3 GiB member used to be read whole at index time). The largest 64 Mpx image (the pixel cap) stored
# as an uncompressed BMP is 192 MiB.
MAX_MEMBER_BYTES = 256 << 20
OVERSIZED_MEMBER = "oversized member"

_BRACE_GROUP = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))


# ---------------------------------------------------------------------------------------------
# where the shards are


def expand_braces(pattern: str) -> list[str]:
    """Every name a brace pattern stands for, in order, as the shell and WebDataset expand it.

    ``{3..5}`` is a range of integers (``{00000..00009}``: zero-padded to the width of its ends),
    ``{a,b}`` a list of alternatives; several groups multiply; braces holding neither stay as they are.
    """
    m = _BRACE_GROUP.search(pattern)
    if m is None:
        if "{" in pattern or "}" in pattern:
            raise ValueError(f"unbalanced braces in {pattern!r}")
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    if "{" in head or "}" in head:
        raise ValueError(f"nested braces are not supported: {pattern!r}")
    if r := _RANGE.fullmatch(body):
        ends = r.group(1), r.group(2)
        lo, hi = int(ends[0]), int(ends[1])
        padded = any(len(e.lstrip("-")) > 1 and e.lstrip("-").startswith("0") for e in ends)
        width = max(len(e) for e in ends) if padded else 0
        step = 1 if hi >= lo else -1
        values = [f"{v:0{width}d}" for v in range(lo, hi + step, step)]
    elif "," in body:
        values = body.split(",")
    else:
        values = ["{" + body + "}"]
    rest = expand_braces(tail)
    return [head + v + t for v in values for t in rest]


def is_brace_pattern(text: str) -> bool:
    """True if ``text`` holds a brace group that expands (``{0..9}`` or ``{a,b}``)."""
    return any(_RANGE.fullmatch(body) or "," in body for body in _BRACE_GROUP.findall(text))


def _tar_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == SHARD_SUFFIX and p.is_file())


def is_shard_source(data: str | Path) -> bool:
    """True if ``data`` names tar shards: a brace pattern, a ``.tar`` path, or a folder with ``.tar``
    files and no images (a folder with images is an image folder, whatever else it holds)."""
    text = str(data)
    if is_brace_pattern(text):
        return True
    path = Path(text)
    if path.suffix.lower() == SHARD_SUFFIX:
        return True
    if not path.is_dir() or not _tar_files(path):
        return False
    return not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*"))


def shard_paths(source: str | Path) -> list[Path]:
    """The tar files of ``source``: a folder's ``*.tar`` by name, one ``.tar``, or a brace pattern's
    expansion in order. A missing shard is an error naming it."""
    text = str(source)
    if is_brace_pattern(text):
        paths = list(dict.fromkeys(Path(p) for p in expand_braces(text)))
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"shard not found: {p} (from {text})")
        return paths
    path = Path(text)
    if path.is_dir():
        paths = _tar_files(path)
        if not paths:
            raise FileNotFoundError(f"{path}: no .tar shards in this folder")
        return paths
    if not path.is_file():
        raise FileNotFoundError(f"shard not found: {path}")
    return [path]


def shard_folder(source: str | Path) -> Path:
    """The folder holding the shards of ``source`` (where their ``splits.json`` would be)."""
    path = Path(str(source))
    if not is_brace_pattern(str(source)) and path.is_dir():
        return path
    path = path.parent
    while is_brace_pattern(str(path)) and path != path.parent:
        path = path.parent
    return path


# ---------------------------------------------------------------------------------------------
# reading


class Member(NamedTuple):
    """The byte range of one tar member's data."""

    offset: int
    size: int


class ShardSample(NamedTuple):
    """Where a sample's image is: its shard, its key and the image's byte range in the tar file."""

    shard: Path
    key: str
    offset: int
    size: int


def member_key(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a tar member name, WebDataset's way: the key is the path up to the
    first dot of the file name, the extension the rest (lower-cased); None for names without either."""
    folder, _, base = name.removeprefix("./").rpartition("/")
    stem, dot, ext = base.partition(".")
    if not stem or not dot or not ext:
        return None
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def read_shard_members(path: str | Path) -> tuple[dict[str, dict[str, Member]], str | None]:
    """``({key: {extension: Member}}, damage)`` of one tar file, keys in archive order.

    ``damage`` says what is wrong with a truncated or corrupt file, None if it is sound. The members
    found before the damage are returned, every one of them wholly inside the file.
    """
    path = Path(path)
    groups: dict[str, dict[str, Member]] = {}
    try:
        file_size = path.stat().st_size
        end = 0  # where the end-of-archive marker must be
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if info.offset_data + info.size > file_size:
                    return groups, f"unexpected end of data in {info.name}"
                end = info.offset_data + -(-info.size // BLOCK) * BLOCK
                named = member_key(info.name) if info.isfile() else None
                if named is not None:
                    groups.setdefault(named[0], {}).setdefault(named[1], Member(info.offset_data, info.size))
        with open(path, "rb") as f:
            f.seek(end)
            marker = f.read(BLOCK)
    except (tarfile.TarError, OSError) as e:
        return groups, (None if groups else _compression(path)) or str(e) or type(e).__name__
    if len(marker) < BLOCK:
        return groups, "truncated: no end-of-archive marker"
    if marker != bytes(BLOCK):
        return groups, f"unreadable tar header at byte {end}"
    return groups, None


def _compression(path: Path) -> str | None:
    """Why a file that is no tar cannot be read, if it is a compressed one."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    kind = next((k for m, k in _COMPRESSED if head.startswith(m)), None)
    return None if kind is None else f"{kind}-compressed; only uncompressed tar files can be read by seeking"


def _read(f: io.BufferedReader, member: Member) -> bytes:
    f.seek(member.offset)
    data = f.read(member.size)
    if len(data) != member.size:
        raise OSError("unexpected end of data")
    return data


class ImageTextShards(ImageTextPairs):
    """Image–caption pairs from WebDataset tar shards; items as :class:`~dalle_zero.data.folder.ImageTextFolder`'s.

    ``source`` is a folder of ``.tar`` files, one ``.tar`` file or a brace pattern. ``split``,
    ``splits_file``, ``check``, ``filter_aspect``, ``seed`` and ``max_pixels`` mean what they mean for
    the image folder, except that without a ``splits.json`` the shards are all the "train" split (any
    other split is an error). A caption or image member over ``max_member_bytes`` is skipped unread.
    ``damaged`` lists ``(shard, what is wrong)`` for every truncated or corrupt tar file.
    """

    def __init__(
        self,
        source: str | Path,
        transform: Transform | None = None,
        *,
        split: str | None = None,
        splits_file: str | Path | None = None,
        check: str = "load",
        filter_aspect: bool = False,
        seed: int = 0,
        max_pixels: int = MAX_PIXELS,
        max_member_bytes: int = MAX_MEMBER_BYTES,
    ) -> None:
        self.source = str(source)
        self._setup(self.source, transform, seed, check, max_pixels)
        if isinstance(max_member_bytes, bool) or not isinstance(max_member_bytes, int) or max_member_bytes < 1:
            raise ValueError(f"ImageTextShards: max_member_bytes must be a positive integer, got {max_member_bytes!r}")
        self.max_member_bytes = max_member_bytes
        self.shards = shard_paths(source)
        self.damaged: list[tuple[Path, str]] = []
        wanted = self._split_stems(split, splits_file)

        self.items: list[tuple[ShardSample, list[str]]] = []  # (image location, caption lines)
        for shard in self.shards:
            groups, damage = read_shard_members(shard)
            if damage is not None:
                self.damaged.append((shard, damage))
                self.skipped["damaged shard"] += 1
                logger.warning(
                    "%s: damaged tar file (%s); reading the %d keys before the damage", shard, damage, len(groups)
                )
            if wanted is not None:
                groups = {k: v for k, v in groups.items() if k in wanted}
            if groups:
                self._index(shard, groups, check=check, filter_aspect=filter_aspect)
        self._finish_index(split)

    def _split_stems(self, split: str | None, splits_file: str | Path | None) -> set[str] | None:
        default = shard_folder(self.source) / "splits.json"
        if split is not None and splits_file is None and not default.is_file():  # no splits: all is "train"
            if split == "train":
                return None
            raise ValueError(
                f"{self.source}: no split {split!r}: shards without a splits.json beside them are all the train split"
            )
        return wanted_stems(split, splits_file, default, self.source)

    def _index(self, shard: Path, groups: dict[str, dict[str, Member]], *, check: str, filter_aspect: bool) -> None:
        with open(shard, "rb") as f:
            for key, members in groups.items():
                reason, lines, image = self._check(
                    f, members, check=check, filter_aspect=filter_aspect,
                    max_pixels=self.max_pixels, max_member_bytes=self.max_member_bytes,
                )
                if reason is not None:
                    self.skipped[reason] += 1
                    continue
                assert image is not None
                self.items.append((ShardSample(shard, key, image.offset, image.size), lines))

    @staticmethod
    def _check(
        f: io.BufferedReader,
        members: dict[str, Member],
        *,
        check: str,
        filter_aspect: bool,
        max_pixels: int = MAX_PIXELS,
        max_member_bytes: int = MAX_MEMBER_BYTES,
    ) -> tuple[str | None, list[str], Member | None]:
        """(reason to skip or None, caption lines, the image member), the image folder's checks in its order."""
        ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
        if ext is None:
            return "no image file", [], None
        if "txt" not in members:
            return "no caption file", [], None
        if members["txt"].size > max_member_bytes or members[ext].size > max_member_bytes:
            return OVERSIZED_MEMBER, [], None  # from the tar headers: nothing read
        try:
            lines = caption_lines(_read(f, members["txt"]).decode("utf-8", errors="replace"))
        except OSError:
            return "unreadable caption", [], None
        if not lines:
            return "empty caption", [], None
        image = members[ext]
        if image.size == 0:
            return "zero-byte image", [], None
        if check != "none" or filter_aspect:
            try:
                data = _read(f, image)
            except OSError:
                return "unreadable image", [], None
            reason = image_problem(io.BytesIO(data), check=check, filter_aspect=filter_aspect, max_pixels=max_pixels)
            if reason is not None:
                return reason, [], None
        return None, lines, image

    def _skipped_text(self) -> str:
        text = super()._skipped_text()
        if self.damaged:
            named = ", ".join(f"{p} ({why})" for p, why in self.damaged[:3])
            more = f" and {len(self.damaged) - 3} more" if len(self.damaged) > 3 else ""
            text += f"; damaged: {named}{more}"
        return text

    def _open_image(self, where: ShardSample) -> io.BytesIO:
        with open(where.shard, "rb") as f:
            return io.BytesIO(_read(f, Member(where.offset, where.size)))

    def _stem(self, where: ShardSample) -> str:
        return where.key

    def _describe(self, where: ShardSample) -> str:
        return f"{where.shard}:{where.key}"

