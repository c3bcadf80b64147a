"""Pre-encoded token shards: the prior's training data (paper §3.5: tokens from the frozen dVAE).

``dalle encode`` tokenizes every image once with the frozen dVAE, so stage 2 never runs the dVAE
encoder in its loop. A token folder holds::

    index.json               format, grid [h, w], image_vocab_size, count, shards, dvae, splits
    shard_00000.safetensors  "codes": int16 (int32 if the vocabulary needs it) [N, h, w]
    shard_00000.json         {"captions": [[line, ...], ...], "stems": [...]}
    metadata.jsonl           (optional) copied from the image folder

:class:`TokenDataset` reads it back: items are ``dict(image_codes=LongTensor[h*w] in raster order,
caption=str, stem=str)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from dalle_zero.config import read_json_file
from dalle_zero.errors import DataError
from dalle_zero.io import atomic_directory

logger = logging.getLogger(__name__)

FORMAT = "dalle-zero-tokens"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"


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
) -> Path:
    """Write token shards to ``out_dir`` (atomically: the folder appears only when complete).

    ``items`` yields ``(stem, caption, codes)``: a caption is a string or a list of caption lines,
    ``codes`` an integer tensor ``[h, w]`` (or ``[h*w]`` in raster order when ``image_grid`` is given).
    ``image_grid`` (side, or (h, w)) is checked against every item; by default the first item sets it.
    ``dvae`` (e.g. its path and config) and ``splits`` (``{name: [stems]}``) are recorded in
    ``index.json``, as is ``metadata`` (more top-level keys, e.g. the source folder and what it
    skipped); ``extra_files`` maps file names to text written beside the shards.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / INDEX_NAME).is_file():
        raise DataError(f"{out_dir} is not empty and is not a token folder; choose a new folder")
    if shard_size < 1:
        raise ValueError(f"write_token_shards: shard_size must be >= 1, got {shard_size}")
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

        for stem, caption, codes in items:
            codes = codes.detach().cpu()
            if codes.dim() == 1 and grid is not None and codes.numel() == grid[0] * grid[1]:
                codes = codes.view(grid)  # (h, w) from raster order
            if codes.dim() != 2 or codes.dtype.is_floating_point:
                raise ValueError(
                    f"write_token_shards: {stem}: codes must be an integer [h, w] grid, got {tuple(codes.shape)}"
                )
            if grid is None:
                grid = (int(codes.shape[0]), int(codes.shape[1]))
            elif tuple(codes.shape) != tuple(grid):
                raise ValueError(f"write_token_shards: {stem}: grid {tuple(codes.shape)}, expected {tuple(grid)}")
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
            "format_version": FORMAT_VERSION,
            "grid": [int(grid[0]), int(grid[1])],
            "image_grid": int(grid[0]) if grid[0] == grid[1] else None,
            "image_vocab_size": int(image_vocab_size),
            "count": sum(s["count"] for s in shards),
            "dtype": str(dtype).removeprefix("torch."),
            "shards": shards,
            "dvae": dvae,
            "splits": splits,
        }
        index.update({k: v for k, v in (metadata or {}).items() if k not in index})
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        tmp.chmod(0o755)  # a temporary directory is private; the token folder is not
    logger.info("wrote %d token grids %s in %d shard(s) to %s", index["count"], tuple(grid), len(shards), out_dir)
    return out_dir


def read_token_index(folder: str | Path) -> dict[str, Any]:
    """The parsed ``index.json`` of a token folder, checked for format and version."""
    folder = Path(folder)
    path = folder / INDEX_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"token folder not found: {folder}")
    missing = f"{folder}: no {INDEX_NAME} (make token shards with `dalle encode`)"
    index = read_json_file(path, missing=missing, error=DataError)
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path}: not a dalle-zero token index (format {index.get('format')!r})")
    if index.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(f"{path}: format_version {index['format_version']} is newer than this dalle-zero supports")
    return index


class TokenDataset(Dataset):
    """Token grids and captions from a token folder, all held in memory (int16: 2 bytes a token).

    Items are ``dict(image_codes=LongTensor[h*w] (raster order), caption=str, stem=str)``; a key is an
    index or ``(index, sample_seed)``, the seed choosing among several caption lines.
    """

    def __init__(self, folder: str | Path, split: str | None = None) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        self.folder = Path(folder)
        self.index = read_token_index(self.folder)
        h, w = self.index["grid"]
        self.grid: tuple[int, int] = (int(h), int(w))
        self.image_vocab_size: int = int(self.index["image_vocab_size"])
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
            try:
                meta = json.loads(js_path.read_text())
                caps, stems = meta["captions"], meta["stems"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{js_path}: corrupt token shard metadata ({e})") from None
            n = int(shard["count"])
            if tuple(shard_codes.shape) != (n, h, w) or len(caps) != n or len(stems) != n:
                raise DataError(
                    f"{st_path}: expected {n} grids of {h}x{w} with captions, found codes "
                    f"{tuple(shard_codes.shape)}, {len(caps)} captions, {len(stems)} stems"
                )
            keep = [i for i, s in enumerate(stems) if wanted is None or s in wanted]
            if keep:
                codes.append(shard_codes[keep].reshape(len(keep), h * w))  # (n, h*w) raster order
                self.captions += [caps[i] for i in keep]
                self.stems += [stems[i] for i in keep]
        self.codes = torch.cat(codes) if codes else torch.zeros(0, h * w, dtype=torch.int16)

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
        return {"image_codes": self.codes[index].long(), "caption": caption, "stem": self.stems[index]}
