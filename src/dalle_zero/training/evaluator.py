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

Augmentation is label-preserving: a random shift of up to ``max_shift`` pixels (filled with the
image's corner colour, the dataset background), an optional horizontal flip, and, for a share
``blur_prob`` of the images, a Gaussian blur of radius drawn uniformly from ``(0, max_blur]`` pixels.
The blur is there because the evaluator's job is to read *generated* images, and those are softer
than the real ones (they pass through the dVAE): an evaluator that has only seen sharp images reads
a dVAE reconstruction of a real "medium skin tone" image as some other tone, which measures
sharpness rather than tone. It still learns from real images only. All draws come from the
per-sample seed the loop's sampler hands out, so a resumed run sees the same batches.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from dalle_zero.config import Config, check_float, check_int
from dalle_zero.data.images import load_image, random_blur
from dalle_zero.data.metadata import field_label, read_dataset_split, read_dataset_splits, read_metadata
from dalle_zero.errors import DataError
from dalle_zero.models.evaluator import EmojiEvaluator, EvaluatorConfig, EvaluatorHead
from dalle_zero.training import optim
from dalle_zero.training.loop import LoopConfig, TrainTask
from dalle_zero.training.schedules import warmup_cosine

logger = logging.getLogger(__name__)

IGNORE = -100  # label index that no head is scored on
LABEL_FIELDS = ("category", "subcategory", "tone", "style")
TONE_ORDER = ("none", "light", "medium-light", "medium", "medium-dark", "dark")


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

    def lr_at(self, step: int) -> float:
        return warmup_cosine(
            step, peak=self.lr, end=self.lr_end, warmup_steps=self.warmup_steps, total_steps=self.loop.steps
        )


# ---------------------------------------------------------------------------------------------
# labelled images from a dataset folder


def label_heads(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> tuple[EvaluatorHead, ...]:
    """One head per field with >= 2 distinct labels in ``rows`` (tones in skin order, others sorted)."""
    heads = []
    for name in fields:
        counts = Counter(lab for r in rows if (lab := field_label(r, name)) is not None)
        if len(counts) < 2:
            logger.info("field %r has %d label(s) in the training split: no head for it", name, len(counts))
            continue
        if name == "tone":
            labels = tuple(t for t in TONE_ORDER if t in counts) + tuple(
                sorted(set(counts) - set(TONE_ORDER))
            )
        else:
            labels = tuple(sorted(counts))
        heads.append(EvaluatorHead(name=name, labels=labels))
    if not heads:
        raise DataError(
            f"no metadata field among {list(fields)} has two or more labels in the training split"
        )
    return tuple(heads)


class LabelledImages(Dataset):
    """Images held in memory as ``uint8[N, 3, S, S]`` with label indices ``long[N, n_heads]``.

    ``dataset[(index, seed)]`` -> ``{"pixels": float[3, S, S] in [0, 1], "labels": long[n_heads]}``;
    augmentation (if on) is drawn from ``torch.Generator().manual_seed(seed)``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        augment: bool = False,
        max_shift: int = 2,
        hflip: bool = True,
        blur_prob: float = 0.0,
        max_blur: float = 0.0,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 2 or len(labels) != len(images):
            raise ValueError(
                f"labels must be long [N, n_heads] with N = {len(images)}, got {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels
        self.augment = augment
        self.max_shift = max_shift
        self.hflip = hflip
        self.blur_prob = blur_prob
        self.max_blur = max_blur

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        x = self.images[index].float() / 255.0  # (3, H, W)
        if self.augment:
            x = self._augment(x, torch.Generator().manual_seed(int(seed)))
        return {"pixels": x, "labels": self.labels[index]}

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = self.max_shift
        if s > 0:
            dx, dy = (int(v) for v in torch.randint(-s, s + 1, (2,), generator=g))
            fill = x[:, :1, :1]  # the background colour, from the top-left corner
            padded = fill.expand(3, x.shape[1] + 2 * s, x.shape[2] + 2 * s).clone()
            padded[:, s : s + x.shape[1], s : s + x.shape[2]] = x
            x = padded[:, s + dy : s + dy + x.shape[1], s + dx : s + dx + x.shape[2]]
        if self.hflip and bool(torch.rand((), generator=g) < 0.5):
            x = x.flip(-1)
        x = random_blur(x, self.blur_prob, self.max_blur, g)
        return x.contiguous()


def load_labelled_split(
    root: str | Path,
    split: str,
    heads: tuple[EvaluatorHead, ...],
    *,
    metadata: dict[str, dict[str, Any]] | None = None,
    max_images: int | None = None,
    image_size: int | None = None,
    **dataset_kw: Any,
) -> LabelledImages:
    """The images of ``split`` with their label indices (``IGNORE`` where a head has no label)."""
    root = Path(root)
    metadata = read_metadata(root) if metadata is None else metadata
    stems = read_dataset_split(root, split)[:max_images]
    if not stems:
        raise DataError(f"{root / 'splits.json'}: split {split!r} is empty")
    index = [{lab: i for i, lab in enumerate(h.labels)} for h in heads]
    images, labels = [], []
    for stem in stems:
        if stem not in metadata:
            raise DataError(f"{root / 'metadata.jsonl'}: no row for stem {stem!r} of split {split!r}")
        path = root / "images" / f"{stem}.png"
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        img = load_image(path)
        if image_size is not None and img.shape[-2:] != (image_size, image_size):
            img = _resize_uint8(img, image_size)
        images.append(img)
        row = metadata[stem]
        labels.append([idx.get(field_label(row, h.name), IGNORE) for h, idx in zip(heads, index)])
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise DataError(f"{root}: images of split {split!r} have different sizes {sorted(shapes)}")
    return LabelledImages(torch.stack(images), torch.tensor(labels, dtype=torch.long), **dataset_kw)


def _resize_uint8(img: torch.Tensor, size: int) -> torch.Tensor:
    x = F.interpolate(
        img[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return x[0].round().clamp(0, 255).to(torch.uint8)


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
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    preds = []
    try:
        for start in range(0, len(data), batch_size):
            x = data.images[start : start + batch_size].to(device).float() / 255.0
            out = model(x)
            preds.append(torch.stack([out[n].argmax(-1).cpu() for n in names], dim=1))  # (b, n_heads)
    finally:
        model.train(was)
    pred = torch.cat(preds)  # (N, n_heads)
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
