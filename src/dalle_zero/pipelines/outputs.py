"""What a :class:`~dalle_zero.pipelines.text_to_image.TextToImagePipeline` returns, and its images as PIL.

A call on a few captions (:class:`GenerationOutput`) keeps a list per caption and the seed it used;
a batched call on many (:class:`BatchOutput`) stacks equal-sized results into tensors, one row per
caption, and draws from a generator the caller owns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class GenerationOutput:
    """What calling a :class:`~dalle_zero.pipelines.text_to_image.TextToImagePipeline` returns; one entry
    per caption, in input order.

    - ``images[i]``: FloatTensor[n, 3, H, W] in [0, 1] (best first when reranked);
    - ``codes[i]``: LongTensor[n, h, w], the dVAE codes of those images;
    - ``scores[i]``: FloatTensor[n] reranker cosine similarities (descending), or None without CLIP;
    - ``seed``: the seed actually used (drawn from torch's global generator when none was given).
    """

    prompts: list[str]
    images: list[Tensor]
    codes: list[Tensor]
    scores: list[Tensor | None]
    seed: int

    def pil_images(self) -> list[list[Any]]:
        """The images as PIL images, per caption."""
        return [to_pil(batch) for batch in self.images]


def to_pil(images: Tensor) -> list[Any]:
    """FloatTensor[N, 3, H, W] in [0, 1] -> N RGB ``PIL.Image.Image``."""
    from PIL import Image  # only when images leave as PIL: `import dalle_zero` does not load Pillow

    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, mode="RGB") for a in arr]


@dataclass(frozen=True)
class BatchOutput:
    """What :meth:`~dalle_zero.pipelines.text_to_image.TextToImagePipeline.generate_batch` returns; row
    ``i`` belongs to caption ``i``.

    - ``images``: FloatTensor[N, n, 3, H, W] in [0, 1] (best first when reranked);
    - ``codes``: LongTensor[N, n, h, w], the dVAE codes of those images, on the CPU;
    - ``scores``: FloatTensor[N, n] reranker cosine similarities (descending), or None when the call kept
      every candidate (``candidates == n``) and so reranked nothing.
    """

    images: Tensor
    codes: Tensor
    scores: Tensor | None

    def pil_images(self) -> list[list[Any]]:
        """The images as PIL images, per caption."""
        return [to_pil(batch) for batch in self.images]
