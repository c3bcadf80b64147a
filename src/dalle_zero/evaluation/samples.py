"""The images an evaluation scores: captions picked evenly from a split, their real images, and
samples drawn from a pipeline in shared batches (the reranker's best when there are candidates).

``config`` is an :class:`~dalle_zero.evaluation.evaluate.EvalConfig` (its sampling settings and batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dalle_zero.data.images import load_image
from dalle_zero.sampling.generate import generate_image_tokens
from dalle_zero.sampling.rerank import rerank

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
    x = torch.stack(out)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1)


@torch.no_grad()
def generate_for_captions(
    pipeline: Any,
    captions: Sequence[str],
    config: EvalConfig,
    *,
    generator: torch.Generator,
    progress: Any = None,
) -> tuple[Tensor, Tensor | None]:
    """One image per caption: ``float[N, 3, S, S]`` and reranker scores ``float[N]`` (or None).

    With ``config.candidates`` > 1, :func:`sample_candidates` draws that many per caption and the
    pipeline's CLIP keeps the best of each caption.
    """
    m = config.candidates
    if m > 1 and pipeline.clip is None:
        raise ValueError(f"candidates={m} needs a CLIP reranker in the model folder, and it has none")
    _, pixels = sample_candidates(pipeline, captions, config, repeats=m, generator=generator, progress=progress)
    if m == 1:
        return pixels, None
    best, scores = [], []
    for i, caption in enumerate(captions):
        cand = pixels[i * m : (i + 1) * m]
        s, order = rerank(pipeline.clip, pipeline.tokenizer, caption, cand, top=1)
        best.append(cand[order[0]])
        scores.append(s[order[0]])
    return torch.stack(best), torch.stack(scores)


@torch.no_grad()
def sample_candidates(
    pipeline: Any,
    captions: Sequence[str],
    config: EvalConfig,
    *,
    repeats: int = 1,
    generator: torch.Generator,
    progress: Any = None,
) -> tuple[Tensor, Tensor]:
    """``repeats`` samples per caption, no reranking: image tokens ``long[N*repeats, Ti]`` and their
    images ``float[N*repeats, 3, S, S]``, the samples of a caption adjacent.

    Different captions share a sampling batch of ``config.batch_size`` (much faster than one caption
    at a time); ``progress`` (a tqdm bar) is advanced by the images drawn.
    """
    text = pipeline.tokenizer.encode(list(captions)).repeat_interleave(repeats, dim=0)  # (N*repeats, Tt)
    grid = pipeline.transformer.config.image_grid
    device = pipeline.device
    tokens, images = [], []
    for lo in range(0, len(text), config.batch_size):
        ids = text[lo : lo + config.batch_size].to(device)
        t = generate_image_tokens(
            pipeline.transformer,
            ids,
            generator=generator,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            guidance_scale=config.guidance_scale,
            guidance_top_p=config.guidance_top_p,
        )  # (b, Ti)
        tokens.append(t.cpu())
        images.append(pipeline.decode(t.view(-1, grid, grid)))  # (b, 3, S, S)
        if progress is not None:
            progress.update(len(ids))
    return torch.cat(tokens), torch.cat(images)
