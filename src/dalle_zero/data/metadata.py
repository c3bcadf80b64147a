"""A dataset's ``metadata.jsonl``: one JSON object per image (stem, caption, concept, tone, style, ...),
as ``dalle data emoji`` writes it, and the label a field gives an image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
        raise FileNotFoundError(f"{path} not found (is {root} a dataset built by `dalle data emoji`?)")
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
