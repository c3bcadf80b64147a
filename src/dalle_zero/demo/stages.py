"""The stages of ``dalle demo``, each a function of a :class:`DemoContext` (paper §2: stage 1, stage 2, §2.6).

Every stage calls the library function behind the matching ``dalle`` command (dataset builder, BPE
training, the shared training loop with each stage's task, the encoder, the pipeline) and returns
a small JSON-ready summary. Training stages go through :func:`train_stage`, which

1. builds the stage's train config from the demo preset (data paths and vocabularies filled in),
2. fixes the step count: the spec's ``steps``, or its share of the time left times the steps per
   second measured now (:mod:`dalle_zero.demo.budget`), saved to ``stages/<name>.plan.json``; a
   time-budgeted stage plans once more after ``replan_at`` of those steps, from the rate it really
   trained at (:func:`replan`), and that plan is kept for good,
3. trains with the shared loop, resuming from the run's last checkpoint when run again,
4. raises :class:`DemoInterrupted` if the loop stopped early (Ctrl-C), so the stage is not marked done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dalle_zero.config import Config
from dalle_zero.data.emoji import build_emoji_dataset
from dalle_zero.data.metadata import read_dataset_splits, read_metadata
from dalle_zero.data.npm import default_cache_dir
from dalle_zero.data.sources import read_captions
from dalle_zero.data.tokens import read_token_index
from dalle_zero.demo import budget
from dalle_zero.demo.config import TRAIN_STAGES, DemoConfig, StageSpec
from dalle_zero.evaluation.caption_kinds import kinds_for
from dalle_zero.evaluation.evaluate import pick_evenly
from dalle_zero.io import atomic_directory, atomic_write_text
from dalle_zero.models.clip import DalleCLIP
from dalle_zero.models.dvae import DiscreteVAE
from dalle_zero.models.evaluator import EmojiEvaluator
from dalle_zero.models.transformer import DalleTransformer
from dalle_zero.pipelines.sampling_defaults import SamplingDefaults
from dalle_zero.pipelines.text_to_image import TextToImagePipeline
from dalle_zero.tokenizers.bpe import BPETokenizer
from dalle_zero.training import checkpoint as ckpt
from dalle_zero.training import loop as training_loop
from dalle_zero.training.clip import CLIPTask, CLIPTrainConfig
from dalle_zero.training.clip import build_model as build_clip
from dalle_zero.training.dvae import DVAETask, DVAETrainConfig, build_datasets
from dalle_zero.training.dvae import build_model as build_dvae
from dalle_zero.training.encode import encode_folder
from dalle_zero.training.evaluator import EvaluatorTask, EvaluatorTrainConfig, build_train_config
from dalle_zero.training.loop import TrainTask, best_model, last_validation
from dalle_zero.training.prior import PriorTask, PriorTrainConfig, data_model_fields
from dalle_zero.training.prior import build_model as build_prior

logger = logging.getLogger(__name__)

# Builds (model, task, train config) for a given step count.
StageBuilder = Callable[[int], tuple[nn.Module, TrainTask, Config]]
PrecisionBuilder = Callable[[int, str], tuple[nn.Module, TrainTask, Config]]  # (steps, precision)


class DemoInterrupted(Exception):
    """A stage stopped before its end (Ctrl-C); its checkpoint lets the next run resume it."""


@dataclass
class DemoContext:
    """What the stages share: output folder, settings, dataset folder, time used so far."""

    out: Path
    config: DemoConfig
    data: Path | None = None
    progress: bool = True
    elapsed: float = 0.0  # seconds spent by finished stages (all runs) plus this run's current stage start
    done: list[str] = field(default_factory=list)  # training stages already finished
    log: Callable[[str], None] = print
    reserve: float | None = None  # seconds kept after training (plan_reserve); None: config.reserve_seconds

    @property
    def tokenizer_dir(self) -> Path:
        return self.out / "tokenizer"

    @property
    def tokens_dir(self) -> Path:
        return self.out / "tokens"

    def run_dir(self, stage: str) -> Path:
        return self.out / "runs" / stage

    @property
    def model_dir(self) -> Path:
        return self.out / "model"

    def seconds_left(self) -> float:
        reserve = self.config.reserve_seconds if self.reserve is None else self.reserve
        return self.config.minutes * 60.0 - self.elapsed - reserve


# ---------------------------------------------------------------------------------------------
# data and tokenizer


def default_data_dir(config: DemoConfig) -> Path:
    """Where the demo keeps its dataset between runs: ``~/.cache/dalle-zero/datasets/emoji-<styles>-<size>``."""
    d = config.dataset
    tones = "" if d.skin_tones else "-notones"
    return default_cache_dir().parent / "datasets" / f"emoji-{'-'.join(d.styles)}-{d.size}{tones}-s{d.splits.seed}"


def stage_data(ctx: DemoContext) -> dict[str, Any]:
    """Build (or reuse) the emoji dataset; with ``--data`` use that folder as it is."""
    if ctx.data is not None:
        if not (ctx.data / "splits.json").is_file() or not (ctx.data / "metadata.jsonl").is_file():
            raise FileNotFoundError(f"--data: {ctx.data} has no splits.json/metadata.jsonl (use `dalle data emoji`)")
        splits = json.loads((ctx.data / "splits.json").read_text())
        counts = {k: len(v) for k, v in splits.items()}
        return {"data": str(ctx.data), "built": False, "images": sum(counts.values()), "splits": counts}
    path = default_data_dir(ctx.config)
    s = build_emoji_dataset(ctx.config.dataset, path, progress=ctx.progress)
    ctx.data = path
    return {"data": str(path), "built": not s.reused, "images": s.images, "splits": s.split_counts}


def stage_tokenizer(ctx: DemoContext) -> dict[str, Any]:
    c = ctx.config
    captions, _ = read_captions(_data(ctx), "train")
    tok = BPETokenizer.train(
        captions, vocab_size=c.vocab_size, text_seq_len=c.text_seq_len, min_frequency=c.min_frequency
    )
    lengths = [len(ids) for ids in tok.tokenize(captions)]
    tok.save_pretrained(ctx.tokenizer_dir)
    truncated = sum(n > c.text_seq_len for n in lengths)
    return {"vocab_size": tok.vocab_size, "max_caption_tokens": max(lengths), "truncated": truncated}


def _data(ctx: DemoContext) -> Path:
    if ctx.data is None:
        raise RuntimeError("the data stage has not run")
    return ctx.data


def _tokenizer(ctx: DemoContext) -> BPETokenizer:
    return BPETokenizer.from_pretrained(ctx.tokenizer_dir)


def _with_loop(fields: dict[str, Any], steps: int) -> dict[str, Any]:
    """Stage config fields with ``loop.steps`` set, checkpoints ~8 times and evaluation only at the end."""
    loop = dict(fields.get("loop") or {})
    loop["steps"] = steps
    loop.setdefault("checkpoint_every", budget.every(steps, 8))
    loop.setdefault("log_every", budget.every(steps, 100))
    # evaluation only at the end, unless the stage keeps its best model: then at every checkpoint
    loop["eval_every"] = loop["checkpoint_every"] if loop.get("select_by") else 0
    return {**fields, "loop": loop}


def _image_stage_fields(ctx: DemoContext, config: dict[str, Any], steps: int, **model: Any) -> dict[str, Any]:
    """:func:`_with_loop` fields of a stage trained on the dataset's images: its folder, its image size
    (unless the stage config sets one) and ``model`` overrides."""
    fields = _with_loop(config, steps)
    fields["data"] = str(_data(ctx))
    fields["model"] = {"image_size": ctx.config.dataset.size, **(fields.get("model") or {}), **model}
    return fields


# ---------------------------------------------------------------------------------------------
# training stages


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
            rate = _time_steps(ctx, build(spec.min_steps))
        remaining = [ctx.config.stage(s).share for s in TRAIN_STAGES  # fixed-step stages are not shared
                     if s not in ctx.done and ctx.config.stage(s).steps is None]
        seconds = budget.stage_seconds(spec.share, remaining, ctx.seconds_left())
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
        # training_loop.train is looked up at each call: tests replace it to stop or skip a stage
        training_loop.train(model, task, cfg.loop, run_dir, train_config=cfg,  # type: ignore[attr-defined]
                            resume=start > 0, progress=ctx.progress, stop_after=stop_after)
        reached = max(ckpt.list_steps(run_dir), default=0)
        if reached < (steps if stop_at is None else stop_at):
            raise DemoInterrupted(f"stage {name} stopped at step {reached} of {steps}")

    replan_step = math.ceil(ctx.config.replan_at * steps)
    if planned_now and 0 < replan_step < steps:
        run(steps, stop_at=replan_step)
        plan = replan(plan, replan_step, time.perf_counter() - t0, time.perf_counter() - t_stage, ctx.config, spec)
        atomic_write_text(plan_path, json.dumps(plan, indent=2) + "\n")
        steps = int(plan["steps"])
        rate = plan["replanned"]["rate"]
        ctx.log(f"  {steps} steps planned again at step {replan_step} ({rate:.2f} steps/s trained)")
    run(steps)
    return {"steps": steps, "train_seconds": time.perf_counter() - t0, **{k: plan[k] for k in ("rate", "seconds")}}


# Measured sampling time x this: the evaluation also extracts features, reads images, scores and
# reports, and the machine's speed drifts (2026-12-02: 31 images/s sampled, 228 s for 6,400 in all).
TAIL_MARGIN = 1.15


def plan_reserve(ctx: DemoContext) -> float:
    """The seconds kept after the training stages for the showcase, the evaluation and the report.

    ``reserve_seconds`` from the preset, plus the time this machine takes to sample the images of the
    showcase and of the evaluation: :func:`budget.measure_sampling_rate` times one evaluation batch
    with an untrained prior, dVAE and tokenizer of the demo's shapes (sampling costs the same whatever
    the weights), times :data:`TAIL_MARGIN`; at the faster of this stage's thread count and all the
    cores, since the evaluation chooses its own. A slower machine keeps more, so the demo still ends within
    its minutes (a fixed 150 s let one on a machine half as fast end 53 s late). Measured once per
    output folder and kept in ``stages/reserve.json`` (a resumed run keeps it).
    """
    path = ctx.out / "stages" / "reserve.json"
    if path.is_file():
        return float(json.loads(path.read_text())["seconds"])
    c = ctx.config
    captions = read_captions(_data(ctx), "train")[0][:256]
    threads = (torch.get_num_threads(), os.cpu_count() or 1)  # this stage's choice, and all the cores
    rate, rates = budget.best_sampling_rate(probe_pipeline(ctx), c.eval, captions, threads)
    sizes = {k: len(v) for k, v in read_dataset_splits(_data(ctx)).items()}
    eval_images = c.eval.candidates * sum(
        min(c.eval.samples, sizes.get(split, 0)) * (1 + len(kinds_for(c.eval, split))) for split in c.eval.splits
    )  # each caption kind of a split is sampled like the split itself
    # 3 showcase splits, the image-to-image example and the plain-word captions; drawn a caption at a
    # time, about half as fast
    showcase_images = (3 * c.showcase_captions + 1 + len(c.plain_captions)) * c.showcase_candidates
    sampling = (eval_images + 2 * showcase_images) / rate
    seconds = c.reserve_seconds + TAIL_MARGIN * sampling
    record = {"seconds": seconds, "images_per_second": rate, "eval_images": eval_images,
              "showcase_images": showcase_images, "fixed_seconds": c.reserve_seconds,
              "images_per_second_by_threads": {str(n): r for n, r in rates.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    by_threads = ", ".join(f"{r:.0f} on {n} thread{'s' * (n > 1)}" for n, r in rates.items())
    ctx.log(f"  {seconds:.0f} s kept for the showcase and the evaluation (images/s sampled: {by_threads})")
    return seconds


def probe_pipeline(ctx: DemoContext) -> Any:
    """An untrained pipeline of the demo's shapes (its tokenizer, dVAE and prior configs), for timing."""
    tokenizer = _tokenizer(ctx)
    dvae_fields = _image_stage_fields(ctx, ctx.config.stage("dvae").config, 1)
    dvae_config = DVAETrainConfig.from_dict(dvae_fields, source="demo dvae stage").model
    prior_fields = _with_loop(ctx.config.stage("prior").config, 1)
    prior_fields["model"] = {
        **(prior_fields.get("model") or {}),
        "image_grid": dvae_config.grid_size, "image_vocab_size": dvae_config.vocab_size,
        "text_vocab_size": tokenizer.vocab_size, "text_seq_len": tokenizer.text_seq_len,
    }
    prior_fields["tokens"] = str(ctx.tokens_dir)  # not read here
    prior_config = PriorTrainConfig.from_dict(prior_fields, source="demo prior stage").model
    with _seeded(0):  # the initialisation leaves torch's global stream as it was
        dvae, prior = DiscreteVAE(dvae_config), DalleTransformer(prior_config)
    return TextToImagePipeline(tokenizer, dvae.eval(), prior.eval())


def replan(
    plan: dict[str, Any], reached: int, train_seconds: float, stage_seconds: float, config: DemoConfig, spec: StageSpec
) -> dict[str, Any]:
    """``plan`` with its step count set again from the rate the stage really trained at.

    ``reached`` steps took ``train_seconds`` of training (data loading, a checkpoint and the loop's own
    set-up included); ``stage_seconds`` have gone since the stage started (the probe too), out of the
    plan's ``seconds``. The steps still to go are ``replan_safety`` times the seconds left at that rate; the
    previous figures are kept under ``replanned``.
    """
    rate = reached / max(train_seconds, 1e-9)
    steps = reached + budget.plan_steps(
        plan["seconds"] - stage_seconds, rate, safety=config.replan_safety,
        min_steps=max(1, spec.min_steps - reached), max_steps=spec.max_steps - reached,
    )  # the spec's step bounds hold for the whole stage
    return {**plan, "steps": steps, "replanned": {"at": reached, "rate": rate, "probe_steps": plan["steps"]}}


def stage_dvae(ctx: DemoContext) -> dict[str, Any]:
    spec = ctx.config.stage("dvae")
    cache: dict[str, Any] = {}

    def build(steps: int, precision: str | None = None) -> tuple[nn.Module, TrainTask, Config]:
        fields = _image_stage_fields(ctx, spec.config, steps)
        if precision is not None:
            fields["loop"]["precision"] = precision
        cfg = DVAETrainConfig.from_dict(fields, source="demo dvae stage")
        if "data" not in cache:
            cache["data"] = build_datasets(cfg)
        train_data, eval_data, _ = cache["data"]
        return build_dvae(cfg), DVAETask(cfg, train_data=train_data, eval_data=eval_data), cfg

    precision, rate = choose_precision(ctx, "dvae", build)
    return train_stage(ctx, "dvae", lambda steps: build(steps, precision), rate=rate)


def stage_encode(ctx: DemoContext) -> dict[str, Any]:
    """Encode every image of the dataset with the frozen dVAE into token shards (``dalle encode``)."""
    encode_folder(ctx.run_dir("dvae"), _data(ctx), ctx.tokens_dir, progress=ctx.progress)
    index = read_token_index(ctx.tokens_dir)
    h, _ = index["grid"]
    return {"items": int(index["count"]), "image_grid": int(h), "image_vocab_size": int(index["image_vocab_size"])}


def _clip_stage(ctx: DemoContext, name: str) -> dict[str, Any]:
    spec = ctx.config.stage(name)
    tokenizer = _tokenizer(ctx)

    def build(steps: int) -> tuple[nn.Module, TrainTask, Config]:
        fields = _image_stage_fields(
            ctx, spec.config, steps, text_vocab_size=tokenizer.vocab_size, text_seq_len=tokenizer.text_seq_len
        )
        fields["tokenizer"] = str(ctx.tokenizer_dir)
        if fields.get("recon_prob"):  # the reranker sees part of its images as the demo's dVAE decodes them
            fields["dvae"] = str(ctx.run_dir("dvae") / "model")
        cfg = CLIPTrainConfig.from_dict(fields, source=f"demo {name} stage")
        return build_clip(cfg), CLIPTask(cfg, tokenizer), cfg

    return cached_train_stage(ctx, name, build, inputs=[ctx.tokenizer_dir / "tokenizer.json"])


def stage_clip(ctx: DemoContext) -> dict[str, Any]:
    """The reranker (paper §2.6)."""
    return _clip_stage(ctx, "clip")


def stage_eval_clip(ctx: DemoContext) -> dict[str, Any]:
    """A second CLIP with another seed, used only for R-precision (never for reranking)."""
    return _clip_stage(ctx, "eval_clip")


def stage_evaluator(ctx: DemoContext) -> dict[str, Any]:
    spec = ctx.config.stage("evaluator")
    cache: dict[str, Any] = {}

    def build(steps: int) -> tuple[nn.Module, TrainTask, Config]:
        fields = _image_stage_fields(ctx, spec.config, steps)
        cfg = build_train_config(EvaluatorTrainConfig.from_dict(fields, source="demo evaluator stage"))
        if "task" not in cache:
            cache["task"] = EvaluatorTask.from_folder(cfg)
        task = EvaluatorTask(cfg, cache["task"].train_data, cache["task"].eval_data)
        with _seeded(cfg.loop.seed):
            net = EmojiEvaluator(cfg.model)
        return net, task, cfg

    result = cached_train_stage(ctx, "evaluator", build)
    result["accuracy"] = last_validation(ctx.run_dir("evaluator"))
    return result


def cached_train_stage(
    ctx: DemoContext, name: str, build: StageBuilder, *, inputs: Sequence[Path] = ()
) -> dict[str, Any]:
    """:func:`train_stage`, or, for a spec with ``cache``, train once into the user cache and reuse.

    A cached stage (the evaluator and the R-precision CLIP: yardsticks, not parts of the model) is
    trained with its fixed step count in :func:`stage_cache_dir`, marked finished there, and copied
    into ``runs/<name>``; a later demo on the same dataset, settings and ``inputs`` copies it again.
    """
    spec = ctx.config.stage(name)
    if not spec.cache:
        return train_stage(ctx, name, build)
    assert spec.steps is not None  # StageSpec checks it
    cached = stage_cache_dir(name, _data(ctx), _with_loop(spec.config, spec.steps), inputs)
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


def stage_cache_dir(name: str, data: Path, fields: dict[str, Any], inputs: Sequence[Path] = ()) -> Path:
    """``~/.cache/dalle-zero/<name>/<dataset>-<key>``: one run per dataset, settings and input files.

    The key hashes the stage's train-config fields, the dataset's ``splits.json`` and
    ``metadata.jsonl`` (a rebuilt or different dataset gets its own run) and ``inputs`` (e.g. the
    BPE tokenizer a CLIP reads captions with).
    """
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for path in (data / "splits.json", data / "metadata.jsonl", *inputs):
        h.update(Path(path).read_bytes())
    return default_cache_dir().parent / name / f"{data.name}-{h.hexdigest()[:12]}"


def _copy_run(source: Path, dest: Path) -> None:
    """The finished run's model, config and metrics into ``dest`` (replacing it), written whole or not at all."""
    with atomic_directory(dest) as tmp:
        shutil.copytree(source / "model", tmp / "model")
        for name in ("metrics.jsonl", "train_config.json"):
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)


def stage_prior(ctx: DemoContext) -> dict[str, Any]:
    spec = ctx.config.stage("prior")
    tokenizer = _tokenizer(ctx)
    model_fields = data_model_fields(str(ctx.tokens_dir), tokenizer, str(ctx.tokenizer_dir))

    def build(steps: int, precision: str | None = None) -> tuple[nn.Module, TrainTask, Config]:
        fields = _with_loop(spec.config, steps)
        if precision is not None:
            fields["loop"]["precision"] = precision
        fields["tokens"] = str(ctx.tokens_dir)
        fields["tokenizer"] = str(ctx.tokenizer_dir)
        fields["model"] = {**(fields.get("model") or {}), **{k: v for k, (v, _) in model_fields.items()}}
        cfg = PriorTrainConfig.from_dict(fields, source="demo prior stage")
        return build_prior(cfg), PriorTask(cfg, tokenizer=tokenizer), cfg

    precision, rate = choose_precision(ctx, "prior", build)
    result = train_stage(ctx, "prior", lambda steps: build(steps, precision), rate=rate)
    result["validation"] = last_validation(ctx.run_dir("prior"))
    return result


def choose_precision(ctx: DemoContext, name: str, build: PrecisionBuilder) -> tuple[str | None, float | None]:
    """(precision, steps/s) for stage ``name``. The precision is None (its preset's) unless the preset asks
    for bf16; then whichever of "bf16" and "fp32" runs the stage's own steps faster here, timed by
    :func:`budget.measure_steps_per_second` on ``build(min_steps, precision)`` (ties go to fp32).

    A CPU without bf16 instructions runs bf16 autocast many times slower (an AVX2-only AMD EPYC:
    0.05x); on one with them the gain depends on the shapes (an Intel Xeon with AMX: a single
    512x256x512 product ran at 0.93x, the demo prior's steps at 1.9x), so the stage's steps are
    what is timed. Decided once per output folder (``stages/<name>.precision.json``),
    so a resumed stage keeps it. The rate is that of the precision chosen, when it was timed just now
    (None otherwise): :func:`train_stage` plans from it instead of timing the same steps again."""
    loop = ctx.config.stage(name).config.get("loop") or {}
    if loop.get("precision") != "bf16":
        return None, None
    path = ctx.out / "stages" / f"{name}.precision.json"
    if path.is_file():
        return str(json.loads(path.read_text())["precision"]), None
    min_steps = ctx.config.stage(name).min_steps
    rates = {precision: _time_steps(ctx, build(min_steps, precision)) for precision in ("fp32", "bf16")}
    precision = "bf16" if rates["bf16"] > rates["fp32"] else "fp32"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"precision": precision, "steps_per_second": rates}, indent=2) + "\n")
    ctx.log(f"  precision: {precision} (steps/s: fp32 {rates['fp32']:.2f}, bf16 {rates['bf16']:.2f})")
    return precision, rates[precision]


def _time_steps(ctx: DemoContext, built: tuple[nn.Module, TrainTask, Config]) -> float:
    """Steps per second of a built stage (:func:`budget.measure_steps_per_second`, calibration steps)."""
    model, task, cfg = built
    loop = cfg.loop  # type: ignore[attr-defined]
    return budget.measure_steps_per_second(model, task, loop, steps=ctx.config.calibration_steps)


def stage_assemble(ctx: DemoContext) -> dict[str, Any]:
    """Tokenizer + dVAE + prior + reranker -> one model folder (``dalle assemble``)."""
    best = best_model(ctx.run_dir("prior"))  # the prior at its lowest validation loss, if it kept one
    prior_dir = best[0] if best is not None else ctx.run_dir("prior") / "model"
    pipeline = TextToImagePipeline(
        _tokenizer(ctx),
        DiscreteVAE.from_pretrained(ctx.run_dir("dvae") / "model"),
        DalleTransformer.from_pretrained(prior_dir),
        DalleCLIP.from_pretrained(ctx.run_dir("clip") / "model"),
        examples=example_captions(ctx),
        sampling=recommended_sampling(ctx.config),
    )
    pipeline.save_pretrained(ctx.model_dir)
    return {"model": str(ctx.model_dir), "prior": str(prior_dir), "prior_selected": best[1] if best else None}


def recommended_sampling(config: DemoConfig) -> SamplingDefaults:
    """The settings the demo's showcase and evaluation sample with, stored in the model folder so
    that a plain ``dalle generate``, the API and the page draw as the demo's figures were measured."""
    e = config.eval
    return SamplingDefaults(
        temperature=e.temperature,
        guidance_scale=e.guidance_scale,
        guidance_top_p=e.guidance_top_p,
        candidates=config.showcase_candidates,
    )


def example_captions(ctx: DemoContext, count: int = 12) -> list[str]:
    """Captions that show a user the model's language (``dalle generate --examples``, the web page):
    the demo's plain-word captions, then plain captions of training images, one concept each."""
    out = list(ctx.config.plain_captions)
    meta, train = read_metadata(_data(ctx)), read_dataset_splits(_data(ctx)).get("train", [])
    concepts = {meta[s].get("concept"): s for s in train if s in meta and meta[s].get("plain_caption")}
    for stem in pick_evenly(sorted(concepts.values()), max(count - len(out), 0)):
        if meta[stem]["plain_caption"] not in out:
            out.append(str(meta[stem]["plain_caption"]))
    return out


# ---------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for a model's initialisation, then restore the previous stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
