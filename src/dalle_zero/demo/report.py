"""The demo's ``report.html``: what was trained, how it did, and what it draws (opens from disk).

Composed from :class:`~dalle_zero.evaluation.report.HtmlReport` blocks: run summary and stage table,
dVAE reconstructions beside originals, training curves (PNG plots of each run's ``metrics.jsonl``),
reranked samples for seen / unseen-composition / unseen-concept captions, the image-to-image
example, and the evaluation table with one sentence per figure on how it was obtained.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from dalle_zero.evaluation.figures import IN_HOUSE_NOTE, KIND_TITLES, SPLIT_TITLES, dvae_rows, figure_table_html
from dalle_zero.evaluation.report import FigureRow, GridItem, HtmlReport, plot_curves
from dalle_zero.metrics_file import read_metrics

# metrics.jsonl columns worth plotting per stage (those a run did not log are left out)
CURVES = {
    "dvae": ("loss", "recon_bpd", "kl", "psnr"),
    "clip": ("loss", "batch_i2t_acc"),
    "eval_clip": ("loss", "batch_i2t_acc"),
    "evaluator": ("loss", "tone_acc", "category_acc"),
    "prior": ("loss", "loss_text", "loss_image"),
}
STAGE_TITLES = {
    "data": "emoji dataset",
    "tokenizer": "BPE tokenizer",
    "dvae": "dVAE (stage 1)",
    "encode": "encode images to tokens",
    "clip": "CLIP reranker",
    "eval_clip": "CLIP for R-precision (another seed)",
    "evaluator": "evaluator (classifier, real images)",
    "prior": "transformer prior (stage 2)",
    "assemble": "assemble the pipeline",
    "showcase": "sample galleries + image-to-image",
    "evaluate": "evaluation",
}


def plot_stage_curves(out: Path, stages: list[str]) -> dict[str, Path]:
    """One PNG of training curves per finished training run under ``out/runs``."""
    plots = {}
    for stage in stages:
        metrics = out / "runs" / stage / "metrics.jsonl"
        if not metrics.is_file():
            continue
        logged = {k for r in read_metrics(metrics) for k, v in r.items() if v is not None}
        keys = [k for k in CURVES.get(stage, ("loss",)) if k in logged]
        if keys:
            plots[stage] = plot_curves(
                {stage: metrics}, keys, out / "plots" / f"{stage}_curves.png", title=STAGE_TITLES.get(stage, stage)
            )
    return plots


def stage_details(name: str, summary: dict[str, Any]) -> str:
    """One line on what a stage did and its main result."""
    parts = []
    if summary.get("steps"):
        rate = summary.get("rate")
        parts.append(f"{summary['steps']} steps" + (f" (planned at {rate:.2f} steps/s measured)" if rate else ""))
    val = summary.get("validation") or {}
    acc = summary.get("accuracy") or {}
    if name == "data":
        parts.append(f"{summary.get('images', '?')} images in {summary.get('data')}")
        if "splits" in summary:
            parts.append(", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
    elif name == "tokenizer":
        parts.append(f"{summary['vocab_size']} tokens; longest caption {summary['max_caption_tokens']} tokens")
    elif name == "encode":
        parts.append(f"{summary['image_grid']}×{summary['image_grid']} codes of {summary['image_vocab_size']}")
    elif name == "prior" and "bits_per_image_token" in val:
        kept = summary.get("kept") or {}
        kept_val = (kept.get("validation") or {}).get("bits_per_image_token")
        if kept_val is not None and kept.get("step") != summary.get("steps"):
            parts.append(f"kept at step {kept['step']}, its lowest validation loss: {kept_val:.3f} bits per image "
                         f"token ({val['bits_per_image_token']:.3f} at the end)")
        else:
            parts.append(f"validation {val['bits_per_image_token']:.3f} bits per image token")
    elif name == "evaluator":  # accuracy on real held-out images it never trained on
        shown = {
            k.replace("/", " ").replace("_acc", ""): v
            for k, v in acc.items()
            if k.endswith(("tone_acc", "style_acc", "/category_acc")) and not k.startswith("train")
        }
        parts.append("held-out real-image accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in shown.items()))
    if summary.get("beside"):  # its seconds ran at the same time as that stage's: not added to the total
        title = STAGE_TITLES.get(summary["beside"], summary["beside"])
        parts.append(f"trained beside the {title} in another process; waited {summary.get('wait_seconds', 0.0):.0f} s")
    if summary.get("cached"):
        verb = "reused from" if summary.get("reused") else "trained once and kept in"
        parts.append(f"{verb} {summary['cached']}, the same yardstick for every demo on this dataset")
    return "; ".join(p for p in parts if p)


def write_report(
    out: Path,
    *,
    state: dict[str, Any],
    showcase: dict[str, Any] | None,
    results: dict[str, Any] | None,
    header: dict[str, Any],
) -> Path:
    """Write ``out/report.html`` (and its plots) from the demo's records; returns its path."""
    out = Path(out).resolve()  # image paths below are built from it: relative ones would be prefixed twice
    report = HtmlReport("dalle-zero demo", out)
    report.paragraph(
        f"Trained from scratch on this machine in {header['wall_minutes']:.1f} minutes of wall time "
        f"(budget {header['budget_minutes']:g} min; {header['cores']} CPU cores; load average "
        f"{header['load_start']} at the start, {header['load_end']} at the end). Data: {header['data']}."
    )
    report.paragraph(IN_HOUSE_NOTE, note=True)

    stages = state.get("stages", {})
    report.section("Stages")
    report.figure_table(
        [
            FigureRow(STAGE_TITLES.get(k, k), round(v.get("seconds", 0.0), 1), stage_details(k, v), "s")
            for k, v in stages.items()
        ],
        headers=("stage", "time", "what it did"),
    )

    recon = out / "eval" / "samples" / "dvae_reconstructions.png"
    if recon.is_file():
        report.section(
            "dVAE reconstructions",
            "Pairs of columns: a real held-out image, then its reconstruction from the dVAE's hard codes.",
        )
        report.image(recon, "original | reconstruction, validation images")

    plots = plot_stage_curves(out, [s for s in CURVES if s in stages])
    if plots:
        report.section("Training curves", "Each run's metrics.jsonl as logged by the shared training loop.")
        for stage, path in plots.items():
            report.image(path, STAGE_TITLES.get(stage, stage))

    if showcase and showcase.get("plain_words"):
        entries = showcase["plain_words"]
        report.section(
            "Samples: captions in plain words",
            f"Captions as a person would type them, the same for every run: the best {len(entries[0]['images'])} "
            f"of {showcase['candidates']} samples by the reranker; guidance scale "
            f"{showcase.get('guidance_scale', 1.0):g}.",
        )
        for e in entries:
            report.raw_html(f"<h4>{html.escape(e['caption'])}</h4>")
            scores = e["scores"] or [None] * len(e["images"])
            report.grid(
                [GridItem(p, f"sample {j + 1}", sc) for j, (p, sc) in enumerate(zip(e["images"], scores))],
                cell_px=96, score_name="reranker",
            )  # fmt: skip
    if showcase:
        for split, entries in showcase.get("splits", {}).items():
            if not entries:
                continue
            report.section(
                f"Samples: {SPLIT_TITLES.get(split, split)}",
                f"For each caption: the real image (never trained on unless the split is the training split), then "
                f"the best {len(entries[0]['images'])} of {showcase['candidates']} samples by the reranker, "
                "with its score (cosine similarity of CLIP embeddings); classifier-free guidance scale "
                f"{showcase.get('guidance_scale', 1.0):g} (1 = none).",
            )
            for e in entries:
                report.raw_html(f"<h4>{html.escape(e['caption'])}</h4>")
                items = [GridItem(e["real"], "real")]
                scores = e["scores"] or [None] * len(e["images"])
                items += [GridItem(p, f"sample {j + 1}", s) for j, (p, s) in enumerate(zip(e["images"], scores))]
                report.grid(items, cell_px=96, score_name="reranker")
        i2i = showcase.get("image_to_image")
        if i2i:
            report.section(
                "Image-to-image",
                f"The top {i2i['prime_rows']} of {i2i['grid']} token rows of a held-out image are kept and the "
                "prior samples the rest for each caption (paper §3.3), best by the reranker.",
            )
            report.grid(
                [GridItem(i2i["original"], "original"), GridItem(i2i["primed"], "kept rows (grey: to fill)")],
                cell_px=96,
            )
            for c in i2i["completions"]:
                report.raw_html(f"<h4>{html.escape(c['caption'])}</h4>")
                scores = c["scores"] or [None] * len(c["images"])
                report.grid(
                    [GridItem(p, "", s) for p, s in zip(c["images"], scores)], cell_px=96, score_name="reranker"
                )

    if results:
        report.section("Evaluation", "Computed by `dalle eval` on the model this demo assembled.")
        report.raw_html(figure_table_html(results))
        if results.get("dvae"):
            report.figure_table(dvae_rows(results))
        for split in results.get("splits", {}):
            gen = out / "eval" / "samples" / f"{split}_generated.png"
            real = out / "eval" / "samples" / f"{split}_real.png"
            if gen.is_file() and real.is_file():
                report.image(gen, f"{SPLIT_TITLES.get(split, split)}: generated (one per caption, first 32)")
                report.image(real, "the real images of the same captions")
            for kind in ("name", "name_attributes", "unseen_phrasing"):
                path = out / "eval" / "samples" / f"{split}_{kind}_generated.png"
                if path.is_file():
                    report.image(path, f"{SPLIT_TITLES.get(split, split)}: generated for the {KIND_TITLES[kind]}")

    report.section("Reproduce")
    report.raw_html("<pre>" + html.escape("\n".join(header.get("commands", []))) + "</pre>")
    return report.save()
