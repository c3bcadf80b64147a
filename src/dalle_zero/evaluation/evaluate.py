"""The zero-shot evaluation driver behind ``dalle eval`` and ``dalle demo`` (paper §3.1; docs/evaluation.md).

The paper generates images for captions it never trained on and scores them with FID and IS against
real images (§6.1). :func:`evaluate_model` does the same on a dataset built by ``dalle data emoji``:

- for each split (seen ``train`` captions, ``validation``, ``unseen_compositions``,
  ``unseen_concepts``) it takes up to ``samples`` captions, evenly spread over the split, draws
  ``candidates`` images per caption from the prior (keeping the reranker's best when there are
  several) and decodes them with the dVAE;
- in-house FID / KID / Inception Score of those images against the real images of the same captions,
  with the frozen :class:`~dalle_zero.models.evaluator.EmojiEvaluator` as the feature extractor
  (torchmetrics; see :mod:`dalle_zero.evaluation.metrics`);
- R-precision of each image against its own caption among ``r_precision_distractors`` others, scored
  by a CLIP trained apart from the reranker (never the reranker itself);
- the share of images whose skin tone / style the evaluator reads as the one the caption asked for,
  with the same read-out on the real images beside it (how well the evaluator reads them at all);
- concept top-1 / top-5 accuracy: does the evaluator's concept head read the image as the concept
  asked for, beside the same read on the real images and on their dVAE reconstructions (the
  ceilings);
- the last two for several **kinds of caption** (``caption_kinds``): the dataset's canonical caption,
  the plain name alone ("red heart"), the name with its attributes in plain words ("thumbs up, dark
  skin tone, noto style") and a phrasing no training caption uses; the non-canonical kinds are
  sampled for the splits in ``kind_splits`` only, since each kind costs as much sampling as a split;
- how much the prior uses the caption: its bits per image on real images with the right caption, a
  shuffled one and the empty one;
- held-out bits per image token and per (non-pad) text token of the prior on the real pairs;
- dVAE reconstruction PSNR / SSIM and codebook perplexity / usage;
- with a TorchScript Inception-v3 (``inception``), standard FID and IS as well.

Figures from the evaluator are in-house: comparable between our own runs, never to published FID.
:mod:`dalle_zero.evaluation.samples` draws the images; :mod:`dalle_zero.evaluation.figures` turns the
results into the report's table.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from dalle_zero.config import Config, check_float, check_int
from dalle_zero.data.metadata import read_dataset_splits, read_metadata
from dalle_zero.evaluation import metrics
from dalle_zero.evaluation.caption_kinds import CAPTION_KINDS, kind_captions, kinds_for, unseen_template
from dalle_zero.evaluation.figures import IN_HOUSE_NOTE
from dalle_zero.evaluation.readouts import (
    SplitSamples,
    attribute_figures,
    concept_figures,
    kind_figures,
    template_figures,
)
from dalle_zero.evaluation.report import save_image_grid
from dalle_zero.evaluation.samples import draw_caption_lists, load_real_images, pick_evenly
from dalle_zero.models.dvae import round_trip
from dalle_zero.models.dvae_loss import codebook_stats
from dalle_zero.sampling.generate import GUIDANCE_TOP_P

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "unseen_compositions", "unseen_concepts")


@dataclass(frozen=True, kw_only=True)
class EvalConfig(Config):
    """What ``dalle eval`` measures and how many samples it draws."""

    splits: tuple[str, ...] = SPLITS  # splits of splits.json (missing or empty ones are skipped)
    samples: int = 256  # captions per split (one generated image each), evenly spread over the split
    candidates: int = 1  # images drawn per caption; > 1 keeps the reranker's best (paper: best of 512)
    seed: int = 0
    batch_size: int = 64  # sequences sampled at once
    workers: int = 1  # processes that sample side by side, each on an equal part of the cores
    temperature: float = 1.0  # paper: 1
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float = 1.0
    guidance_top_p: float | None = GUIDANCE_TOP_P  # guidance only within the conditional nucleus
    r_precision_distractors: int = 99  # AttnGAN/DM-GAN protocol: 1 true caption among 100
    kid_subsets: int = 50
    dvae_split: str = "validation"  # real images for the reconstruction figures
    dvae_images: int = 512
    grid_images: int = 32  # generated images per split saved as a PNG grid (0: none)
    caption_kinds: tuple[str, ...] = CAPTION_KINDS  # see the module docstring; "canonical" always runs
    kind_splits: tuple[str, ...] = ("train", "unseen_compositions")  # splits sampled with the other kinds
    concept_head: str = "concept"  # the evaluator head that names concepts (skipped if it has none)

    def __post_init__(self) -> None:
        if not self.splits or not all(isinstance(s, str) and s for s in self.splits):
            raise ValueError(f"EvalConfig.splits must be non-empty split names, got {self.splits!r}")
        for name in ("samples", "candidates", "batch_size", "workers", "r_precision_distractors", "kid_subsets"):
            check_int(self, name, min_value=1)
        for name in ("seed", "dvae_images", "grid_images"):
            check_int(self, name, min_value=0)
        check_float(self, "temperature", min_value=0.0, strict_min=True)
        check_float(self, "guidance_scale", min_value=0.0)
        if self.top_k is not None:
            check_int(self, "top_k", min_value=1)
        if self.top_p is not None:
            check_float(self, "top_p", min_value=0.0, max_value=1.0, strict_min=True)
        if self.guidance_top_p is not None:
            check_float(self, "guidance_top_p", min_value=0.0, max_value=1.0, strict_min=True)
        unknown = [k for k in self.caption_kinds if k not in CAPTION_KINDS]
        if unknown or "canonical" not in self.caption_kinds:
            raise ValueError(
                f"EvalConfig.caption_kinds must include 'canonical' and be among {list(CAPTION_KINDS)}, "
                f"got {list(self.caption_kinds)}"
            )


# ---------------------------------------------------------------------------------------------
# figures


@torch.no_grad()
def prior_bits(pipeline: Any, captions: Sequence[str], real: Tensor, *, batch_size: int = 64) -> dict[str, float]:
    """Held-out bits per image token and per non-pad text token of the prior on real (caption, image) pairs."""
    model = pipeline.transformer
    device = pipeline.device
    text = pipeline.tokenizer.encode(list(captions))  # (N, Tt)
    img_sum = txt_sum = 0.0
    img_n = txt_n = 0
    was = model.training
    model.eval()
    try:
        for lo in range(0, len(text), batch_size):
            t = text[lo : lo + batch_size].to(device)
            codes = pipeline.dvae.encode(real[lo : lo + batch_size].to(device)).flatten(1)  # (b, Ti)
            text_logits, image_logits = model(t, codes)  # (b, Tt, Vt), (b, Ti, Vi)
            img_sum += F.cross_entropy(image_logits.flatten(0, 1).float(), codes.flatten(), reduction="sum").item()
            img_n += codes.numel()
            keep = t.flatten() != pipeline.tokenizer.pad_id
            ce = F.cross_entropy(text_logits.flatten(0, 1).float(), t.flatten(), reduction="none")
            txt_sum += ce[keep].sum().item()
            txt_n += int(keep.sum())
    finally:
        model.train(was)
    return {
        "bits_per_image_token": metrics.nats_to_bits(img_sum / max(img_n, 1)),
        "bits_per_text_token": metrics.nats_to_bits(txt_sum / max(txt_n, 1)) if txt_n else math.nan,
    }


@torch.no_grad()
def dvae_figures(dvae: nn.Module, real: Tensor, *, batch_size: int = 128) -> tuple[dict[str, float], Tensor]:
    """PSNR, SSIM, codebook perplexity and usage of the hard-code round trip; and the reconstructions."""
    codes, recon = round_trip(dvae, real, batch_size=batch_size)
    stats = codebook_stats(codes, dvae.config.vocab_size)
    out = {
        "n_images": len(real),
        "psnr": metrics.psnr(recon, real),
        "ssim": metrics.ssim(recon, real),
        "codebook_perplexity": stats.perplexity,
        "codebook_usage": stats.usage,
        "codes_used": stats.used,
        "vocab_size": dvae.config.vocab_size,
    }
    return out, recon


@torch.no_grad()
def caption_use_bits(pipeline: Any, captions: Sequence[str], real: Tensor, *, batch_size: int = 64) -> dict[str, float]:
    """The prior's bits per image on real images with the right caption, a shuffled caption (each image
    gets the caption half the list away) and the empty caption. Right against shuffled is how much the
    model uses the caption; right against empty, how much the caption tells it at all."""
    n = len(captions)
    ti = pipeline.transformer.config.image_seq_len
    shuffled = [captions[(i + n // 2) % n] for i in range(n)] if n > 1 else list(captions)
    out = {}
    for name, caps in (("right", list(captions)), ("shuffled", shuffled), ("empty", [""] * n)):
        bits = prior_bits(pipeline, caps, real, batch_size=batch_size)["bits_per_image_token"]
        out[f"bits_per_image_{name}_caption"] = bits * ti
    return out


def split_figures(
    s: SplitSamples,
    evaluator: nn.Module,
    config: EvalConfig,
    *,
    r_precision_clip: nn.Module | None = None,
    tokenizer: Any = None,
    inception: tuple[nn.Module, nn.Module] | None = None,
) -> dict[str, Any]:
    """Every per-split figure for one split's samples."""
    out: dict[str, Any] = {"n_images": len(s.fake)}
    if len(s.fake) >= 2:
        out["fid"] = metrics.fid(s.real, s.fake, evaluator)
        out["kid_mean"], out["kid_std"] = metrics.kid(s.real, s.fake, evaluator, subsets=config.kid_subsets)
        out["is_mean"], out["is_std"] = metrics.inception_score(s.fake, evaluator)
        out["real_is_mean"], _ = metrics.inception_score(s.real, evaluator)
        out["is_head"] = evaluator.config.resolved_score_head
        if inception is not None:
            features, logits = inception
            out["standard_fid"] = metrics.fid(s.real, s.fake, features, batch_size=32)
            out["standard_is_mean"], out["standard_is_std"] = metrics.inception_score(s.fake, logits, batch_size=32)
    if s.scores is not None:
        out["reranker_score_mean"] = float(s.scores.mean())
    if r_precision_clip is not None and len(set(s.captions)) >= 2:
        tok = tokenizer.with_text_seq_len(r_precision_clip.config.text_seq_len)
        ids = tok.encode(list(s.captions))
        g = torch.Generator().manual_seed(config.seed)
        out["r_precision"] = metrics.r_precision(
            r_precision_clip, s.fake, ids, n_distractors=config.r_precision_distractors, generator=g
        )
        out["real_r_precision"] = metrics.r_precision(
            r_precision_clip,
            s.real,
            ids,
            n_distractors=config.r_precision_distractors,
            generator=torch.Generator().manual_seed(config.seed),
        )
    out.update(attribute_figures(evaluator, s))
    return out


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """True if two models hold identical parameters (e.g. the reranker passed again as the R-precision CLIP)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa
    )


def evaluate_model(
    pipeline: Any,
    data_dir: str | Path,
    evaluator: nn.Module,
    *,
    config: EvalConfig | None = None,
    r_precision_clip: nn.Module | None = None,
    inception: tuple[nn.Module, nn.Module] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a :class:`~dalle_zero.pipelines.text_to_image.TextToImagePipeline` on ``data_dir``.

    ``evaluator``: a frozen EmojiEvaluator (in-house FID/KID/IS features and tone/style read-out).
    ``r_precision_clip``: a DalleCLIP trained apart from the reranker (R-precision is skipped without
    one; the reranker itself is refused). ``inception``: ``(features module, logits module)`` from
    :class:`~dalle_zero.evaluation.inception.TorchScriptInception` for standard FID/IS.
    With ``out_dir``, grids of generated and real images are written to ``out_dir/samples``.
    Returns a JSON-ready dict: ``{"splits": {name: figures}, "dvae": figures, "settings": ...}``.
    """
    config = config or EvalConfig()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    if r_precision_clip is not None and pipeline.clip is not None and same_weights(r_precision_clip, pipeline.clip):
        raise ValueError("the R-precision CLIP is the model's reranker: train a separate CLIP (another seed)")
    t0 = time.perf_counter()
    meta = read_metadata(data_dir)
    splits = read_dataset_splits(data_dir)
    size = pipeline.dvae.config.image_size
    evaluator.eval()
    plan: dict[str, list[str]] = {}
    for name in config.splits:
        if name not in splits:
            raise ValueError(f"{data_dir / 'splits.json'}: no split {name!r} (splits: {sorted(splits)})")
        if splits[name]:
            plan[name] = pick_evenly(splits[name], config.samples)
        else:
            logger.info("split %r is empty: skipped", name)
    rows = {name: [meta[s] for s in stems] for name, stems in plan.items()}
    lists: dict[str, list[str]] = {}  # "split/kind": its captions
    kind_rows: dict[str, list[int]] = {}
    skipped: Counter[str] = Counter()
    for name in plan:
        lists[f"{name}/canonical"] = [str(r["caption"]) for r in rows[name]]
        for kind in kinds_for(config, name):
            idx, caps = kind_captions(rows[name], kind)
            skipped[f"{name}/{kind}"] += len(rows[name]) - len(idx)
            if idx:
                lists[f"{name}/{kind}"], kind_rows[f"{name}/{kind}"] = caps, idx
    # read before sampling: a missing image file is an error now, not after minutes of sampling
    reals = {name: load_real_images(data_dir, stems, size) for name, stems in plan.items()}
    total = sum(len(v) for v in lists.values()) * config.candidates
    bar = tqdm(total=total, desc="eval: sampling", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        drawn = draw_caption_lists(pipeline, lists, config, progress=bar)
    finally:
        bar.close()
    results: dict[str, Any] = {"splits": {}}
    samples: dict[str, SplitSamples] = {}
    for name, stems in plan.items():
        real = reals[name]
        _, recon = round_trip(pipeline.dvae, real)
        kinds: dict[str, SplitSamples] = {}
        for kind in kinds_for(config, name):
            key = f"{name}/{kind}"
            if key in drawn:
                idx = kind_rows[key]
                kinds[kind] = SplitSamples(
                    name, [stems[i] for i in idx], lists[key], [rows[name][i] for i in idx], real[idx], *drawn[key],
                    recon[idx],
                )
        fake, scores = drawn[f"{name}/canonical"]
        samples[name] = SplitSamples(
            name, stems, lists[f"{name}/canonical"], rows[name], real, fake, scores, recon, kinds
        )
    if any(skipped.values()):
        logger.warning("rows without a caption of that kind, skipped: %s",
                       ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()) if v))
    for name, s in tqdm(samples.items(), desc="eval: figures", unit="split", disable=not progress):
        figures = split_figures(
            s,
            evaluator,
            config,
            r_precision_clip=r_precision_clip,
            tokenizer=pipeline.tokenizer,
            inception=inception,
        )
        figures.update(prior_bits(pipeline, s.captions, s.real))
        figures.update(concept_figures(evaluator, s, config.concept_head))
        kinds = {"canonical": s, **(s.kinds or {})}
        figures["captions"] = {
            kind: kind_figures(evaluator, k, config.concept_head, asks_attributes=kind != "name")
            for kind, k in kinds.items()
        }
        if "unseen_phrasing" in kinds:
            u = kinds["unseen_phrasing"]
            templates = [unseen_template(i, rows[name][i]) for i in kind_rows[f"{name}/unseen_phrasing"]]
            figures["captions"]["unseen_phrasing"]["templates"] = template_figures(
                evaluator, u, templates, config.concept_head
            )
        for kind in ("canonical", "name"):
            if kind in kinds and len(kinds[kind].captions) > 1:
                figures["captions"][kind].update(caption_use_bits(pipeline, kinds[kind].captions, kinds[kind].real))
        results["splits"][name] = figures
        if out_dir is not None and config.grid_images:
            k = min(config.grid_images, len(s.fake))
            save_image_grid(s.fake[:k], Path(out_dir) / "samples" / f"{name}_generated.png", nrow=8, scale=2)
            save_image_grid(s.real[:k], Path(out_dir) / "samples" / f"{name}_real.png", nrow=8, scale=2)
            for kind, ks in (s.kinds or {}).items():
                k = min(config.grid_images, len(ks.fake))
                path = Path(out_dir) / "samples" / f"{name}_{kind}_generated.png"
                save_image_grid(ks.fake[:k], path, nrow=8, scale=2)
    dvae_stems = pick_evenly(splits.get(config.dvae_split) or [], config.dvae_images)
    if dvae_stems and config.dvae_images:
        real = load_real_images(data_dir, dvae_stems, size)
        results["dvae"], recon = dvae_figures(pipeline.dvae, real)
        results["dvae"]["split"] = config.dvae_split
        if out_dir is not None:
            k = min(16, len(real))
            pairs = torch.stack([real[:k], recon[:k]], dim=1).flatten(0, 1)  # original, reconstruction, ...
            save_image_grid(pairs, Path(out_dir) / "samples" / "dvae_reconstructions.png", nrow=8, scale=3)
    results["samples"] = {name: s.captions for name, s in samples.items()}
    results["skipped_rows"] = {k: v for k, v in sorted(skipped.items()) if v}
    results["settings"] = {**config.to_dict(), "data": str(data_dir), "seconds": time.perf_counter() - t0}
    results["note"] = IN_HOUSE_NOTE
    return results


def json_ready(value: Any) -> Any:
    """A copy with NaN/inf floats as None and tuples as lists (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
