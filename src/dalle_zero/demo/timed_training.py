"""Training a stage of ``dalle demo`` within its share of the minutes.

:func:`train_stage`

1. builds the stage's train config from the demo preset (data paths and vocabularies filled in),
2. fixes the step count: the spec's ``steps``, or its share of the time left times the steps per
   second measured now (:mod:`dalle_zero.demo.budget`), saved to ``stages/<name>.plan.json``; a
   time-budgeted stage plans again at each of the ``replan_at`` shares of its steps, from the rate it
   really trained at since the last plan (:func:`replan`), and the last plan is kept for good,
3. trains with the shared loop, resuming from the run's last checkpoint when run again,
4. raises :class:`~dalle_zero.demo.context.DemoInterrupted` if the loop stopped early (Ctrl-C), so
   the stage is not marked done.

Before the first training stage, :func:`plan_reserve` keeps the time the showcase and the
evaluation will need; :func:`choose_precision` picks bf16 or fp32 by timing the stage's own steps.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dalle_zero.config import Config
from dalle_zero.data.metadata import read_dataset_splits
from dalle_zero.data.sources import read_captions
from dalle_zero.demo import budget
from dalle_zero.demo.config import TRAIN_STAGES, DemoConfig, StageSpec
from dalle_zero.demo.context import (
    DemoContext,
    DemoInterrupted,
    PrecisionBuilder,
    StageBuilder,
    data_dir,
    image_stage_fields,
    load_tokenizer,
    seeded,
    with_loop,
)
from dalle_zero.evaluation.caption_kinds import kinds_for
from dalle_zero.io import atomic_write_text
from dalle_zero.models.dvae import DiscreteVAE
from dalle_zero.models.transformer import DalleTransformer
from dalle_zero.pipelines.text_to_image import TextToImagePipeline
from dalle_zero.training import checkpoint as ckpt
from dalle_zero.training import loop as training_loop
from dalle_zero.training.dvae import DVAETrainConfig
from dalle_zero.training.loop import TrainTask
from dalle_zero.training.prior import PriorTrainConfig


def train_stage(
    ctx: DemoContext, name: str, build: StageBuilder, *, run_dir: Path | None = None, rate: float | None = None
) -> dict[str, Any]:
    """Plan (once), train (resuming), and check a training stage; see the module docstring.

    The run goes to ``run_dir`` (default ``ctx.run_dir(name)``). ``rate``: steps per second of
    ``build``'s steps already timed (by :func:`choose_precision`), so the plan does not time them again.
    """
    spec = ctx.config.stage(name)
    run_dir = ctx.run_dir(name) if run_dir is None else run_dir
    plan_path = ctx.out / "stages" / f"{name}.plan.json"
    t_stage = time.perf_counter()
    planned_now = False
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
    elif spec.steps is not None:
        plan = {"steps": spec.steps, "rate": None, "seconds": None, "source": "fixed in the preset"}
    else:
        if ctx.reserve is None:
            ctx.reserve = plan_reserve(ctx)
        if rate is None:
            rate = time_steps(ctx, build(spec.min_steps))
        seconds = ctx.windows.get(name) or stage_window(ctx, name)
        steps = budget.plan_steps(
            seconds, rate, safety=ctx.config.safety, min_steps=spec.min_steps, max_steps=spec.max_steps
        )
        plan = {"steps": steps, "rate": rate, "seconds": seconds, "source": "time budget"}
        planned_now = True
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan_path, json.dumps(plan, indent=2) + "\n")
    steps = int(plan["steps"])
    if plan.get("rate"):
        ctx.log(f"  {steps} steps planned ({plan['rate']:.2f} steps/s measured, {plan['seconds']:.0f} s budget)")
    else:
        ctx.log(f"  {steps} steps ({plan['source']})")
    t0 = time.perf_counter()

    def run(steps: int, stop_at: int | None = None) -> None:
        model, task, cfg = build(steps)
        start = max(ckpt.list_steps(run_dir), default=0) if run_dir.is_dir() else 0
        stop_after = None if stop_at is None else stop_at - start
        # training_loop.train is looked up at each call: tests replace it to stop or skip a stage.
        # No "--resume" hint: the demo resumes when its own command runs again, and says so.
        training_loop.train(model, task, cfg.loop, run_dir, train_config=cfg,  # type: ignore[attr-defined]
                            resume=start > 0, progress=ctx.progress, stop_after=stop_after, resume_hint=None)
        reached = max(ckpt.list_steps(run_dir), default=0)
        if reached < (steps if stop_at is None else stop_at):
            raise DemoInterrupted(f"stage {name} stopped at step {reached} of {steps}")

    # Only the run that planned plans again: a resumed stage keeps the plan it was stopped with.
    mark_step, mark_time = 0, t0
    for share in ctx.config.replan_at if planned_now else ():
        replan_step = math.ceil(share * steps)  # a share of the plan in force
        if not mark_step < replan_step < steps:
            continue
        run(steps, stop_at=replan_step)
        now = time.perf_counter()
        # the rate since the last plan: the first segment pays the loop's set-up, later ones see the
        # machine's pace as it is now (a shared machine's drifts by a fifth within a stage)
        rate = (replan_step - mark_step) / max(now - mark_time, 1e-9)
        plan = replan(plan, replan_step, rate, now - t_stage, ctx.config, spec)
        atomic_write_text(plan_path, json.dumps(plan, indent=2) + "\n")
        steps = int(plan["steps"])
        ctx.log(f"  {steps} steps planned again at step {replan_step} ({rate:.2f} steps/s trained)")
        mark_step, mark_time = replan_step, now
    run(steps)
    return {"steps": steps, "train_seconds": time.perf_counter() - t0, **{k: plan[k] for k in ("rate", "seconds")}}


def stage_window(ctx: DemoContext, name: str) -> float:
    """The seconds of stage ``name``: its share of the time left, among the time-budgeted stages still
    to run; a stage that will train beside another (``beside``) shares that one's seconds instead."""
    remaining = []
    for s in TRAIN_STAGES:
        spec = ctx.config.stage(s)
        if s in ctx.done or spec.steps is not None:  # fixed-step stages are not shared
            continue
        if s != name and spec.beside is not None and spec.beside not in ctx.done:
            continue
        remaining.append(spec.share)
    return budget.stage_seconds(ctx.config.stage(name).share, remaining, ctx.seconds_left())


# Measured sampling time x this: besides sampling, the evaluation extracts features, reads images,
# scores and reports, and the machine's speed drifts between the measurement and the evaluation.
TAIL_MARGIN = 1.15


def plan_reserve(ctx: DemoContext) -> float:
    """The seconds kept after the training stages for the showcase, the evaluation and the report.

    ``reserve_seconds`` from the preset, plus the time this machine takes to sample the images of the
    showcase and of the evaluation: :func:`budget.measure_sampling_rate` times one evaluation batch
    with an untrained prior, dVAE and tokenizer of the demo's shapes (sampling costs the same whatever
    the weights), times :data:`TAIL_MARGIN`; at the faster of this stage's thread count and all the
    cores, since the evaluation chooses its own; an evaluation that samples in several processes is
    timed in as many (:func:`budget.parallel_sampling_rate`). A slower machine keeps more, so the demo still ends within
    its minutes (a fixed 150 s let one on a machine half as fast end 53 s late). Measured once per
    output folder and kept in ``stages/reserve.json`` (a resumed run keeps it).
    """
    path = ctx.out / "stages" / "reserve.json"
    if path.is_file():
        return float(json.loads(path.read_text())["seconds"])
    c = ctx.config
    captions = read_captions(data_dir(ctx), "train")[0][:256]
    threads = (torch.get_num_threads(), os.cpu_count() or 1)  # this stage's choice, and all the cores
    pipeline = probe_pipeline(ctx)
    rate, rates = budget.best_sampling_rate(pipeline, c.eval, captions, threads)
    eval_rate = budget.parallel_sampling_rate(pipeline, c.eval, captions) if c.eval.workers > 1 else rate
    sizes = {k: len(v) for k, v in read_dataset_splits(data_dir(ctx)).items()}
    eval_images = c.eval.candidates * sum(
        min(c.eval.samples, sizes.get(split, 0)) * (1 + len(kinds_for(c.eval, split))) for split in c.eval.splits
    )  # each caption kind of a split is sampled like the split itself
    # 3 showcase splits, the image-to-image example and the plain-word captions; drawn a caption at a
    # time, about half as fast
    showcase_images = (3 * c.showcase_captions + 1 + len(c.plain_captions)) * c.showcase_candidates
    sampling = eval_images / eval_rate + 2 * showcase_images / rate  # the showcase samples in this process
    seconds = c.reserve_seconds + TAIL_MARGIN * sampling
    record = {"seconds": seconds, "images_per_second": rate, "eval_images_per_second": eval_rate,
              "eval_workers": c.eval.workers, "eval_images": eval_images,
              "showcase_images": showcase_images, "fixed_seconds": c.reserve_seconds,
              "images_per_second_by_threads": {str(n): r for n, r in rates.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    by_threads = ", ".join(f"{r:.0f} on {n} thread{'s' * (n > 1)}" for n, r in rates.items())
    if c.eval.workers > 1:
        by_threads += f"; {eval_rate:.0f} in {c.eval.workers} processes"
    ctx.log(f"  {seconds:.0f} s kept for the showcase and the evaluation (images/s sampled: {by_threads})")
    return seconds


def probe_pipeline(ctx: DemoContext) -> Any:
    """An untrained pipeline of the demo's shapes (its tokenizer, dVAE and prior configs), for timing."""
    tokenizer = load_tokenizer(ctx)
    dvae_fields = image_stage_fields(ctx, ctx.config.stage("dvae").config, 1)
    dvae_config = DVAETrainConfig.from_dict(dvae_fields, source="demo dvae stage").model
    prior_fields = with_loop(ctx.config.stage("prior").config, 1)
    prior_fields["model"] = {
        **(prior_fields.get("model") or {}),
        "image_grid": dvae_config.grid_size, "image_vocab_size": dvae_config.vocab_size,
        "text_vocab_size": tokenizer.vocab_size, "text_seq_len": tokenizer.text_seq_len,
    }
    prior_fields["tokens"] = str(ctx.tokens_dir)  # not read here
    prior_config = PriorTrainConfig.from_dict(prior_fields, source="demo prior stage").model
    with seeded(0):  # the initialisation leaves torch's global stream as it was
        dvae, prior = DiscreteVAE(dvae_config), DalleTransformer(prior_config)
    return TextToImagePipeline(tokenizer, dvae.eval(), prior.eval())


def replan(
    plan: dict[str, Any], reached: int, rate: float, stage_seconds: float, config: DemoConfig, spec: StageSpec
) -> dict[str, Any]:
    """``plan`` with its step count set again from the rate the stage really trained at.

    The stage has reached step ``reached``, lately at ``rate`` steps per second (data loading,
    checkpoints and the loop's own set-up included); ``stage_seconds`` have gone since it started (the
    probe too), out of the plan's ``seconds``. The steps still to go are ``replan_safety`` times the
    seconds left at that rate. Each re-plan is appended to ``replanned``: where, at what rate, and the
    step count it replaced.
    """
    steps = reached + budget.plan_steps(
        plan["seconds"] - stage_seconds, rate, safety=config.replan_safety,
        min_steps=max(1, spec.min_steps - reached), max_steps=spec.max_steps - reached,
    )  # the spec's step bounds hold for the whole stage
    record = {"at": reached, "rate": rate, "steps_before": plan["steps"]}
    return {**plan, "steps": steps, "replanned": [*plan.get("replanned", []), record]}


def choose_precision(ctx: DemoContext, name: str, build: PrecisionBuilder) -> tuple[str | None, float | None]:
    """(precision, steps/s) for stage ``name``. The precision is None (its preset's) unless the preset asks
    for bf16; then whichever of "bf16" and "fp32" runs the stage's own steps faster here, timed by
    :func:`budget.measure_steps_per_second` on ``build(min_steps, precision)`` (ties go to fp32).

    A CPU without bf16 instructions runs bf16 autocast many times slower; on one with them the gain
    depends on the shapes, and a single product can be slower while a whole train step is faster
    (docs/history.md, "bf16 only where it is faster"), so the stage's steps are what is timed.
    Decided once per output folder (``stages/<name>.precision.json``), so a resumed stage keeps it.
    The rate is that of the precision chosen, when it was timed just now
    (None otherwise): :func:`train_stage` plans from it instead of timing the same steps again."""
    loop = ctx.config.stage(name).config.get("loop") or {}
    if loop.get("precision") != "bf16":
        return None, None
    path = ctx.out / "stages" / f"{name}.precision.json"
    if path.is_file():
        return str(json.loads(path.read_text())["precision"]), None
    min_steps = ctx.config.stage(name).min_steps
    rates = {precision: time_steps(ctx, build(min_steps, precision)) for precision in ("fp32", "bf16")}
    precision = "bf16" if rates["bf16"] > rates["fp32"] else "fp32"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"precision": precision, "steps_per_second": rates}, indent=2) + "\n")
    ctx.log(f"  precision: {precision} (steps/s: fp32 {rates['fp32']:.2f}, bf16 {rates['bf16']:.2f})")
    return precision, rates[precision]


def time_steps(ctx: DemoContext, built: tuple[nn.Module, TrainTask, Config]) -> float:
    """Steps per second of a built stage (:func:`budget.measure_steps_per_second`, calibration steps)."""
    model, task, cfg = built
    loop = cfg.loop  # type: ignore[attr-defined]
    return budget.measure_steps_per_second(model, task, loop, steps=ctx.config.calibration_steps)
