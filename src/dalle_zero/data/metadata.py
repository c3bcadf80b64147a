"""A dataset folder's ``metadata.jsonl`` and ``splits.json``, as ``dalle data emoji`` writes them.

``metadata.jsonl`` holds one JSON object per image (stem, caption, concept, tone, style, ...);
:func:`field_label` is the label a field gives an image. ``splits.json`` maps split names to stems.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dalle_zero.data.pairs import read_splits, split_list
from dalle_zero.errors import DataError


def field_label(row: dict[str, Any], name: str) -> str | None:
    """The label of metadata field ``name`` for one row, or None when the field has no single label."""
    value = row.get(name)
    if name == "tone":
        if value is None:
            return "none"
        return None if "/" in str(value) else str(value)
    return None if value is None else str(value)


def read_metadata(root: str | Path) -> dict[str, dict[str, Any]]:
    """``{stem: row}`` from ``root/metadata.jsonl``."""
    path = Path(root) / "metadata.jsonl"
    if not path.is_file():
        raise FileNotFoundError(_missing(root, "metadata.jsonl"))
    rows: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or "stem" not in row:
            raise DataError(f"{path}:{n}: expected an object with a 'stem' field")
        rows[str(row["stem"])] = row
    return rows


def _missing(root: str | Path, name: str) -> str:
    return f"{Path(root) / name} not found (is {root} a dataset built by `dalle data emoji`?)"


def read_dataset_splits(root: str | Path) -> dict[str, list[str]]:
    """``{split name: [stems]}`` from ``root/splits.json``; a :class:`DataError` naming the file if it is bad."""
    return read_splits(Path(root) / "splits.json", missing=_missing(root, "splits.json"), error=DataError)


def read_dataset_split(root: str | Path, split: str) -> list[str]:
    """The stems of ``split`` from ``root/splits.json``, in file order; a :class:`DataError` if it has none."""
    return split_list(Path(root) / "splits.json", split, missing=_missing(root, "splits.json"), error=DataError)
