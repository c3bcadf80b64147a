"""A run's ``metrics.jsonl``, read back: one JSON object per line, each with an integer ``step``.

Training appends to it (:func:`~dalle_zero.training.run_files.log_metrics`) and cuts it back on resume;
the reports plot it. Both read it here, below the layers that write and plot it.

A torn or zero-filled last line (the process died while appending it, or the file system zero-filled
its tail after a crash) is left out with a warning naming the file; any other line that is not a JSON
object with an integer ``step`` is a ValueError naming the file, the line and the field.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dalle_zero.config import json_type, parse_json

logger = logging.getLogger(__name__)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of the ``metrics.jsonl`` at ``path``, in order (blank lines and a torn last line left out)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    return [row for _, row in read_metric_lines(path)]


def read_metric_lines(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """``(line, row)`` for every row of the ``metrics.jsonl`` at ``path``: the text of each line as well,
    for rewriting the file without changing the rows kept."""
    path = Path(path)
    raw_lines = path.read_bytes().split(b"\n")
    numbered = [(i + 1, raw) for i, raw in enumerate(raw_lines) if raw.strip()]  # NUL bytes are not blank
    rows = []
    for k, (lineno, raw) in enumerate(numbered):
        last = k == len(numbered) - 1
        try:
            line = raw.decode("utf-8")
            row = parse_json(line, source=f"{path}: line {lineno}")
        except (UnicodeDecodeError, ValueError) as e:
            if last:
                logger.warning("%s: line %d is torn (the run stopped while writing it); leaving it out", path, lineno)
                break
            if isinstance(e, UnicodeDecodeError):
                raise ValueError(f"{path}: line {lineno}: not UTF-8 text") from None
            raise
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {json_type(row)}")
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"{path}: line {lineno}: field 'step' must be an integer, got {json_type(step)}")
        rows.append((line, row))
    return rows
