"""``dalle train clip``: train a CLIP (the reranker, or the R-precision CLIP) on image-caption pairs (paper §2.6).

The config is a preset name (``clip_emoji32``, ``clip_tiny``: JSON files in ``dalle_zero/configs``)
or a JSON file of :class:`~dalle_zero.training.clip.CLIPTrainConfig` fields. The model's
``text_vocab_size`` and ``text_seq_len`` default to the tokenizer's. ``--resume`` continues the run
in ``--out`` from its ``train_config.json`` (``--steps`` may extend it).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dalle_zero.cli.options import add_data_argument, train_config_fields

HELP = "train the CLIP-style reranker on image-caption pairs"



def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_argument(parser, required=False, note="; a splits.json beside them gives held-out evaluation")
    parser.add_argument("--tokenizer", help="tokenizer folder (from `dalle train tokenizer`)")
    parser.add_argument(
        "--dvae", help="dVAE run or model folder: show a share (recon_prob, default 0.5) of the images as it decodes"
    )
    parser.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, model/)")
    parser.add_argument("--config", default=None, help="preset name or JSON file (default: clip_emoji32)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--steps", type=int, default=None, help="override loop.steps")
    parser.add_argument("--batch-size", type=int, default=None, help="override loop.batch_size")
    parser.add_argument("--seed", type=int, default=None, help="override loop.seed (init and data order)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_config(args: argparse.Namespace) -> Any:
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.data.sources import check_data_source
    from dalle_zero.io import resolve_model_dir
    from dalle_zero.tokenizers.bpe import BPETokenizer
    from dalle_zero.training.clip import CLIPTrainConfig

    data, source = train_config_fields(args, prefix="clip_", default="clip_emoji32")
    if args.data:
        data["data"] = str(Path(args.data).resolve())
    if args.tokenizer:
        data["tokenizer"] = str(Path(args.tokenizer).resolve())
    if args.dvae:
        data["dvae"] = str(resolve_model_dir(args.dvae).resolve())
        data.setdefault("recon_prob", 0.5)
    for name in ("data", "tokenizer"):
        if not data.get(name):
            raise ValueError(f"--{name} is required (the config names no {name} folder)")
    check_data_source(data["data"])
    tokenizer = BPETokenizer.from_pretrained(data["tokenizer"])
    model = dict(data.get("model", {}))
    model.setdefault("text_vocab_size", tokenizer.vocab_size)
    model.setdefault("text_seq_len", tokenizer.text_seq_len)
    data["model"] = model
    loop = dict(data.get("loop", {}))
    for key, value in (("steps", args.steps), ("batch_size", args.batch_size), ("seed", args.seed)):
        if value is not None:
            loop[key] = value
    data["loop"] = loop
    return CLIPTrainConfig.from_dict(data, source=source), tokenizer


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.training.clip import CLIPTask, build_model
    from dalle_zero.training.loop import train
    from dalle_zero.training.run_files import last_validation_step

    config, tokenizer = resolve_config(args)
    model = build_model(config)
    task = CLIPTask(config, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"CLIP: {n_params / 1e6:.2f}M parameters, {config.loop.steps} steps of batch {config.loop.batch_size}")
    model_dir = train(
        model,
        task,
        config.loop,
        args.out,
        train_config=config,
        resume=args.resume,
        progress=not args.no_progress,
    )
    step, shown = last_validation_step(args.out)
    if shown:
        print(f"retrieval at step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in shown.items()))
    print(f"wrote {model_dir}")
    return 0
