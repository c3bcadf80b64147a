"""The images an evaluation scores: captions picked evenly from a split, their real images, and
samples drawn from a pipeline in shared batches (the reranker's best when there are candidates),
through the pipeline's public batched sampling.

``config`` is an :class:`~dalle_zero.evaluation.evaluate.EvalConfig` (its sampling settings and batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dalle_zero.data.images import load_image, resize_pixels
from dalle_zero.pipelines.text_to_image import TextToImagePipeline

if TYPE_CHECKING:  # the config lives with the driver that reads all of it
    from dalle_zero.evaluation.evaluate import EvalConfig


def pick_evenly(items: Sequence[str], n: int) -> list[str]:
    """Up to ``n`` items evenly spread over ``items`` (deterministic; all of them if n >= len)."""
    if n >= len(items):
        return list(items)
    idx = torch.linspace(0, len(items) - 1, n).round().long().unique().tolist()
    return [items[i] for i in idx]


def load_real_images(data_dir: Path, stems: Sequence[str], size: int) -> Tensor:
    """``float[N, 3, size, size]`` in [0, 1] from ``data_dir/images/<stem>.png`` (resized if needed)."""
    out = []
    for stem in stems:
        path = data_dir / "images" / f"{stem}.png"
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        out.append(load_image(path).float() / 255.0)  # (3, H, W)
    return resize_pixels(torch.stack(out), size).clamp(0, 1)


def sampling_options(config: EvalConfig) -> dict[str, Any]:
    """The keywords of :meth:`~dalle_zero.pipelines.text_to_image.TextToImagePipeline.generate_batch`
    that ``config`` sets: its sampling batch and settings (no nucleus for guidance is ``1``)."""
    return {
        "batch_size": config.batch_size,
        "temperature": config.temperature,
        "top_k": config.top_k,
        "top_p": config.top_p,
        "guidance_scale": config.guidance_scale,
        "guidance_top_p": 1.0 if config.guidance_top_p is None else config.guidance_top_p,
    }


def generate_for_captions(
    pipeline: TextToImagePipeline,
    captions: Sequence[str],
    config: EvalConfig,
    *,
    generator: torch.Generator,
    progress: Any = None,
) -> tuple[Tensor, Tensor | None]:
    """One image per caption: ``float[N, 3, S, S]`` and reranker scores ``float[N]`` (or None).

    With ``config.candidates`` > 1 the pipeline draws that many per caption and its CLIP keeps the
    best of each (:meth:`~dalle_zero.pipelines.text_to_image.TextToImagePipeline.generate_batch`, the
    candidates of several captions in one sampling batch); ``progress`` (a tqdm bar) is advanced by
    the images drawn.
    """
    m = config.candidates
    if m > 1 and pipeline.clip is None:
        raise ValueError(f"candidates={m} needs a CLIP reranker in the model folder, and it has none")
    out = pipeline.generate_batch(
        captions,
        candidates=m,
        generator=generator,
        progress=None if progress is None else progress.update,
        **sampling_options(config),
    )
    if out.scores is None:
        return out.images[:, 0], None
    # the reranker's picks in the standard (contiguous) layout, as the evaluation has always scored them: the
    # evaluator's convolutions round differently on the decoder's channels-last layout, and the figures
    # of a seed stay the same to the last bit
    return out.images[:, 0].contiguous(), out.scores[:, 0]
