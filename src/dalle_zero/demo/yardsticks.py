"""The yardsticks of ``dalle demo`` (the evaluator and the R-precision CLIP: they measure, they are
not parts of the model) are trained once per dataset and settings in the user cache and reused, so
every demo on that dataset is measured with the same ones."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dalle_zero.data.metadata import read_metadata
from dalle_zero.data.npm import default_cache_dir
from dalle_zero.data.pairs import IMAGE_SUFFIXES
from dalle_zero.demo.context import DemoContext, StageBuilder, data_dir, with_loop
from dalle_zero.demo.timed_training import train_stage
from dalle_zero.io import atomic_directory, atomic_write_text
from dalle_zero.training.run_files import TRAIN_CONFIG


def cached_train_stage(
    ctx: DemoContext,
    name: str,
    build: StageBuilder,
    *,
    inputs: Sequence[Path] = (),
    reads: Sequence[str] | None = None,
) -> dict[str, Any]:
    """:func:`train_stage`, or, for a spec with ``cache``, train once into the user cache and reuse.

    A cached stage (the evaluator and the R-precision CLIP: yardsticks, not parts of the model) is
    trained with its fixed step count in :func:`stage_cache_dir`, marked finished there, and copied
    into ``runs/<name>``; a later demo on the same dataset, settings and ``inputs`` copies it again.
    ``reads`` is as in :func:`stage_cache_dir`.
    """
    spec = ctx.config.stage(name)
    if not spec.cache:
        return train_stage(ctx, name, build)
    assert spec.steps is not None  # StageSpec checks it
    cached = stage_cache_dir(name, data_dir(ctx), with_loop(spec.config, spec.steps), inputs, reads=reads)
    done = cached / "finished.json"
    reuse = done.is_file()
    if reuse:
        ctx.log(f"  reusing the run trained before for this dataset: {cached}")
        result = {"steps": spec.steps, "train_seconds": 0.0, "rate": None, "seconds": None}
    else:
        ctx.log(f"  trained once for this dataset and kept in {cached}")
        result = train_stage(ctx, name, build, run_dir=cached)
        atomic_write_text(done, json.dumps({"steps": spec.steps, "seconds": result["train_seconds"]}) + "\n")
    _copy_run(cached, ctx.run_dir(name))
    return {**result, "cached": str(cached), "reused": reuse}


def stage_cache_dir(
    name: str,
    data: Path,
    fields: dict[str, Any],
    inputs: Sequence[Path] = (),
    *,
    reads: Sequence[str] | None = None,
) -> Path:
    """``~/.cache/dalle-zero/<name>/<dataset>-<key>``: one run per dataset, settings and input files.

    The key hashes what the stage learns from: its train-config fields, the dataset's ``splits.json``,
    its images, its ``metadata.jsonl`` and ``inputs`` (e.g. the BPE tokenizer a CLIP reads captions
    with). A stage that reads only some metadata fields names them in ``reads`` and is keyed on those
    alone: the evaluator reads labels, never captions, so a dataset rebuilt with other captions keeps
    its evaluator, and figures of two caption presets stay comparable.
    """
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    h.update((data / "splits.json").read_bytes())
    images = (data / "images").iterdir() if (data / "images").is_dir() else ()
    for image in sorted(p for p in images if p.suffix.lower() in IMAGE_SUFFIXES):
        h.update(image.name.encode())
        h.update(image.read_bytes())
    if reads is None:
        h.update((data / "metadata.jsonl").read_bytes())
    else:
        rows = read_metadata(data)
        kept = [{k: rows[stem].get(k) for k in ("stem", *reads)} for stem in sorted(rows)]
        h.update(json.dumps(kept, sort_keys=True).encode())
    for path in inputs:
        h.update(Path(path).read_bytes())
    return default_cache_dir().parent / name / f"{data.name}-{h.hexdigest()[:12]}"


def _copy_run(source: Path, dest: Path) -> None:
    """The finished run's model, config and metrics into ``dest`` (replacing it), written whole or not at all."""
    with atomic_directory(dest) as tmp:
        shutil.copytree(source / "model", tmp / "model")
        for name in ("metrics.jsonl", TRAIN_CONFIG):
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
