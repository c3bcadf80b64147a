"""Training the in-house evaluator (:class:`~dalle_zero.models.evaluator.EmojiEvaluator`; docs/evaluation.md).

The evaluator replaces the paper's ImageNet Inception-v3 as the feature extractor of FID/KID/IS, so
it must learn only from *real* images, and only from the training split: every held-out image
(validation, unseen concepts, unseen compositions) stays unseen, and its accuracy there is the honest
measure of how well it reads category, skin tone and style. Labels come from the dataset's
``metadata.jsonl`` (fields ``category``, ``subcategory``, ``tone``, ``style``; see ``docs/data.md``):

- ``tone`` None (the base image) is the label ``"none"``; a two-person pair with two different tones
  (``"light/dark"``) has no single label and is ignored by the tone head;
- a head whose field takes fewer than two values in the training split (e.g. ``style`` in a
  one-style dataset) is dropped, since it could only learn a constant;
- a held-out label the training split never shows is ignored when scoring that head.

The **concept** head (``concept_field``, default the metadata's ``concept``) is the exception: it
names every concept of the dataset, so it reads whether a generated image shows what was asked, and
it learns from *every* real image, held-out splits included. That is what Inception is to FID: a
reader trained on real data, never on samples; the generated images it reads are new either way.
Its accuracy on held-out real images is therefore not a held-out figure.

The labelled images and their augmentation live in :mod:`dalle_zero.training.labelled_images`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from dalle_zero.config import Config, check_float, check_int
from dalle_zero.data.metadata import read_dataset_split, read_dataset_splits, read_metadata
from dalle_zero.models.evaluator import EmojiEvaluator, EvaluatorConfig, EvaluatorHead
from dalle_zero.training import optim
from dalle_zero.training.labelled_images import IGNORE, LabelledImages, label_heads, load_labelled_split
from dalle_zero.training.loop import LoopConfig, TrainTask
from dalle_zero.training.schedules import warmup_cosine

logger = logging.getLogger(__name__)

LABEL_FIELDS = ("category", "subcategory", "tone", "style")


@dataclass(frozen=True, kw_only=True)
class EvaluatorTrainConfig(Config):
    """Data, loop and optimiser settings of an evaluator run (``model.heads`` is filled from the data)."""

    model: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(
            steps=3000, batch_size=64, log_every=25, eval_every=500, checkpoint_every=500
        )
    )
    data: str | None = None  # dataset folder (images/, metadata.jsonl, splits.json); `--data` on the CLI
    fields: tuple[str, ...] = LABEL_FIELDS  # metadata fields that become heads
    concept_field: str | None = "concept"  # a head over every concept, trained on every real image
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("validation", "unseen_compositions", "unseen_concepts")
    eval_max_images: int = 2048  # per split, first N stems in splits.json order
    eval_batch_size: int = 256
    augment: bool = True
    max_shift: int = 2
    hflip: bool = True
    blur_prob: float = 0.5  # share of training images blurred (0: never)
    max_blur: float = 1.5  # largest blur radius, pixels
    lr: float = 2e-3
    lr_end: float = 2e-5
    warmup_steps: int = 100
    weight_decay: float = 0.05
    label_smoothing: float = 0.05

    def __post_init__(self) -> None:
        if not isinstance(self.model, EvaluatorConfig):
            raise ValueError(
                f"EvaluatorTrainConfig.model must be an EvaluatorConfig, got {type(self.model).__name__}"
            )
        if not isinstance(self.loop, LoopConfig):
            raise ValueError(
                f"EvaluatorTrainConfig.loop must be a LoopConfig, got {type(self.loop).__name__}"
            )
        if self.data is not None and not isinstance(self.data, str):
            raise ValueError(f"EvaluatorTrainConfig.data must be a path string or null, got {self.data!r}")
        if not self.fields or not all(isinstance(f, str) for f in self.fields):
            raise ValueError(f"EvaluatorTrainConfig.fields must be non-empty strings, got {self.fields!r}")
        for name in ("augment", "hflip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"EvaluatorTrainConfig.{name} must be true or false, got {getattr(self, name)!r}"
                )
        concept = self.concept_field
        if concept is not None and (not isinstance(concept, str) or not concept or concept in self.fields):
            raise ValueError(
                f"EvaluatorTrainConfig.concept_field must be null or a field name not in fields, got {concept!r}"
            )
        check_int(self, "eval_max_images", min_value=1)
        check_int(self, "eval_batch_size", min_value=1)
        check_int(self, "max_shift", min_value=0)
        check_float(self, "blur_prob", min_value=0.0, max_value=1.0)
        check_float(self, "max_blur", min_value=0.0)
        check_int(self, "warmup_steps", min_value=0)
        check_float(self, "lr", min_value=0.0, strict_min=True)
        check_float(self, "lr_end", min_value=0.0)
        check_float(self, "weight_decay", min_value=0.0)
        check_float(self, "label_smoothing", min_value=0.0, max_value=0.5)

    @property
    def label_fields(self) -> tuple[str, ...]:
        """The metadata fields the evaluator learns from: its heads' fields, then the concept field."""
        return (*self.fields, *([self.concept_field] if self.concept_field else []))

    def lr_at(self, step: int) -> float:
        return warmup_cosine(
            step, peak=self.lr, end=self.lr_end, warmup_steps=self.warmup_steps, total_steps=self.loop.steps
        )


# ---------------------------------------------------------------------------------------------
# loss and accuracy


def heads_loss(
    logits: dict[str, torch.Tensor],
    labels: torch.Tensor,
    names: tuple[str, ...],
    *,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over heads of the mean cross-entropy on labelled rows (a head with none in the batch adds 0)."""
    total = logits[names[0]].new_zeros(())
    parts: dict[str, float] = {}
    for j, name in enumerate(names):
        y = labels[:, j]
        keep = y != IGNORE
        if not keep.any():
            continue
        z = logits[name][keep].float()
        ce = F.cross_entropy(z, y[keep], label_smoothing=label_smoothing)
        total = total + ce
        parts[f"{name}_loss"] = ce.item()
        parts[f"{name}_acc"] = (z.argmax(-1) == y[keep]).float().mean().item()
    return total, parts


@torch.no_grad()
def head_accuracy(model: EmojiEvaluator, data: LabelledImages, *, batch_size: int = 256) -> dict[str, float]:
    """Per head: ``{head}_acc`` (share of labelled images read right) and ``{head}_balanced_acc``
    (mean recall over the labels present), on un-augmented images, in eval mode."""
    names = model.config.head_names
    logits = model.head_logits(data.images, batch_size=batch_size)
    pred = torch.stack([logits[n].argmax(-1) for n in names], dim=1)  # (N, n_heads)
    result: dict[str, float] = {}
    for j, name in enumerate(names):
        y = data.labels[:, j]
        keep = y != IGNORE
        if not keep.any():
            continue
        right = pred[keep, j] == y[keep]
        result[f"{name}_acc"] = right.float().mean().item()
        recalls = [right[y[keep] == c].float().mean().item() for c in y[keep].unique()]
        result[f"{name}_balanced_acc"] = float(np.mean(recalls))
    return result


# ---------------------------------------------------------------------------------------------
# the task


class EvaluatorTask(TrainTask):
    """Cross-entropy over every head on augmented training images; accuracy per held-out split."""

    def __init__(
        self,
        cfg: EvaluatorTrainConfig,
        train_data: LabelledImages,
        eval_data: dict[str, LabelledImages] | None = None,
    ) -> None:
        if not cfg.model.heads:
            raise ValueError("EvaluatorTrainConfig.model.heads is empty: fill it with label_heads() first")
        self.cfg = cfg
        self.train_data = train_data
        self.eval_data = eval_data or {}

    @classmethod
    def from_folder(cls, cfg: EvaluatorTrainConfig) -> EvaluatorTask:
        """Load the training and held-out splits of ``cfg.data`` (the heads must already be in ``cfg``)."""
        if cfg.data is None:
            raise ValueError("EvaluatorTrainConfig.data is not set (pass --data DIR)")
        root = Path(cfg.data)
        meta = read_metadata(root)
        heads, size = cfg.model.heads, cfg.model.image_size
        train = load_labelled_split(
            root,
            cfg.train_split,
            heads,
            metadata=meta,
            image_size=size,
            augment=cfg.augment,
            max_shift=cfg.max_shift,
            hflip=cfg.hflip,
            blur_prob=cfg.blur_prob,
            max_blur=cfg.max_blur,
        )
        known = read_dataset_splits(root)
        names = cfg.model.head_names
        if cfg.concept_field is not None and cfg.concept_field in names:
            # every other split's real images teach the concept head only; other heads ignore them
            j = names.index(cfg.concept_field)
            extra = [
                load_labelled_split(root, split, heads, metadata=meta, image_size=size)
                for split in sorted(known) if split != cfg.train_split and known[split]
            ]
            if extra:
                labels = torch.cat([e.labels for e in extra])
                only_concept = torch.full_like(labels, IGNORE)
                only_concept[:, j] = labels[:, j]
                train.images = torch.cat([train.images, *(e.images for e in extra)])
                train.labels = torch.cat([train.labels, only_concept])
        evals = {}
        for split in cfg.eval_splits:
            if not known.get(split):
                logger.info("split %r is missing or empty in %s: not evaluated", split, root)
                continue
            evals[split] = load_labelled_split(
                root, split, heads, metadata=meta, max_images=cfg.eval_max_images, image_size=size
            )
        return cls(cfg, train, evals)

    def train_dataset(self) -> Dataset:
        return self.train_data

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return optim.adamw(
            model, lr=self.cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=self.cfg.weight_decay
        )

    def lr_at(self, step: int) -> float:
        return self.cfg.lr_at(step)

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        logits = model(batch["pixels"].to(device))
        return heads_loss(
            logits,
            batch["labels"].to(device),
            self.cfg.model.head_names,
            label_smoothing=self.cfg.label_smoothing,
        )

    def evaluate(self, model: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        out: dict[str, float] = {}
        for split, data in self.eval_data.items():
            acc = head_accuracy(model, data, batch_size=self.cfg.eval_batch_size)  # type: ignore[arg-type]
            out.update({f"{split}/{k}": v for k, v in acc.items()})
        return out


def build_train_config(cfg: EvaluatorTrainConfig) -> EvaluatorTrainConfig:
    """Fill ``model.heads`` from the labels of the training split, unless the config already sets them."""
    if cfg.data is None:
        raise ValueError("EvaluatorTrainConfig.data is not set (pass --data DIR)")
    root = Path(cfg.data)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    model = cfg.model
    if not model.heads:
        meta = read_metadata(root)
        rows = [meta[s] for s in read_dataset_split(root, cfg.train_split) if s in meta]
        heads = label_heads(rows, cfg.fields)
        if cfg.concept_field is not None:
            field_ = cfg.concept_field
            concepts = sorted({str(r[field_]) for r in meta.values() if r.get(field_) is not None})
            if len(concepts) >= 2:
                heads += (EvaluatorHead(name=cfg.concept_field, labels=tuple(concepts)),)
            else:
                logger.info("field %r has %d value(s): no concept head", cfg.concept_field, len(concepts))
        model = model.replace(heads=heads)
    return cfg.replace(model=model)
