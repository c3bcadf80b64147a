"""Pipelines: whole models that turn user inputs into outputs (paper §2, §2.6)."""

from dalle_zero.pipelines.text_to_image import BatchOutput, GenerationOutput, TextToImagePipeline, to_pil

__all__ = ["BatchOutput", "GenerationOutput", "TextToImagePipeline", "to_pil"]
