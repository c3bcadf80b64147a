"""Command-line options shared by several subcommands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from dalle_zero.config import load_config_source
from dalle_zero.pipelines.sampling_defaults import resolve
from dalle_zero.sampling.generate import GUIDANCE_TOP_P
from dalle_zero.training.run_files import TRAIN_CONFIG

# What ``--data`` of the commands that read image-caption pairs accepts (data.sources.open_image_text_dataset).
DATA_SOURCES = (
    "folder of images with same-stem .txt captions (splits.json optional), or WebDataset shards "
    "(.tar, folder of .tar, shards/{00000..00009}.tar), or a .csv/.jsonl manifest of image,caption"
)


def add_data_argument(parser: argparse.ArgumentParser, *, required: bool = True, note: str = "") -> None:
    """``--data``: image-caption pairs in any form the readers take; ``note`` is added to the help."""
    parser.add_argument("--data", required=required, default=None, help=DATA_SOURCES + note)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """--temperature, --top-k, --top-p, --guidance-scale, --guidance-top-p (read as args.temperature, ...).

    Left unset, temperature and guidance take the model folder's recommended settings
    (``sampling.json``, :mod:`~dalle_zero.pipelines.sampling_defaults`), else the paper's."""
    parser.add_argument(
        "--temperature", type=float, help="softmax temperature (default: the model folder's sampling.json, else 1)"
    )
    parser.add_argument("--top-k", type=int, help="keep the K most likely image codes per step")
    parser.add_argument("--top-p", type=float, help="nucleus sampling: keep codes up to probability P")
    parser.add_argument(
        "--guidance-scale",
        type=float,
        help="classifier-free guidance scale (1 = none; needs a prior trained with empty captions; "
        "default: the model folder's sampling.json, else 1)",
    )
    parser.add_argument(
        "--guidance-top-p",
        type=float,
        help=f"guidance moves probability only among the codes of the conditional nucleus of this mass "
        f"(1 = plain classifier-free guidance; default: the model folder's sampling.json, else {GUIDANCE_TOP_P:g})",
    )


def sampling_settings(args: argparse.Namespace, defaults: Any = None) -> dict[str, float | int | None]:
    """The options of :func:`add_sampling_arguments` as keyword arguments of the sampler/pipeline;
    with ``defaults`` (a ``SamplingDefaults``), the unset ones filled in from it."""
    given = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "guidance_scale": args.guidance_scale,
        "guidance_top_p": args.guidance_top_p,
    }
    return given if defaults is None else resolve(defaults, **given)


def parse_device(name: str, flag: str = "--device") -> Any:
    """``name`` as a ``torch.device``, or a ValueError naming ``flag`` if torch does not know it."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{flag}: {name!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "meta":
        raise ValueError(f"{flag}: 'meta' holds no data; use a real device such as cpu")
    return device


def check_device(name: str, flag: str = "--device") -> Any:
    """``name`` as a ``torch.device`` that this machine has, or a ValueError naming ``flag`` (an unknown
    device, CUDA on a build or machine without it, a GPU index past the last GPU)."""
    device = parse_device(name, flag)
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None) or getattr(
        getattr(torch.backends, device.type, None), "is_available", None
    )
    if is_available is None or not is_available():
        why = "this PyTorch build has no CUDA" if device.type == "cuda" and torch.version.cuda is None else (
            "not available on this machine"
        )
        raise ValueError(f"{flag} {name}: {why}; use --device cpu")
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise ValueError(f"{flag} {name}: there are only {count()} {device.type} device(s) (0 to {count() - 1})")
    return device


def train_config_fields(args: argparse.Namespace, *, prefix: str, default: str | None) -> tuple[dict[str, Any], str]:
    """The fields a ``dalle train`` command starts from, and where they came from.

    ``--config`` (a preset name, with or without ``prefix``, or a JSON file) wins; without it a
    ``--resume`` continues from the run's own ``train_config.json``; otherwise the preset ``default``
    (None: the config class's defaults, ``({}, "defaults")``). The command's flags go on top.
    """
    saved = Path(args.out) / TRAIN_CONFIG
    if args.config:
        spec = args.config
    elif args.resume and saved.is_file():
        spec = str(saved)
    elif default is None:
        return {}, "defaults"
    else:
        spec = default
    data, path = load_config_source(spec, prefix=prefix)
    return data, str(path)


def check_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """``path`` if a folder can be written there (it is one, or can be made), else a one-line error
    naming ``flag``; checked before any work, so that no work is lost at the end."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag}: {path} exists and is not a folder; choose a folder for the output")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{flag}: {ancestor} is a file, so the folder {path} cannot be made there")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag}: cannot write in {ancestor}")
    return path


def load_pipeline(args: argparse.Namespace) -> Any:
    """The ``--model`` folder as a pipeline on ``--device`` (int8 with ``--int8``); user errors in one line."""
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.pipelines.text_to_image import TextToImagePipeline

    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"--model: model folder not found: {model_dir}")
    if args.int8 and parse_device(args.device).type != "cpu":
        raise ValueError(f"--int8 is for sampling on the CPU, not on {args.device}")
    check_device(args.device)
    pipeline = TextToImagePipeline.from_pretrained(model_dir, map_location=args.device)
    if args.int8:
        pipeline.quantize_int8()
    return pipeline
