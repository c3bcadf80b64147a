"""What the evaluator reads in generated images: the asked tone, style and concept.

Each read-out comes with the same read on the real images of the captions (how well the evaluator
reads at all) and on their dVAE reconstructions (what a prior that drew exactly the real images'
codes would score: the ceiling through this tokenizer). See ``docs/evaluation.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from dalle_zero.data.metadata import field_label
from dalle_zero.evaluation import metrics


@dataclass(frozen=True)
class SplitSamples:
    """The captions of one split, their real images and the images generated for them."""

    split: str
    stems: list[str]
    captions: list[str]
    rows: list[dict[str, Any]]  # metadata rows
    real: Tensor  # float[N, 3, S, S] in [0, 1] (S: the dVAE's image size)
    fake: Tensor  # float[N, 3, S, S] in [0, 1]
    scores: Tensor | None  # float[N] reranker scores of the kept images (None: no reranking)
    recon: Tensor | None = None  # float[N, 3, S, S]: the real images through the dVAE and back
    kinds: dict[str, SplitSamples] | None = None  # other caption kinds: their rows, captions, images

    def subset(self, keep: Sequence[int]) -> SplitSamples:
        """The samples at positions ``keep`` (no caption kinds of their own)."""
        return SplitSamples(
            self.split,
            [self.stems[i] for i in keep],
            [self.captions[i] for i in keep],
            [self.rows[i] for i in keep],
            self.real[list(keep)],
            self.fake[list(keep)],
            None if self.scores is None else self.scores[list(keep)],
            None if self.recon is None else self.recon[list(keep)],
        )


def asked_labels(rows: Sequence[dict[str, Any]], head: str, *, holdout_only: bool = False) -> list[str | None]:
    """The label of ``head`` each caption asks for (None: no single label, or not the held-out part).

    ``holdout_only`` keeps only the attribute an unseen-composition item was held out for
    (``holdout`` "tone" for the tone head, "style" for the style head).
    """
    out: list[str | None] = []
    for r in rows:
        if holdout_only and r.get("holdout") != head:
            out.append(None)
        else:
            out.append(field_label(r, head))
    return out


def _views(s: SplitSamples, ceilings: bool) -> dict[str, Tensor]:
    """``{key prefix: images}``: the generated images, and with ``ceilings`` the real ones and their
    reconstructions (when there are any)."""
    views = {"": s.fake}
    if ceilings:
        views["real_"] = s.real
        if s.recon is not None:
            views["recon_"] = s.recon
    return views


def attribute_figures(evaluator: nn.Module, s: SplitSamples, *, ceilings: bool = True) -> dict[str, Any]:
    """Tone / style read-outs of the generated images, and with ``ceilings`` of the same captions'
    real images (``real_*``: how well the evaluator reads) and their dVAE reconstructions
    (``recon_*``: what a prior that drew exactly the real images' codes would score; a reference for
    what the tokenizer loses, not a bound, since a prior can draw more typical colours than one
    image's codes), per head the evaluator has."""
    out: dict[str, Any] = {}
    heads = [h for h in ("tone", "style") if h in evaluator.config.head_names]
    views = _views(s, ceilings)
    for head in heads:
        asked = asked_labels(s.rows, head)
        for prefix, images in views.items():
            acc, n = metrics.attribute_accuracy(evaluator, images, head, asked)
            out[f"{prefix}{head}_accuracy"] = acc
        out[f"{head}_n"] = n
    if s.split == "unseen_compositions":
        right = dict.fromkeys(views, 0.0)
        total = 0
        for head in heads:
            asked = asked_labels(s.rows, head, holdout_only=True)
            for prefix, images in views.items():
                acc, n = metrics.attribute_accuracy(evaluator, images, head, asked)
                out[f"{prefix}heldout_{head}_accuracy"] = acc
                right[prefix] += acc * n if n else 0.0
            out[f"heldout_{head}_n"] = n
            total += n
        for prefix in views:
            out[f"{prefix}heldout_attribute_accuracy"] = right[prefix] / total if total else math.nan
        out["heldout_attribute_n"] = total
    return out


def concept_figures(evaluator: nn.Module, s: SplitSamples, head: str, *, ceilings: bool = True) -> dict[str, Any]:
    """Concept top-1 / top-5 of the generated images (the concept each caption asks for, read by the
    evaluator's ``head``) and, with ``ceilings``, of the real images and their dVAE reconstructions."""
    if head not in evaluator.config.head_names:
        return {}
    asked = asked_labels(s.rows, head)
    out: dict[str, Any] = {}
    for prefix, images in _views(s, ceilings).items():
        acc, n = metrics.label_top_k(evaluator, images, head, asked, ks=(1, 5))
        out[f"{prefix}concept_top1"], out[f"{prefix}concept_top5"] = acc[1], acc[5]
    out["concept_n"] = n
    return out


def kind_figures(evaluator: nn.Module, s: SplitSamples, head: str, *, asks_attributes: bool = True) -> dict[str, Any]:
    """Concept and tone / style read-outs of one caption kind's images (no ceilings: the real images
    and reconstructions are the split's, read once); no tone / style for a kind whose captions do
    not ask for them (the plain name)."""
    out = {"n_images": len(s.fake), "example_caption": s.captions[0] if s.captions else None}
    out.update(concept_figures(evaluator, s, head, ceilings=False))
    if asks_attributes:
        out.update(attribute_figures(evaluator, s, ceilings=False))
    return out


def template_figures(
    evaluator: nn.Module, s: SplitSamples, templates: Sequence[int], head: str
) -> list[dict[str, Any]]:
    """:func:`kind_figures` of the unseen-phrasing samples ``s`` read per template (``templates[i]``:
    which template caption ``i`` is in), so one phrasing the model cannot read shows as itself instead
    of as a third of a gap."""
    out = []
    for t in sorted(set(templates)):
        keep = [i for i, ti in enumerate(templates) if ti == t]
        out.append({"template": t + 1, **kind_figures(evaluator, s.subset(keep), head)})
    return out
