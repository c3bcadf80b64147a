"""Labelled real images for the in-house evaluator: one head per metadata field, images in memory.

Labels come from the dataset's ``metadata.jsonl`` (``docs/data.md``); :func:`label_heads` turns the
training split's labels into heads, :func:`load_labelled_split` reads a split's images and label
indices (``IGNORE`` where a head has no label), :class:`LabelledImages` serves them with augmentation.

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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dalle_zero.data.images import load_image, random_blur
from dalle_zero.data.metadata import field_label, read_dataset_split, read_metadata
from dalle_zero.errors import DataError
from dalle_zero.models.evaluator import EvaluatorHead

logger = logging.getLogger(__name__)

IGNORE = -100  # label index that no head is scored on
TONE_ORDER = ("none", "light", "medium-light", "medium", "medium-dark", "dark")




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
