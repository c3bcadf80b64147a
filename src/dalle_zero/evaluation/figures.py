"""The evaluation table of ``dalle eval`` / ``dalle demo``: figures × splits, one sentence on each figure.

:func:`figure_table_html` renders the per-split results of
:func:`~dalle_zero.evaluation.evaluate.evaluate_model` as one matrix (a row per figure, a column per
split, with the value on the real images of the same captions beside it where that makes sense),
and :func:`dvae_rows` the reconstruction figures, each row saying how it was obtained.
:func:`write_eval_report` puts them, with the sample grids, into ``report.html``.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dalle_zero.evaluation.report import FigureRow, HtmlReport, format_value

SPLIT_TITLES = {
    "train": "seen captions (training split)",
    "validation": "validation captions",
    "unseen_compositions": "unseen compositions",
    "unseen_concepts": "unseen concepts",
}
IN_HOUSE_NOTE = (
    "These are in-house figures: FID, KID and IS use our own evaluator (a small classifier trained on "
    "the real training images) as the feature extractor instead of ImageNet Inception-v3, so they compare "
    "our own runs with each other and are not comparable to published FID or IS."
)


@dataclass(frozen=True)
class Figure:
    """One row of the matrix: the result key, its label, how it was obtained, and its real-image reference."""

    key: str
    label: str
    how: str
    real_key: str | None = None
    scale: float = 1.0


def figures(settings: dict[str, Any]) -> list[Figure]:
    cand = settings.get("candidates", 1)
    sampled = (
        f"one image per caption (the best of {cand} by the reranker)" if cand > 1 else "one image per caption"
    ) + f", temperature {settings.get('temperature', 1.0):g}"
    k = settings.get("r_precision_distractors", 99)
    return [
        Figure(
            "fid",
            "in-house FID ↓",
            f"torchmetrics FrechetInceptionDistance on our evaluator's pooled features: {sampled}, against the "
            "real images of the same captions.",
        ),
        Figure(
            "kid_mean",
            "in-house KID ×1000 ↓",
            "torchmetrics KernelInceptionDistance on the same features and images (mean over random subsets).",
            scale=1000.0,
        ),
        Figure(
            "is_mean",
            "in-house IS ↑",
            "torchmetrics InceptionScore from the evaluator's head with the most labels (the concept head) on the "
            "generated "
            "images; in brackets the real images of the same captions.",
            real_key="real_is_mean",
        ),
        Figure(
            "r_precision",
            "R-precision ↑",
            f"share of generated images whose own caption a separately trained CLIP (another seed, not the "
            f"reranker) ranks above {k} random other captions of the split; in brackets: real images.",
            real_key="real_r_precision",
        ),
        Figure(
            "concept_top1",
            "concept read as asked, top-1 ↑",
            "share of generated images that the evaluator's concept head (over every concept of the dataset, "
            "trained on every real image) reads as the concept the caption asks for; in brackets: real images.",
            real_key="real_concept_top1",
        ),
        Figure(
            "concept_top5",
            "concept read as asked, top-5 ↑",
            "the same, counting an image as right when the asked concept is among the head's 5 most probable; "
            "in brackets: real images.",
            real_key="real_concept_top5",
        ),
        Figure(
            "recon_concept_top5",
            "concept top-5 of dVAE reconstructions ↑",
            "the top-5 read-out on the real images after a round trip through the dVAE's codes: the ceiling a "
            "prior could reach through this tokenizer.",
        ),
        Figure(
            "tone_accuracy",
            "skin tone read as asked ↑",
            "share of generated images whose caption asks for one skin tone (or none) that the evaluator "
            "classifies as that tone; in brackets: the same read-out on the real images.",
            real_key="real_tone_accuracy",
        ),
        Figure(
            "style_accuracy",
            "style read as asked ↑",
            "share of generated images the evaluator classifies as the art style the caption asks for; "
            "in brackets: real images.",
            real_key="real_style_accuracy",
        ),
        Figure(
            "heldout_attribute_accuracy",
            "held-out tone/style read as asked ↑",
            "unseen compositions only: share of images of a (concept, tone) or (concept, style) pair never seen "
            "in training that the evaluator reads as the held-out tone/style; in brackets: real images.",
            real_key="real_heldout_attribute_accuracy",
        ),
        Figure(
            "recon_heldout_attribute_accuracy",
            "held-out tone/style of dVAE reconstructions ↑",
            "the same read-out on the real images of those captions after a round trip through the dVAE's codes: "
            "what a prior that drew exactly the real images' codes would score, so the gap to the real images "
            "is what the tokenizer loses (not a bound: a prior can draw more typical colours than one image's codes).",
        ),
        Figure(
            "bits_per_image_token",
            "bits per image token ↓",
            "cross-entropy (bits) of the prior on the dVAE codes of the real images, teacher-forced on their captions.",
        ),
        Figure(
            "bits_per_text_token",
            "bits per text token ↓",
            "cross-entropy (bits) of the prior on the captions' BPE tokens, pads excluded.",
        ),
        Figure("reranker_score_mean", "reranker score", "mean cosine similarity of the kept images (the reranker's)."),
        Figure(
            "standard_fid",
            "FID, Inception-v3 ↓",
            "torchmetrics FID with the user-supplied TorchScript Inception-v3 pool features (images upscaled to "
            "299 px; few images, so still not comparable to published FID).",
        ),
        Figure(
            "standard_is_mean",
            "IS, Inception-v3 ↑",
            "torchmetrics InceptionScore with the user-supplied Inception-v3 class probabilities.",
        ),
    ]


def _value(f: dict[str, Any], key: str, scale: float = 1.0) -> float | None:
    v = f.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v) * scale


def figure_rows(results: dict[str, Any]) -> list[FigureRow]:
    """The table as flat rows ``"<split>: <figure>"`` (for plain-text output)."""
    rows = []
    for split, f in results.get("splits", {}).items():
        for fig in figures(results.get("settings", {})):
            v = _value(f, fig.key, fig.scale)
            if v is not None:
                rows.append(FigureRow(f"{SPLIT_TITLES.get(split, split)}: {fig.label}", v, fig.how))
    return rows + kind_rows(results) + dvae_rows(results)


def figure_table_html(results: dict[str, Any]) -> str:
    """An HTML table: one row per figure that any split has, one column per split, then how it was obtained."""
    splits = results.get("splits", {})
    head = "".join(f"<th>{html.escape(SPLIT_TITLES.get(s, s))}</th>" for s in splits)
    counts = "".join(f"<td class='how'>{f.get('n_images', 0)} captions</td>" for f in splits.values())
    body = [f"<tr><td></td>{counts}<td></td></tr>"]
    for fig in figures(results.get("settings", {})):
        if all(_value(f, fig.key) is None for f in splits.values()):
            continue
        cells = []
        for f in splits.values():
            v = _value(f, fig.key, fig.scale)
            text = format_value(v)
            real = _value(f, fig.real_key) if fig.real_key else None
            if real is not None and v is not None:
                text += f" ({format_value(real)})"
            cells.append(f'<td class="value">{html.escape(text)}</td>')
        body.append(
            f"<tr><td>{html.escape(fig.label)}</td>{''.join(cells)}<td class='how'>{html.escape(fig.how)}</td></tr>"
        )
    table = f'<table class="figures"><tr><th>figure</th>{head}<th>how obtained</th></tr>{"".join(body)}</table>'
    return table + caption_kind_table_html(results)


KIND_TITLES = {
    "canonical": "canonical caption",
    "name": "plain name",
    "name_attributes": "plain name + attributes",
    "unseen_phrasing": "unseen phrasing",
}
KIND_COLUMNS = (
    ("concept_top1", "concept top-1"),
    ("concept_top5", "concept top-5"),
    ("heldout_attribute_accuracy", "held-out tone/style"),
    ("bits_per_image_right_caption", "bits/image: right caption"),
    ("bits_per_image_shuffled_caption", "shuffled"),
    ("bits_per_image_empty_caption", "empty"),
)
KIND_NOTE = (
    "The same model asked in four ways: the dataset's canonical caption; the plain name alone (\"red heart\"); "
    "the name with its tone and style in plain words; and phrasings no training caption uses (\"red heart in "
    "noto style\", \"a picture of red heart, google style\", \"red heart as a noto emoji\"). Concept accuracy "
    "is read by the evaluator's concept head (ceilings: the table above, real images and dVAE reconstructions). "
    "Bits per image are the prior's cross-entropy on the real images' codes with the right caption, another "
    "caption of the split and the empty caption: right against shuffled is how much the model uses the caption. "
    "Each unseen phrasing is also read alone (template 1, 2, ...), since one template the model cannot read "
    "would otherwise show only as a third of a gap."
)


def _kind_entries(f: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(title, figures)`` of one split's caption kinds, each unseen-phrasing template after its kind."""
    out = []
    for kind, k in (f.get("captions") or {}).items():
        out.append((KIND_TITLES.get(kind, kind), k))
        out += [(f"{KIND_TITLES.get(kind, kind)}, template {t['template']}", t) for t in k.get("templates") or []]
    return out


def caption_kind_table_html(results: dict[str, Any]) -> str:
    """An HTML table of the figures by caption kind: one row per (split, kind) and per unseen-phrasing
    template, "" if there are none."""
    rows = []
    for split, f in results.get("splits", {}).items():
        for title, k in _kind_entries(f):
            cells = "".join(
                f'<td class="value">{html.escape(format_value(_value(k, key)))}</td>' for key, _ in KIND_COLUMNS
            )
            example = html.escape(str(k.get("example_caption") or ""))
            rows.append(
                f"<tr><td>{html.escape(SPLIT_TITLES.get(split, split))}</td>"
                f"<td>{html.escape(title)}<br><span class='how'>e.g. “{example}”</span></td>"
                f"<td class='how'>{k.get('n_images', 0)}</td>{cells}</tr>"
            )
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in KIND_COLUMNS)
    return (
        f"<p class='how'>{html.escape(KIND_NOTE)}</p><table class='figures'><tr><th>split</th><th>caption kind</th>"
        f"<th>captions</th>{head}</tr>{''.join(rows)}</table>"
    )


def kind_rows(results: dict[str, Any]) -> list[FigureRow]:
    """The caption-kind figures as flat rows (for plain-text output)."""
    rows = []
    for split, f in results.get("splits", {}).items():
        for kind_title, k in _kind_entries(f):
            for key, label in KIND_COLUMNS:
                v = _value(k, key)
                if v is not None:
                    rows.append(FigureRow(f"{SPLIT_TITLES.get(split, split)}, {kind_title}: {label}", v, KIND_NOTE))
    return rows


def dvae_rows(results: dict[str, Any]) -> list[FigureRow]:
    """dVAE reconstruction figures with how each was obtained."""
    d = results.get("dvae")
    if not d:
        return []
    src = f"{d['n_images']} real {d.get('split', '')} images encoded to hard codes and decoded"
    return [
        FigureRow("dVAE PSNR ↑", d["psnr"], f"torchmetrics PSNR, {src}; mean over images.", "dB"),
        FigureRow("dVAE SSIM ↑", d["ssim"], f"torchmetrics SSIM (Gaussian window 11), {src}."),
        FigureRow(
            "dVAE codebook perplexity",
            d["codebook_perplexity"],
            f"exp(entropy) of the histogram of the codes of those images, out of {d['vocab_size']} codes.",
        ),
        FigureRow(
            "dVAE codebook usage",
            d["codebook_usage"],
            f"share of the {d['vocab_size']} codes used at least once ({d['codes_used']} codes).",
        ),
    ]


def write_eval_report(results: dict[str, Any], out_dir: Path, *, title: str = "dalle-zero evaluation") -> Path:
    """``out_dir/report.html``: the figure table and the generated-vs-real grids under ``out_dir/samples``."""
    out_dir = Path(out_dir).resolve()  # image paths below are built from it: relative ones would be prefixed twice
    report = HtmlReport(title, out_dir)
    report.paragraph(IN_HOUSE_NOTE, note=True)
    report.section("Figures")
    report.raw_html(figure_table_html(results))
    if results.get("dvae"):
        report.figure_table(dvae_rows(results))
    samples = out_dir / "samples"
    for split in results.get("splits", {}):
        gen, real = samples / f"{split}_generated.png", samples / f"{split}_real.png"
        if gen.is_file() and real.is_file():
            report.section(f"Samples: {SPLIT_TITLES.get(split, split)}")
            report.image(gen, "generated, one per caption (first captions of the evaluated set)")
            report.image(real, "the real images of the same captions, in the same order")
    recon = samples / "dvae_reconstructions.png"
    if recon.is_file():
        report.section("dVAE reconstructions")
        report.image(recon, "pairs of columns: original, then its reconstruction from hard codes")
    return report.save()
