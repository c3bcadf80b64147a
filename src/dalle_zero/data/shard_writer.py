"""Writing an image folder as WebDataset tar shards (``dalle data shards``), the format that
:class:`~dalle_zero.data.webdataset.ImageTextShards` reads.

Members get fixed metadata (mode, mtime), so the same folder always gives the same bytes; the
folder's ``splits.json`` and ``metadata.jsonl`` travel with the shards, re-keyed.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm

from dalle_zero.data.folder import ImageTextFolder
from dalle_zero.data.pairs import read_splits
from dalle_zero.data.webdataset import SHARD_SUFFIX
from dalle_zero.errors import DataError
from dalle_zero.io import atomic_directory

logger = logging.getLogger(__name__)




class ShardSummary(NamedTuple):
    out_dir: Path
    shards: int
    samples: int
    skipped: dict[str, int]  # reason -> count, the image folder's


def shard_keys(stems: Iterable[str]) -> list[str]:
    """A WebDataset key for each stem: the stem with dots made ``_`` (a dot ends a key), then made
    unique with a ``_2``, ``_3``, ... suffix where stems repeat."""
    used: set[str] = set()
    keys = []
    for stem in stems:
        base = stem.replace(".", "_") or "sample"
        key, n = base, 1
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used.add(key)
        keys.append(key)
    return keys


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: the same folder gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def _rekey_files(data: Path, keys_of: dict[str, list[str]]) -> dict[str, str]:
    """``splits.json`` and ``metadata.jsonl`` of the image folder with stems replaced by shard keys;
    ``NOTICE*`` and ``LICENSE*`` files as they are (attribution travels with the data)."""
    out: dict[str, str] = {}
    if (data / "splits.json").is_file():
        splits = read_splits(data / "splits.json")
        rekeyed = {name: [k for s in stems for k in keys_of.get(s, [])] for name, stems in splits.items()}
        out["splits.json"] = json.dumps(rekeyed, indent=1) + "\n"
    if (data / "metadata.jsonl").is_file():
        rows = []
        for line in (data / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            stem = row.get("stem") if isinstance(row, dict) else None
            for key in keys_of.get(str(stem), []):
                rows.append(json.dumps({**row, "stem": key}))
        out["metadata.jsonl"] = "".join(r + "\n" for r in rows)
    for p in sorted(data.iterdir()):
        if p.is_file() and p.name.upper().startswith(("NOTICE", "LICENSE")):
            out[p.name] = p.read_text(encoding="utf-8", errors="replace")
    return out


def write_shards(
    data: str | Path, out: str | Path, *, per_shard: int = 1000, check: str = "load", progress: bool = False
) -> ShardSummary:
    """Convert the image folder ``data`` into tar shards ``out/00000.tar``, ``00001.tar``, ... in the
    img2dataset layout, ``per_shard`` samples each, in the folder's order.

    Every usable pair of :class:`~dalle_zero.data.folder.ImageTextFolder` (unusable ones are skipped and
    counted as it does) becomes ``KEY.EXT``, the image file's bytes unchanged, ``KEY.txt``, its caption
    lines, and ``KEY.json`` (``{"key", "source"}``: the image's path in the folder). Keys are the stems
    (see :func:`shard_keys`). The folder's ``splits.json`` and ``metadata.jsonl`` are written beside the
    shards with stems replaced by keys, so the shards split as the folder does. ``out`` must be new or
    empty; it appears only when complete.
    """
    if per_shard < 1:
        raise ValueError(f"write_shards: per_shard must be >= 1, got {per_shard}")
    data, out = Path(data), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} is not an empty folder; choose a new folder for the shards")
    folder = ImageTextFolder(data, check=check)
    keys = shard_keys(folder.stems)
    keys_of: dict[str, list[str]] = {}
    for stem, key in zip(folder.stems, keys):
        keys_of.setdefault(stem, []).append(key)

    n_shards = -(-len(folder) // per_shard)
    with atomic_directory(out) as tmp, tqdm(total=len(folder), unit="img", desc="shards", disable=not progress) as bar:
        for s in range(n_shards):
            lo, hi = s * per_shard, min(len(folder), (s + 1) * per_shard)
            with tarfile.open(tmp / f"{s:05d}{SHARD_SUFFIX}", mode="w") as tar:
                for i in range(lo, hi):
                    path, lines = folder.items[i]
                    key = keys[i]
                    _add_member(tar, f"{key}.{path.suffix.lower().removeprefix('.')}", path.read_bytes())
                    _add_member(tar, f"{key}.txt", ("\n".join(lines) + "\n").encode("utf-8"))
                    source = {"key": key, "source": path.relative_to(data).as_posix()}
                    _add_member(tar, f"{key}.json", (json.dumps(source) + "\n").encode("utf-8"))
                    bar.update(1)
        for name, text in _rekey_files(data, keys_of).items():
            (tmp / name).write_text(text, encoding="utf-8")
        tmp.chmod(0o755)  # a temporary directory is private; the shard folder is not
    logger.info("wrote %d samples in %d shard(s) to %s", len(folder), n_shards, out)
    return ShardSummary(out, n_shards, len(folder), dict(folder.skipped))
