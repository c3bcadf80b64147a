"""Pre-encoded token shards: the prior's training data (paper §3.5: tokens from the frozen dVAE).

``dalle encode`` tokenizes every image once with the frozen dVAE, so stage 2 never runs the dVAE
encoder in its loop. A token folder holds::

    index.json               format, grid [h, w], image_vocab_size, count, shards, dvae, splits
                             (and crops K when there are several grids per image)
    shard_00000.safetensors  "codes": int16 (int32 if the vocabulary needs it) [N, h, w], or
                             [N, K, h, w]: K views of every image (``dalle encode --augment K``),
                             view 0 the plain resize and 1 to K-1 augmented crops
    shard_00000.json         {"captions": [[line, ...], ...], "stems": [...]}
    metadata.jsonl           (optional) copied from the image folder

:class:`TokenDataset` reads it back: items are ``dict(image_codes=LongTensor[h*w] in raster order,
caption=str, stem=str, crop=int)``. With K views a training key ``(index, sample_seed)`` reads one
of all K, drawn from the seed like the caption line, so the prior sees another view of an image in
every epoch (the paper augments every time it reads an image, App. B.2, Listing 2) and a resumed run
reads the same ones; a plain index reads view 0, the plain resize, so held-out scores measure the
image itself and not one arbitrary crop of it.

Nothing in a token folder is trusted: ``index.json`` is checked field by field
(:func:`read_token_index`), and every shard when it is opened: integer codes (not float, not bool) in
``[0, image_vocab_size)`` of shape ``[count, h, w]`` (``[count, K, h, w]`` with K crops), captions a
list of lists of strings, stems a list of strings; anything else is a one-line
:class:`~dalle_zero.errors.DataError` naming the file and the field, not a failure deep inside the
embedding later.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from dalle_zero.config import json_type, read_json_file
from dalle_zero.errors import DataError
from dalle_zero.io import atomic_directory

logger = logging.getLogger(__name__)

FORMAT = "dalle-zero-tokens"
# 3: "crops" K, grid 0 the plain resize; 2 (refused): K crops, none of them plain; a folder of one grid
# per image is still written as 1
FORMAT_VERSION = 3
PLAIN_VIEWS_SINCE = 3  # the first version whose folders of several grids per image hold the plain one first
INDEX_NAME = "index.json"
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a file name in the folder, never a path


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def _as_lines(caption: str | Iterable[str]) -> list[str]:
    lines = [caption] if isinstance(caption, str) else list(caption)
    if not lines or not all(isinstance(s, str) for s in lines):
        raise ValueError(
            f"write_token_shards: a caption must be a string or a non-empty list of strings, got {caption!r}"
        )
    return lines


def write_token_shards(
    out_dir: str | Path,
    items: Iterable[tuple[str, str | list[str], torch.Tensor]],
    *,
    image_vocab_size: int,
    image_grid: int | tuple[int, int] | None = None,
    shard_size: int = 10_000,
    dvae: dict[str, Any] | None = None,
    splits: dict[str, list[str]] | None = None,
    metadata: dict[str, Any] | None = None,
    extra_files: dict[str, str] | None = None,
    crops: int = 1,
) -> Path:
    """Write token shards to ``out_dir`` (atomically: the folder appears only when complete).

    ``items`` yields ``(stem, caption, codes)``: a caption is a string or a list of caption lines,
    ``codes`` an integer tensor ``[h, w]`` (or ``[h*w]`` in raster order when ``image_grid`` is given),
    or with ``crops`` K > 1 the K grids of the image's views, ``[K, h, w]`` (or ``[K, h*w]``): first
    the plain (unaugmented) view, which validation reads, then K - 1 augmented ones.
    ``image_grid`` (side, or (h, w)) is checked against every item; by default the first item sets it.
    ``dvae`` (e.g. its path and config) and ``splits`` (``{name: [stems]}``) are recorded in
    ``index.json``, as is ``metadata`` (more top-level keys, e.g. the source folder and what it
    skipped); ``extra_files`` maps file names to text written beside the shards.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / INDEX_NAME).is_file():
        raise DataError(f"{out_dir} is not empty and is not a token folder; choose a new folder")
    if shard_size < 1:
        raise ValueError(f"write_token_shards: shard_size must be >= 1, got {shard_size}")
    if isinstance(crops, bool) or not isinstance(crops, int) or crops < 1:
        raise ValueError(f"write_token_shards: crops must be an integer >= 1, got {crops!r}")
    dtype = torch.int16 if image_vocab_size <= 2**15 else torch.int32
    grid = (image_grid, image_grid) if isinstance(image_grid, int) else image_grid
    shards: list[dict[str, Any]] = []
    buf_codes: list[torch.Tensor] = []
    buf_caps: list[list[str]] = []
    buf_stems: list[str] = []
    seen: set[str] = set()

    with atomic_directory(out_dir) as tmp:

        def flush() -> None:
            name = _shard_name(len(shards))
            save_file({"codes": torch.stack(buf_codes).to(dtype).contiguous()}, str(tmp / f"{name}.safetensors"))
            (tmp / f"{name}.json").write_text(json.dumps({"captions": buf_caps, "stems": buf_stems}) + "\n")
            shards.append({"name": name, "count": len(buf_codes)})
            buf_codes.clear(), buf_caps.clear(), buf_stems.clear()

        lead = () if crops == 1 else (crops,)  # the leading crop axis of every item's codes
        for stem, caption, codes in items:
            codes = codes.detach().cpu()
            if codes.dim() == len(lead) + 1 and grid is not None and codes.shape[-1] == grid[0] * grid[1]:
                codes = codes.view(*codes.shape[:-1], *grid)  # (..., h, w) from raster order
            if codes.dim() != len(lead) + 2 or tuple(codes.shape[: len(lead)]) != lead \
                    or codes.dtype.is_floating_point:
                expected = "an integer [h, w] grid" if crops == 1 else f"{crops} integer [h, w] grids, [{crops}, h, w]"
                raise ValueError(f"write_token_shards: {stem}: codes must be {expected}, got {tuple(codes.shape)}")
            if grid is None:
                grid = (int(codes.shape[-2]), int(codes.shape[-1]))
            elif tuple(codes.shape[-2:]) != tuple(grid):
                raise ValueError(
                    f"write_token_shards: {stem}: grid {tuple(codes.shape[-2:])}, expected {tuple(grid)}"
                )
            if int(codes.min()) < 0 or int(codes.max()) >= image_vocab_size:
                raise ValueError(f"write_token_shards: {stem}: codes outside [0, {image_vocab_size})")
            if stem in seen:
                raise ValueError(f"write_token_shards: stem {stem!r} occurs twice")
            seen.add(stem)
            buf_codes.append(codes)
            buf_caps.append(_as_lines(caption))
            buf_stems.append(str(stem))
            if len(buf_codes) == shard_size:
                flush()
        if buf_codes:
            flush()
        if not shards or grid is None:
            raise ValueError("write_token_shards: no images to write")
        index = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION if crops > 1 else 1,  # older readers still open one grid per image
            "grid": [int(grid[0]), int(grid[1])],
            "image_grid": int(grid[0]) if grid[0] == grid[1] else None,
            "image_vocab_size": int(image_vocab_size),
            "count": sum(s["count"] for s in shards),
            "dtype": str(dtype).removeprefix("torch."),
            "shards": shards,
            "dvae": dvae,
            "splits": splits,
        }
        if crops > 1:
            index["crops"] = crops
        index.update({k: v for k, v in (metadata or {}).items() if k not in index})
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        tmp.chmod(0o755)  # a temporary directory is private; the token folder is not
    logger.info(
        "wrote %d images' token grids %s (%d per image) in %d shard(s) to %s",
        index["count"], tuple(grid), crops, len(shards), out_dir,
    )
    return out_dir


def read_token_index(folder: str | Path) -> dict[str, Any]:
    """The parsed ``index.json`` of a token folder, checked for format, version and every field the
    reader uses (``grid``, ``image_vocab_size``, ``crops``, ``shards``, ``splits``); a DataError names
    the field."""
    folder = Path(folder)
    path = folder / INDEX_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"token folder not found: {folder}")
    missing = f"{folder}: no {INDEX_NAME} (make token shards with `dalle encode`)"
    index = read_json_file(path, missing=missing, error=DataError)
    if not isinstance(index, dict):
        raise DataError(f"{path}: expected a JSON object, got {json_type(index)}")
    if index.get("format") != FORMAT:
        raise DataError(f"{path}: not a dalle-zero token index (format {index.get('format')!r:.60})")
    version = index.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise DataError(f"{path}: field 'format_version' must be an integer, got {json_type(version)}")
    if version > FORMAT_VERSION:
        raise DataError(f"{path}: format_version {version} is newer than this dalle-zero supports")
    grid = index.get("grid")
    if not isinstance(grid, list) or len(grid) != 2 or not all(_positive_int(g) for g in grid):
        raise DataError(f"{path}: field 'grid' must be [h, w], two positive integers, got {json_type(grid)}")
    if not _positive_int(index.get("image_vocab_size")):
        raise DataError(
            f"{path}: field 'image_vocab_size' must be a positive integer, "
            f"got {json_type(index.get('image_vocab_size'))}"
        )
    if not _positive_int(index.get("crops", 1)):
        raise DataError(
            f"{path}: field 'crops' must be a positive integer (token grids per image), got {json_type(index['crops'])}"
        )
    if index.get("crops", 1) > 1 and version < PLAIN_VIEWS_SINCE:
        raise DataError(
            f"{path}: format_version {version} with {index['crops']} crops per image has no plain view to "
            f"validate on; encode the images again (dalle encode --augment)"
        )
    shards = index.get("shards")
    if not isinstance(shards, list):
        raise DataError(f"{path}: field 'shards' must be a list, got {json_type(shards)}")
    for i, shard in enumerate(shards):
        where = f"{path}: shards[{i}]"
        if not isinstance(shard, dict):
            raise DataError(f"{where} must be an object with 'name' and 'count', got {json_type(shard)}")
        name, count = shard.get("name"), shard.get("count")
        if not isinstance(name, str) or not _SHARD_NAME.match(name):
            raise DataError(f"{where}.name must be a file name in the token folder, got {json_type(name)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise DataError(f"{where}.count must be a non-negative integer, got {json_type(count)}")
    splits = index.get("splits")
    if splits is not None and (
        not isinstance(splits, dict)
        or not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in splits.values())
    ):
        raise DataError(f"{path}: field 'splits' must be null or an object of lists of stems")
    return index


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_token_codes(
    codes: Any, *, count: int, grid: tuple[int, int], vocab: int, source: str, crops: int = 1
) -> None:
    """DataError naming ``source`` unless ``codes`` is an integer tensor ``[count, h, w]`` (``[count,
    crops, h, w]`` with several crops per image) with values in ``[0, vocab)``."""
    h, w = grid
    if not isinstance(codes, torch.Tensor) or codes.dtype.is_floating_point or codes.dtype.is_complex \
            or codes.dtype == torch.bool:
        dtype = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise DataError(f"{source}: codes must be an integer tensor, got {dtype}")
    shape, names = ((count, h, w), "count, grid") if crops == 1 else ((count, crops, h, w), "count, crops, grid")
    if tuple(codes.shape) != shape:
        raise DataError(f"{source}: codes must have shape {shape} ({names}), got {tuple(codes.shape)}")
    if codes.numel():
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= vocab:
            raise DataError(
                f"{source}: codes must be in [0, {vocab}) (image_vocab_size), found values from {lo} to {hi}"
            )


def check_token_captions(captions: Any, stems: Any, *, count: int, source: str) -> None:
    """DataError naming ``source`` unless ``captions`` is a list of ``count`` non-empty lists of strings
    (a string would pass as a list of one-letter captions) and ``stems`` a list of ``count`` strings."""
    if not isinstance(captions, list) or len(captions) != count:
        got = f"{len(captions)} entries" if isinstance(captions, list) else json_type(captions)
        raise DataError(f"{source}: captions must be a list of {count} caption lists, got {got}")
    for i, lines in enumerate(captions):
        if not isinstance(lines, list) or not lines or not all(isinstance(x, str) for x in lines):
            raise DataError(
                f"{source}: captions[{i}] must be a non-empty list of caption strings, got {json_type(lines)}"
            )
    if not isinstance(stems, list) or len(stems) != count or not all(isinstance(x, str) for x in stems):
        raise DataError(f"{source}: stems must be a list of {count} strings")


class TokenDataset(Dataset):
    """Token grids and captions from a token folder, all held in memory (int16: 2 bytes a token).

    Items are ``dict(image_codes=LongTensor[h*w] (raster order), caption=str, stem=str, crop=int)``; a
    key is an index or ``(index, sample_seed)`` (a plain index is its own seed). The seed chooses among
    several caption lines and, from another stream, among the ``crops`` grids of an image, so an item
    is a pure function of its key. A plain index draws no grid: it reads grid 0, the plain view (what
    validation scores); with one grid per image nothing is drawn either way.
    """

    def __init__(self, folder: str | Path, split: str | None = None) -> None:
        self.folder = Path(folder)
        self.index = read_token_index(self.folder)
        h, w = self.index["grid"]
        self.grid: tuple[int, int] = (int(h), int(w))
        self.image_vocab_size: int = int(self.index["image_vocab_size"])
        self.crops: int = int(self.index.get("crops", 1))
        wanted: set[str] | None = None
        if split is not None:
            splits = self.index.get("splits")
            if not splits:
                raise ValueError(f"{self.folder}: split {split!r} asked for but the tokens have no splits")
            if split not in splits:
                raise ValueError(f"{self.folder}: no split {split!r}; it has {sorted(splits)}")
            wanted = set(splits[split])

        codes: list[torch.Tensor] = []
        self.captions: list[list[str]] = []
        self.stems: list[str] = []
        for shard in self.index["shards"]:
            st_path = self.folder / f"{shard['name']}.safetensors"
            js_path = self.folder / f"{shard['name']}.json"
            for p in (st_path, js_path):
                if not p.is_file():
                    raise DataError(f"token shard missing: {p}")
            try:
                shard_codes = load_file(str(st_path))["codes"]  # (N, h, w)
            except (SafetensorError, OSError, KeyError, ValueError) as e:
                raise DataError(f"{st_path}: corrupt token shard ({e})") from None
            meta = read_json_file(js_path, error=DataError)
            if not isinstance(meta, dict):
                raise DataError(f"{js_path}: expected a JSON object with captions and stems, got {json_type(meta)}")
            caps, stems = meta.get("captions"), meta.get("stems")
            n = int(shard["count"])
            check_token_codes(
                shard_codes, count=n, grid=(h, w), vocab=self.image_vocab_size, source=str(st_path), crops=self.crops
            )
            check_token_captions(caps, stems, count=n, source=str(js_path))
            keep = [i for i, s in enumerate(stems) if wanted is None or s in wanted]
            if keep:
                codes.append(shard_codes[keep].reshape(len(keep), self.crops, h * w))  # (n, K, h*w) raster order
                self.captions += [caps[i] for i in keep]
                self.stems += [stems[i] for i in keep]
        self.codes = torch.cat(codes) if codes else torch.zeros(0, self.crops, h * w, dtype=torch.int16)

    @property
    def image_grid(self) -> int:
        """Side of the (square) token grid."""
        h, w = self.grid
        if h != w:
            raise ValueError(f"{self.folder}: token grid is {h}x{w}, not square")
        return h

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), int(key))
        lines = self.captions[index]
        if len(lines) > 1:
            g = torch.Generator().manual_seed(seed)
            caption = lines[int(torch.randint(len(lines), (1,), generator=g))]
        else:
            caption = lines[0]
        crop = 0
        if self.crops > 1 and isinstance(key, tuple):  # a training key; a plain index reads the plain view
            g = torch.Generator().manual_seed(crop_seed(seed))
            crop = int(torch.randint(self.crops, (1,), generator=g))
        return {
            "image_codes": self.codes[index, crop].long(),
            "caption": caption,
            "stem": self.stems[index],
            "crop": crop,
        }


def crop_seed(sample_seed: int) -> int:
    """The seed of the crop draw: a stream of ``sample_seed`` apart from the caption line's (the seed
    itself) and the prior's null-caption and BPE-dropout coins
    (:class:`~dalle_zero.training.prior_data.PriorDataset`)."""
    return (sample_seed * 0x9E3779B97F4A7C15 + 2) % 2**63
