"""Command-line options shared by several subcommands."""

from __future__ import annotations

import argparse
from typing import Any

from dalle_zero.sampling.generate import GUIDANCE_TOP_P


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """--temperature, --top-k, --top-p, --guidance-scale (read as args.temperature, ...)."""
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (paper: 1)")
    parser.add_argument("--top-k", type=int, help="keep the K most likely image codes per step")
    parser.add_argument("--top-p", type=float, help="nucleus sampling: keep codes up to probability P")
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="classifier-free guidance scale (1 = none; needs a prior trained with empty captions)",
    )
    parser.add_argument(
        "--guidance-top-p",
        type=float,
        default=GUIDANCE_TOP_P,
        help=f"guidance moves probability only among the codes of the conditional nucleus of this mass "
        f"(default {GUIDANCE_TOP_P:g}; 1 = plain classifier-free guidance)",
    )


def sampling_settings(args: argparse.Namespace) -> dict[str, float | int | None]:
    """The options of :func:`add_sampling_arguments` as keyword arguments of the sampler/pipeline."""
    return {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "guidance_scale": args.guidance_scale,
        "guidance_top_p": args.guidance_top_p,
    }


def load_pipeline(args: argparse.Namespace) -> Any:
    """The ``--model`` folder as a pipeline on ``--device`` (int8 with ``--int8``); user errors in one line."""
    from pathlib import Path

    import torch

    from dalle_zero.pipelines.text_to_image import TextToImagePipeline

    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"--model: model folder not found: {model_dir}")
    if args.int8 and torch.device(args.device).type != "cpu":
        raise ValueError(f"--int8 is for sampling on the CPU, not on {args.device}")
    pipeline = TextToImagePipeline.from_pretrained(model_dir, map_location=args.device)
    if args.int8:
        pipeline.quantize_int8()
    return pipeline
