"""dalle-zero: DALL-E (Ramesh et al., ICML 2021) in PyTorch.

Public API, imported lazily so that ``import dalle_zero`` does no I/O and loads nothing heavy:

    from dalle_zero import DiscreteVAE, DVAEConfig, DalleTransformer, TransformerConfig
    from dalle_zero import BPETokenizer, TextToImagePipeline
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "dalle_zero.config",
    "DiscreteVAE": "dalle_zero.models.dvae",
    "DVAEConfig": "dalle_zero.models.dvae",
    "DalleTransformer": "dalle_zero.models.transformer",
    "TransformerConfig": "dalle_zero.models.transformer",
    "CLIPConfig": "dalle_zero.models.clip",
    "DalleCLIP": "dalle_zero.models.clip",
    "BPETokenizer": "dalle_zero.tokenizers.bpe",
    "generate_image_tokens": "dalle_zero.sampling.generate",
    "TextToImagePipeline": "dalle_zero.pipelines.text_to_image",
    "GenerationOutput": "dalle_zero.pipelines.text_to_image",
    "BatchOutput": "dalle_zero.pipelines.text_to_image",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dalle_zero' has no attribute {name!r}")
