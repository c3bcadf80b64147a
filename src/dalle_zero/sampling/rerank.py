"""Contrastive reranking of generated samples (paper §2.6).

The paper draws N samples per caption (N = 512) and keeps the ones a contrastive model scores as
best matching the caption. :func:`rerank` scores candidate images by the cosine similarity of their
:class:`~dalle_zero.models.clip.DalleCLIP` embedding with the caption's, and returns them best first.
"""

from __future__ import annotations

import torch

from dalle_zero.data.images import resize_pixels
from dalle_zero.models.clip import DalleCLIP
from dalle_zero.tokenizers.bpe import BPETokenizer


@torch.no_grad()
def rerank(
    clip: DalleCLIP,
    tokenizer: BPETokenizer,
    caption: str,
    images: torch.Tensor,
    top: int | None = None,
    *,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score ``images`` (``float[N, 3, H, W]`` in [0, 1]) against ``caption``.

    Returns ``(scores, order)``: ``scores`` is ``float[N]``, the cosine similarity of each image with
    the caption (in input order); ``order`` is a ``LongTensor`` of image indices, best first, of
    length ``top`` (all N if ``top`` is None). Images are resized to the CLIP's ``image_size`` if needed.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor [N, 3, H, W] with N >= 1, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floats in [0, 1], got dtype {images.dtype}")
    if top is not None and not (isinstance(top, int) and 1 <= top):
        raise ValueError(f"top must be a positive integer or None, got {top!r}")
    if tokenizer.text_seq_len != clip.config.text_seq_len:
        tokenizer = tokenizer.with_text_seq_len(clip.config.text_seq_len)
    device = next(clip.parameters()).device
    was_training = clip.training
    clip.eval()
    try:
        text = clip.encode_text(tokenizer.encode(caption).to(device))  # (1, E)
        scores = []
        for chunk in images.split(batch_size):
            pixels = resize_pixels(chunk.to(device=device, dtype=torch.float32), clip.config.image_size)
            scores.append(clip.encode_image(pixels) @ text[0])  # (n,)
    finally:
        clip.train(was_training)
    scores_t = torch.cat(scores).float().cpu()  # (N,)
    order = torch.argsort(scores_t, descending=True, stable=True)
    if top is not None:
        order = order[:top]
    return scores_t, order
