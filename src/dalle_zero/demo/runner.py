"""``dalle demo`` end to end: every stage in order, each skipped once done, then the report.

Folder layout of a demo run (``--out``, default ``./demo``)::

    demo_config.json      the resolved DemoConfig (a later run must match it to resume)
    stages/<name>.json    done-marker + summary of each finished stage (seconds, steps, results)
    stages/<name>.plan.json  the step count fixed for a training stage before it started
    stages/<name>.interrupted.json  seconds a stage ran before it was stopped, until it finishes
    tokenizer/  tokens/  runs/{dvae,clip,eval_clip,evaluator,prior}/  model/
    images/  plots/  eval/{results.json,report.html,samples/}  showcase.json
    report.html

Interrupted (Ctrl-C, a crash, a reboot) and run again with the same options, it skips finished stages
and resumes a training stage from its last checkpoint with the step count planned the first time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dalle_zero.data.metadata import read_dataset_splits, read_metadata
from dalle_zero.demo import side_by_side
from dalle_zero.demo import stages as st
from dalle_zero.demo.config import TRAIN_STAGES, DemoConfig
from dalle_zero.demo.context import DemoContext, DemoInterrupted, data_dir
from dalle_zero.demo.report import STAGE_TITLES, write_report
from dalle_zero.demo.showcase import (
    pick_prime_image,
    render_image_to_image,
    render_plain_words,
    render_showcase,
    showcase_captions,
)
from dalle_zero.evaluation.evaluate import evaluate_model, json_ready
from dalle_zero.evaluation.figures import write_eval_report
from dalle_zero.io import atomic_write_text
from dalle_zero.models.clip import DalleCLIP
from dalle_zero.models.evaluator import EmojiEvaluator
from dalle_zero.pipelines.text_to_image import TextToImagePipeline
from dalle_zero.runtime import fastest_thread_count

logger = logging.getLogger(__name__)

CONFIG_NAME = "demo_config.json"


def stage_showcase(ctx: DemoContext) -> dict[str, Any]:
    """Reranked samples for seen / unseen captions and the image-to-image example -> ``showcase.json``."""
    c = ctx.config
    data = data_dir(ctx)
    pipeline = TextToImagePipeline.from_pretrained(ctx.model_dir)
    meta, splits = read_metadata(data), read_dataset_splits(data)
    picks = showcase_captions(meta, splits, c.showcase_captions)
    gallery = render_showcase(
        pipeline,
        data,
        picks,
        ctx.out,
        n=c.showcase_n,
        candidates=c.showcase_candidates,
        seed=c.seed,
        guidance_scale=c.eval.guidance_scale,  # the sampling settings of the evaluation
        progress=ctx.progress,
    )
    record: dict[str, Any] = {
        "candidates": c.showcase_candidates,
        "guidance_scale": c.eval.guidance_scale,
        "splits": gallery,
        "plain_words": render_plain_words(
            pipeline, c.plain_captions, ctx.out, n=c.showcase_n, candidates=c.showcase_candidates,
            seed=c.seed, guidance_scale=c.eval.guidance_scale,
        ),  # fmt: skip
        "image_to_image": None,
    }
    row = pick_prime_image(meta, splits)
    if row is not None:
        record["image_to_image"] = render_image_to_image(
            pipeline,
            data,
            meta,
            row,
            ctx.out,
            n=c.showcase_n,
            candidates=c.showcase_candidates,
            prime_rows=c.prime_rows,
            seed=c.seed,
            guidance_scale=c.eval.guidance_scale,
        )
    atomic_write_text(ctx.out / "showcase.json", json.dumps(record, indent=2) + "\n")
    return {"captions": sum(len(v) for v in gallery.values())}


def stage_evaluate(ctx: DemoContext) -> dict[str, Any]:
    """``dalle eval`` on the assembled model: results.json + its own report under ``eval/``."""
    pipeline = TextToImagePipeline.from_pretrained(ctx.model_dir)
    evaluator = EmojiEvaluator.from_pretrained(ctx.run_dir("evaluator") / "model")
    clip = DalleCLIP.from_pretrained(ctx.run_dir("eval_clip") / "model")
    out = ctx.out / "eval"
    results = evaluate_model(
        pipeline,
        data_dir(ctx),
        evaluator,
        config=ctx.config.eval,
        r_precision_clip=clip,
        out_dir=out,
        progress=ctx.progress,
    )
    results = json_ready(results)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_eval_report(results, out, title="dalle-zero demo: evaluation")
    return {"results": str(out / "results.json")}


# The yardsticks (evaluator and R-precision CLIP: fixed steps, trained once per dataset and cached) come
# before the time-budgeted stages, so a first run's time for them is already spent when those plan: on
# a slow machine shared with other work they once took 22 minutes, where their shares had kept 74 s.
STAGES: dict[str, Callable[[DemoContext], dict[str, Any]]] = {
    "data": st.stage_data,
    "tokenizer": st.stage_tokenizer,
    "eval_clip": st.stage_eval_clip,
    "evaluator": st.stage_evaluator,
    "dvae": st.stage_dvae,
    "encode": st.stage_encode,
    "clip": st.stage_clip,
    "prior": st.stage_prior,
    "assemble": st.stage_assemble,
    "showcase": stage_showcase,
    "evaluate": stage_evaluate,
}


def check_or_save_config(out: Path, config: DemoConfig, data: Path | None) -> None:
    """Record the settings of a new demo folder; refuse to resume one started with other settings."""
    current = {"config": config.to_dict(), "data": None if data is None else str(data.resolve())}
    path = out / CONFIG_NAME
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != current:
            diff = sorted(
                k
                for k in set(saved["config"]) | set(current["config"])
                if saved["config"].get(k) != current["config"].get(k)
            )
            what = diff or ["--data"]
            raise ValueError(
                f"{out} holds a demo started with other settings ({', '.join(what)}); "
                "run it again with the same options to resume, or choose another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    if any(p.name != "demo.log" for p in out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no demo; choose another --out")
    atomic_write_text(path, json.dumps(current, indent=2) + "\n")


def read_done(out: Path) -> dict[str, dict[str, Any]]:
    """Summaries of the finished stages, in stage order."""
    done = {}
    for name in STAGES:
        path = out / "stages" / f"{name}.json"
        if path.is_file():
            done[name] = json.loads(path.read_text())
    return done


def _interrupted_path(out: Path, name: str) -> Path:
    return out / "stages" / f"{name}.interrupted.json"


def interrupted_seconds(out: Path, name: str) -> float:
    """Seconds stage ``name`` ran in earlier runs that were stopped before it finished (0 if none)."""
    path = _interrupted_path(out, name)
    return float(json.loads(path.read_text())["seconds"]) if path.is_file() else 0.0


def _add_interrupted_seconds(out: Path, name: str, seconds: float) -> None:
    """Record that stage ``name`` took ``seconds`` more of the budget in a run stopped before it finished."""
    total = interrupted_seconds(out, name) + seconds
    atomic_write_text(_interrupted_path(out, name), json.dumps({"seconds": total}) + "\n")


def run_demo(
    out: str | Path,
    config: DemoConfig,
    *,
    data: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> Path:
    """Run (or resume) the demo in ``out``; returns the path of ``report.html``.

    ``command`` is the ``dalle demo`` command line that started it, shown in the report as the way to
    reproduce or resume it (default: one built from ``out`` and the budget, right for the preset).

    Raises :class:`~dalle_zero.demo.context.DemoInterrupted` when a training stage was stopped early.
    """
    out = Path(out)
    data_path = None if data is None else Path(data)
    if data_path is not None and not data_path.is_dir():
        raise FileNotFoundError(f"--data: data folder not found: {data_path}")
    check_or_save_config(out, config, data_path)
    done = read_done(out)
    ctx = DemoContext(out=out, config=config, data=data_path, progress=progress, log=log)
    # a stopped stage's seconds count too: they were spent from the budget, and the report shows them
    ctx.elapsed = side_by_side.wall_seconds(done) + sum(
        interrupted_seconds(out, name) for name in STAGES if name not in done
    )
    ctx.done = [s for s in TRAIN_STAGES if s in done]
    if "data" in done and data_path is None:
        ctx.data = Path(done["data"]["data"])
    load_start = _loadavg()
    t_run = time.perf_counter()
    threads_before = torch.get_num_threads()
    try:
        _run_stages(ctx, done, log)
    finally:
        torch.set_num_threads(threads_before)
    showcase = json.loads((out / "showcase.json").read_text()) if (out / "showcase.json").is_file() else None
    results_path = out / "eval" / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    data_note = done.get("data", {}).get("data", "?")
    header = {
        "wall_minutes": side_by_side.wall_seconds(done) / 60,
        "this_run_minutes": (time.perf_counter() - t_run) / 60,
        "budget_minutes": config.minutes,
        "cores": os.cpu_count(),
        "load_start": load_start,
        "load_end": _loadavg(),
        "data": data_note,
        "commands": reproduce_commands(out, Path(data_note), config, command),
    }
    atomic_write_text(out / "summary.json", json.dumps({"header": header, "stages": done}, indent=2) + "\n")
    return write_report(out, state={"stages": done}, showcase=showcase, results=results, header=header)


def _run_stages(ctx: DemoContext, done: dict[str, dict[str, Any]], log: Callable[[str], None]) -> None:
    """Run every stage not yet done, in order, writing its done-marker when it finishes."""
    partners: dict[str, side_by_side.Partner] = {}  # stages training in another process
    try:
        for i, (name, fn) in enumerate(STAGES.items(), start=1):
            _run_stage(ctx, done, log, f"[{i}/{len(STAGES)}] {_title(name)}", name, fn, partners)
    except BaseException:
        side_by_side.stop(list(partners.values()))  # they checkpoint, and a later run resumes them
        raise


def _run_stage(
    ctx: DemoContext,
    done: dict[str, dict[str, Any]],
    log: Callable[[str], None],
    title: str,
    name: str,
    fn: Callable[[DemoContext], dict[str, Any]],
    partners: dict[str, side_by_side.Partner],
) -> None:
    out, config = ctx.out, ctx.config
    if name in done and not (name == "data" and not (Path(done["data"]["data"]) / "splits.json").is_file()):
        log(f"{title}: done ({done[name]['seconds']:.0f} s), skipped")
        return
    log(title)
    if name in partners:  # it has trained beside an earlier stage: wait for it
        t0 = time.perf_counter()
        try:
            summary = side_by_side.finish(ctx, partners.pop(name))
        except (DemoInterrupted, KeyboardInterrupt):
            # the waiting came out of the budget; the stage resumes alone and counts it then
            _add_interrupted_seconds(out, name, time.perf_counter() - t0)
            raise
        done[name] = summary
        ctx.done.append(name)
        log(f"  done in {summary['seconds']:.0f} s beside the {summary['beside']} stage, waited "
            f"{summary['wait_seconds']:.0f} s ({ctx.elapsed / 60:.1f} of {config.minutes:g} min used)")
        return
    t0 = time.perf_counter()
    before = interrupted_seconds(out, name)  # already in ctx.elapsed
    threads, timings = fastest_thread_count()
    if len(timings) > 1:
        log(f"  torch threads: {threads} (" + ", ".join(f"{n}: {t * 1e3:.0f} ms" for n, t in timings.items()) + ")")
    beside = side_by_side.partners_of(config, name, done)
    if beside:
        partners.update((p.name, p) for p in side_by_side.start(ctx, name, beside, STAGES))
        threads = torch.get_num_threads()
    try:
        summary = fn(ctx)
    except (DemoInterrupted, KeyboardInterrupt):  # the seconds were spent from the budget either way
        _add_interrupted_seconds(out, name, time.perf_counter() - t0)
        raise
    seconds = time.perf_counter() - t0
    side_by_side.alone([p for p in partners.values() if config.stage(p.name).beside == name])
    summary = {**summary, "seconds": before + seconds, "threads": threads}
    atomic_write_text(out / "stages" / f"{name}.json", json.dumps(summary, indent=2) + "\n")
    _interrupted_path(out, name).unlink(missing_ok=True)
    done[name] = summary
    ctx.elapsed += seconds
    if name in TRAIN_STAGES:
        ctx.done.append(name)
    log(f"  done in {before + seconds:.0f} s ({ctx.elapsed / 60:.1f} of {config.minutes:g} min used)")


def reproduce_commands(out: Path, data: Path, config: DemoConfig, command: str | None = None) -> list[str]:
    """The ``dalle`` commands that reproduce or extend what the demo did. The model folder carries
    the demo's sampling settings (``sampling.json``), so generating needs none; the evaluation names
    its own candidate count, which differs from the showcase's."""
    first = config.plain_captions[0] if config.plain_captions else "red heart"
    return [
        command or f"dalle demo --out {out} --minutes {config.minutes:g}",
        f'dalle generate --model {out / "model"} "{first}"',
        f"dalle eval --model {out / 'model'} --data {data} --evaluator {out / 'runs' / 'evaluator'} "
        f"--clip {out / 'runs' / 'eval_clip'} --samples {config.eval.samples} --candidates {config.eval.candidates}"
        f" --out {out / 'eval'}",
    ]


def _title(name: str) -> str:
    return STAGE_TITLES.get(name, name)


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"
