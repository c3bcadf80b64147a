"""The files of a run folder besides its checkpoints: ``train_config.json``, ``metrics.jsonl`` and the
best model kept by validation (``best_model/`` with ``best.json``).

- :func:`prepare_run_dir` creates the folder, refuses to overwrite a run unless resuming, and
  repairs what an interrupted write left behind;
- :func:`log_metrics` appends one row to ``metrics.jsonl`` (read back by :mod:`dalle_zero.metrics_file`,
  which leaves out a torn last line); :func:`truncate_metrics` cuts it back to a resumed checkpoint;
  :func:`last_validation` and :func:`last_validation_step` find the latest validation figures;
- :func:`keep_if_best` saves the model whenever a validation figure is the lowest so far, and
  :func:`best_model` finds it;
- :func:`trained_setting` reads one setting a run was trained with.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from dalle_zero.config import Config
from dalle_zero.io import atomic_write_text, clean_leftovers
from dalle_zero.metrics_file import read_metric_lines, read_metrics
from dalle_zero.training import checkpoint as ckpt
from dalle_zero.training import distributed

logger = logging.getLogger(__name__)

BEST_MODEL = "best_model"
BEST_RECORD = "best.json"
TRAIN_CONFIG = "train_config.json"


def prepare_run_dir(run_dir: Path, train_config: Config, *, resume: bool) -> None:
    """Create the run folder; refuse to overwrite an existing run unless resuming.

    What interrupted writes left in it is dealt with first (:func:`~dalle_zero.io.clean_leftovers`): a
    folder (``model/``, a step folder) left aside by a crash between two renames is put back, and
    temporary and aside copies are removed, so a killed run leaves neither a missing folder nor a
    pile of full-size copies."""
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_leftovers(run_dir)
    cfg_path = run_dir / TRAIN_CONFIG
    has_steps = bool(ckpt.list_steps(run_dir))
    if not resume and has_steps:
        raise ValueError(
            f"{run_dir} already holds a training run; pass --resume to continue it or choose a new --out"
        )
    if resume and cfg_path.is_file():
        saved, new = json.loads(cfg_path.read_text()), json.loads(train_config.to_json())
        before, after = pop_schedule(saved), pop_schedule(new)
        if saved != new:
            logger.warning("%s differs from the config of this run; resuming with the new one", cfg_path)
        elif before != after:  # the same run made longer or shorter (`--steps` on resume, a demo's re-plan)
            changed = {k: v for k, v in after.items() if before.get(k) != v}
            logger.info("%s: resuming with loop %s instead of %s", cfg_path, changed,
                        {k: before.get(k) for k in changed})
    atomic_write_text(cfg_path, train_config.to_json())


# loop fields that say how long a run is, how often it logs, evaluates and checkpoints, and how it spreads
# over processes, not what it learns
SCHEDULE_FIELDS = ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "strategy")


def pop_schedule(config: dict[str, Any]) -> dict[str, Any]:
    """Remove the :data:`SCHEDULE_FIELDS` from a train config's JSON ``loop`` and return them."""
    loop = config.get("loop")
    if not isinstance(loop, dict):
        return {}
    return {k: loop.pop(k) for k in SCHEDULE_FIELDS if k in loop}


def best_model(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """``(best_model folder, its record)`` of a run trained with ``select_by``, or None."""
    run_dir = Path(run_dir)
    path = run_dir / BEST_RECORD
    if not path.is_file() or not (run_dir / BEST_MODEL).is_dir():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return (run_dir / BEST_MODEL, record) if isinstance(record, dict) else None


def trained_setting(run_dir: str | Path, key: str) -> Any | None:
    """The value of ``key`` in the run's ``train_config.json``; None when ``run_dir`` is not a run
    folder (a model folder keeps no training settings) or the file does not record it."""
    path = Path(run_dir) / TRAIN_CONFIG
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return saved.get(key) if isinstance(saved, dict) else None


def keep_if_best(model: nn.Module, row: dict[str, float], name: str, step: int, run_dir: Path) -> None:
    """Save ``model`` to ``best_model/`` if validation figure ``name`` is the lowest so far."""
    if name not in row:
        raise ValueError(f"LoopConfig.select_by is {name!r} but the evaluation reports only {sorted(row)}")
    value = float(row[name])
    previous = best_model(run_dir)
    if previous is not None and previous[1].get("step", 0) < step and not value < previous[1].get("value", math.inf):
        return
    model.save_pretrained(run_dir / BEST_MODEL)  # type: ignore[operator]
    atomic_write_text(run_dir / BEST_RECORD, json.dumps({"step": step, "figure": name, "value": value}) + "\n")


def log_metrics(run_dir: Path, step: int, row: dict[str, float], ctx: distributed.DistContext) -> None:
    if not ctx.is_main:
        return
    clean = {k: (v if math.isfinite(v) else None) for k, v in row.items()}
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")


def last_validation(run_dir: str | Path) -> dict[str, float]:
    """The ``val/`` metrics of the last evaluated step in ``run_dir/metrics.jsonl``, prefix removed."""
    return last_validation_step(run_dir)[1]


def last_validation_step(run_dir: str | Path) -> tuple[int | None, dict[str, float]]:
    """(step, metrics) of the last evaluated step, as :func:`last_validation`; (None, {}) if none."""
    return next(_validations_newest_first(run_dir), (None, {}))


def validation_at(run_dir: str | Path, step: int) -> dict[str, float]:
    """The ``val/`` metrics logged at ``step`` in ``run_dir/metrics.jsonl``, prefix removed ({} if none)."""
    # newest first: a resumed run logs a step again, and the last time counts
    return next((vals for at, vals in _validations_newest_first(run_dir) if at == step), {})


def _validations_newest_first(run_dir: str | Path) -> Iterator[tuple[int | None, dict[str, float]]]:
    """(step, ``val/`` metrics without the prefix) of each evaluated row of ``run_dir/metrics.jsonl``,
    last row first."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    for row in reversed(read_metrics(path)):
        vals = {k[4:]: v for k, v in row.items() if k.startswith("val/") and v is not None}
        if vals:
            yield row.get("step"), vals


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be logged again), and a
    torn last line (:func:`~dalle_zero.metrics_file.read_metric_lines`)."""
    if not path.is_file():
        return
    keep = [line for line, row in read_metric_lines(path) if row["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))
