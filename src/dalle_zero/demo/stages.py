"""The stages of ``dalle demo``, each a function of a :class:`~dalle_zero.demo.context.DemoContext`
(paper §2: stage 1, stage 2, §2.6).

Every stage calls the library function behind the matching ``dalle`` command (dataset builder, BPE
training, the shared training loop with each stage's task, the encoder, the pipeline) and returns
a small JSON-ready summary. Training stages go through
:func:`~dalle_zero.demo.timed_training.train_stage` (their share of the minutes), the yardsticks
through :func:`~dalle_zero.demo.yardsticks.cached_train_stage` (trained once per dataset).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from dalle_zero.config import Config
from dalle_zero.data.emoji import build_emoji_dataset
from dalle_zero.data.metadata import read_dataset_splits, read_metadata
from dalle_zero.data.npm import default_cache_dir
from dalle_zero.data.sources import read_captions
from dalle_zero.data.tokens import read_token_index
from dalle_zero.demo.config import DemoConfig
from dalle_zero.demo.context import (
    DemoContext,
    data_dir,
    image_stage_fields,
    load_tokenizer,
    seeded,
    with_loop,
)
from dalle_zero.demo.timed_training import choose_precision, train_stage
from dalle_zero.demo.yardsticks import cached_train_stage
from dalle_zero.evaluation.samples import pick_evenly
from dalle_zero.models.clip import DalleCLIP
from dalle_zero.models.dvae import DiscreteVAE
from dalle_zero.models.evaluator import EmojiEvaluator
from dalle_zero.models.transformer import DalleTransformer
from dalle_zero.pipelines.sampling_defaults import SamplingDefaults
from dalle_zero.pipelines.text_to_image import TextToImagePipeline
from dalle_zero.tokenizers.bpe import BPETokenizer
from dalle_zero.training.clip import CLIPTask, CLIPTrainConfig
from dalle_zero.training.clip import build_model as build_clip
from dalle_zero.training.dvae import DVAETask, DVAETrainConfig, build_datasets
from dalle_zero.training.dvae import build_model as build_dvae
from dalle_zero.training.encode import encode_folder
from dalle_zero.training.evaluator import EvaluatorTask, EvaluatorTrainConfig, build_train_config
from dalle_zero.training.loop import TrainTask
from dalle_zero.training.prior import PriorTask, PriorTrainConfig
from dalle_zero.training.prior import build_model as build_prior
from dalle_zero.training.prior_data import data_model_fields
from dalle_zero.training.run_files import best_model, last_validation, validation_at

logger = logging.getLogger(__name__)

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
    captions, _ = read_captions(data_dir(ctx), "train")
    tok = BPETokenizer.train(
        captions, vocab_size=c.vocab_size, text_seq_len=c.text_seq_len, min_frequency=c.min_frequency
    )
    lengths = [len(ids) for ids in tok.tokenize(captions)]
    tok.save_pretrained(ctx.tokenizer_dir)
    truncated = sum(n > c.text_seq_len for n in lengths)
    return {"vocab_size": tok.vocab_size, "max_caption_tokens": max(lengths), "truncated": truncated}


# ---------------------------------------------------------------------------------------------
# training stages


def stage_dvae(ctx: DemoContext) -> dict[str, Any]:
    spec = ctx.config.stage("dvae")
    cache: dict[str, Any] = {}

    def build(steps: int, precision: str | None = None) -> tuple[nn.Module, TrainTask, Config]:
        fields = image_stage_fields(ctx, spec.config, steps)
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
    encode_folder(ctx.run_dir("dvae"), data_dir(ctx), ctx.tokens_dir, progress=ctx.progress)
    index = read_token_index(ctx.tokens_dir)
    h, _ = index["grid"]
    return {"items": int(index["count"]), "image_grid": int(h), "image_vocab_size": int(index["image_vocab_size"])}


def _clip_stage(ctx: DemoContext, name: str) -> dict[str, Any]:
    spec = ctx.config.stage(name)
    tokenizer = load_tokenizer(ctx)

    def build(steps: int) -> tuple[nn.Module, TrainTask, Config]:
        fields = image_stage_fields(
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
        fields = image_stage_fields(ctx, spec.config, steps)
        cfg = build_train_config(EvaluatorTrainConfig.from_dict(fields, source="demo evaluator stage"))
        if "task" not in cache:
            cache["task"] = EvaluatorTask.from_folder(cfg)
        task = EvaluatorTask(cfg, cache["task"].train_data, cache["task"].eval_data)
        with seeded(cfg.loop.seed):
            net = EmojiEvaluator(cfg.model)
        return net, task, cfg

    reads = EvaluatorTrainConfig.from_dict(spec.config, source="demo evaluator stage").label_fields
    result = cached_train_stage(ctx, "evaluator", build, reads=reads)
    result["accuracy"] = last_validation(ctx.run_dir("evaluator"))
    return result


def stage_prior(ctx: DemoContext) -> dict[str, Any]:
    spec = ctx.config.stage("prior")
    tokenizer = load_tokenizer(ctx)
    model_fields = data_model_fields(str(ctx.tokens_dir), tokenizer, str(ctx.tokenizer_dir))

    def build(steps: int, precision: str | None = None) -> tuple[nn.Module, TrainTask, Config]:
        fields = with_loop(spec.config, steps)
        if precision is not None:
            fields["loop"]["precision"] = precision
        fields["tokens"] = str(ctx.tokens_dir)
        fields["tokenizer"] = str(ctx.tokenizer_dir)
        fields["model"] = {**(fields.get("model") or {}), **{k: v for k, (v, _) in model_fields.items()}}
        cfg = PriorTrainConfig.from_dict(fields, source="demo prior stage")
        return build_prior(cfg), PriorTask(cfg, tokenizer=tokenizer), cfg

    precision, rate = choose_precision(ctx, "prior", build)
    result = train_stage(ctx, "prior", lambda steps: build(steps, precision), rate=rate)
    run_dir = ctx.run_dir("prior")
    result["validation"] = last_validation(run_dir)
    best = best_model(run_dir)  # the model the demo keeps: the prior at its lowest validation loss
    if best is not None and isinstance(best[1].get("step"), int):
        result["kept"] = {"step": best[1]["step"], "validation": validation_at(run_dir, best[1]["step"])}
    return result


def stage_assemble(ctx: DemoContext) -> dict[str, Any]:
    """Tokenizer + dVAE + prior + reranker -> one model folder (``dalle assemble``)."""
    best = best_model(ctx.run_dir("prior"))  # the prior at its lowest validation loss, if it kept one
    prior_dir = best[0] if best is not None else ctx.run_dir("prior") / "model"
    pipeline = TextToImagePipeline(
        load_tokenizer(ctx),
        DiscreteVAE.from_pretrained(ctx.run_dir("dvae") / "model"),
        DalleTransformer.from_pretrained(prior_dir),
        DalleCLIP.from_pretrained(ctx.run_dir("clip") / "model"),
        examples=example_captions(ctx),
        sampling=recommended_sampling(ctx.config),
    )
    pipeline.save_pretrained(ctx.model_dir)
    return {"model": str(ctx.model_dir), "prior": str(prior_dir), "prior_selected": best[1] if best else None}


def recommended_sampling(config: DemoConfig) -> SamplingDefaults:
    """The settings the demo samples with, stored in the model folder so that a plain
    ``dalle generate``, the API and the page draw as its showcase did: the evaluation's temperature
    and guidance, and the showcase's candidates per caption."""
    e = config.eval
    return SamplingDefaults(
        temperature=e.temperature,
        guidance_scale=e.guidance_scale,
        guidance_top_p=1.0 if e.guidance_top_p is None else e.guidance_top_p,  # None: plain guidance
        candidates=config.showcase_candidates,
    )


def example_captions(ctx: DemoContext, count: int = 12) -> list[str]:
    """Captions that show a user the model's language (``dalle generate --examples``, the web page):
    the demo's plain-word captions, then plain captions of training images, one concept each."""
    out = list(ctx.config.plain_captions)
    meta, train = read_metadata(data_dir(ctx)), read_dataset_splits(data_dir(ctx)).get("train", [])
    concepts = {meta[s].get("concept"): s for s in train if s in meta and meta[s].get("plain_caption")}
    for stem in pick_evenly(sorted(concepts.values()), max(count - len(out), 0)):
        if meta[stem]["plain_caption"] not in out:
            out.append(str(meta[stem]["plain_caption"]))
    return out
