"""The kinds of caption a model is asked in: the dataset's canonical caption, the plain name, the
name with its attributes, and a phrasing no training caption uses (``docs/evaluation.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CAPTION_KINDS = ("canonical", "name", "name_attributes", "unseen_phrasing")


def kind_captions(rows: Sequence[dict[str, Any]], kind: str) -> tuple[list[int], list[str]]:
    """``(indices, captions)``: the rows that have a caption of ``kind``, and that caption.

    Rows without one (a dataset built before several captions per image, a malformed list) are left
    out; the caller counts them. An unseen phrasing is the row's :func:`unseen_template`.
    """
    idx: list[int] = []
    caps: list[str] = []
    for i, row in enumerate(rows):
        if kind == "canonical":
            c = row.get("caption")
        elif kind == "name":
            c = row.get("name")
        elif kind == "name_attributes":
            c = row.get("plain_caption")
        else:
            t = unseen_template(i, row)
            c = row["unseen_captions"][t] if t is not None else None
        if isinstance(c, str) and c.strip():
            idx.append(i)
            caps.append(c)
    return idx, caps


def unseen_template(i: int, row: dict[str, Any]) -> int | None:
    """Which of its unseen phrasings row ``i`` of a split is asked in (its position in the row's
    ``unseen_captions``; the datasets list them in one template order), None if the list is missing or
    malformed. Taking them in turn by row reads every template about equally often."""
    options = row.get("unseen_captions")
    if not (isinstance(options, list) and options and all(isinstance(o, str) and o.strip() for o in options)):
        return None
    return i % len(options)


def kinds_for(config: Any, split: str) -> list[str]:
    """The caption kinds besides the canonical one that ``config`` (an EvalConfig) samples for ``split``."""
    if split not in config.kind_splits:
        return []
    return [k for k in config.caption_kinds if k != "canonical"]
