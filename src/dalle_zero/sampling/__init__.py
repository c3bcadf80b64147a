"""Sampling from the prior (paper §2.6): logit filters, the cached sampler, contrastive reranking."""

from dalle_zero.sampling.filters import apply_temperature, filter_logits, top_k_filter, top_p_filter
from dalle_zero.sampling.generate import generate_image_tokens, sample_tokens

__all__ = [
    "apply_temperature",
    "filter_logits",
    "generate_image_tokens",
    "sample_tokens",
    "top_k_filter",
    "top_p_filter",
]
