"""``dalle train prior``: train the transformer prior on token shards (paper §2.2, App. B.2).

The model's image side (``image_grid``, ``image_vocab_size``) comes from the token shards'
``index.json`` and its text side (``text_vocab_size``, ``text_seq_len``) from the tokenizer, unless
the config file sets them; then they must agree. ``--config`` takes a JSON file or a preset name
(``tiny``, ``emoji``: ``dalle_zero/configs/prior_<name>.json``). Command-line options override the
file. ``--resume`` continues the run in ``--out`` from its last checkpoint, with the run's saved
config unless ``--config`` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from dalle_zero.cli.options import train_config_fields

HELP = "train the transformer prior on token shards written by `dalle encode`"


# command-line option -> LoopConfig field
LOOP_OPTIONS = {
    "steps": "steps",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "precision": "precision",
    "strategy": "strategy",
    "seed": "seed",
    "log_every": "log_every",
    "eval_every": "eval_every",
    "checkpoint_every": "checkpoint_every",
    "num_workers": "num_workers",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", help="token shard folder written by `dalle encode`")
    parser.add_argument("--tokenizer", help="BPE tokenizer folder (`dalle train tokenizer`)")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, model/)")
    parser.add_argument("--config", help="train config JSON file, or a preset name: tiny, emoji")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument("--steps", type=int, help="optimizer updates")
    parser.add_argument("--batch-size", type=int, help="sequences per micro-batch (per process)")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per update")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="bf16 = autocast; fp16 = the paper's fp16 with per-resblock gradient scales (GPUs without bf16)",
    )
    parser.add_argument(
        "--strategy",
        choices=("ddp", "fsdp"),
        help="under torchrun: ddp (a replica per process) or fsdp (shards; for models that do not fit one device)",
    )
    parser.add_argument(
        "--activation-checkpointing",
        action="store_true",
        default=None,
        help="recompute block activations in the backward pass (less memory)",
    )
    parser.add_argument("--lr", type=float, help="peak learning rate (paper 4.5e-4)")
    parser.add_argument("--lr-schedule", choices=("plateau", "cosine"), help="after warm-up (paper: plateau)")
    parser.add_argument(
        "--plateau-on",
        choices=("train", "validation"),
        help="the loss whose plateaus halve the rate (paper: train; validation for a small dataset read many times)",
    )
    parser.add_argument("--warmup-steps", type=int, help="linear warm-up length")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--eval-every", type=int, help="validation every N updates (0: only at the end)")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--num-workers", type=int, help="data loader processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_config(args: argparse.Namespace) -> tuple[Any, Any]:
    """(PriorTrainConfig, BPETokenizer) from the config file / saved run config and the options."""
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.tokenizers.bpe import BPETokenizer
    from dalle_zero.training.prior import PriorTrainConfig
    from dalle_zero.training.prior_data import data_model_fields

    data, source = train_config_fields(args, prefix="prior_", default=None)
    data["tokens"] = args.tokens or data.get("tokens")
    data["tokenizer"] = args.tokenizer or data.get("tokenizer")
    if not data["tokens"]:
        raise ValueError("no token shards given: pass --tokens DIR (written by `dalle encode`)")
    if not data["tokenizer"]:
        raise ValueError("no tokenizer given: pass --tokenizer DIR (written by `dalle train tokenizer`)")
    tokenizer = BPETokenizer.from_pretrained(data["tokenizer"])

    model = dict(data.get("model") or {})
    for name, (value, where) in data_model_fields(data["tokens"], tokenizer, data["tokenizer"]).items():
        if name in model and model[name] != value:
            raise ValueError(f"{source}: model.{name} is {model[name]} but {where} has {value}")
        model[name] = value
    data["model"] = model

    loop = dict(data.get("loop") or {})
    for opt, name in LOOP_OPTIONS.items():
        if getattr(args, opt) is not None:
            loop[name] = getattr(args, opt)
    if args.activation_checkpointing:
        loop["activation_checkpointing"] = True
    data["loop"] = loop
    for opt in ("lr", "lr_schedule", "plateau_on", "warmup_steps"):
        if getattr(args, opt) is not None:
            data[opt] = getattr(args, opt)
    return PriorTrainConfig.from_dict(data, source=source), tokenizer


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.training.loop import train
    from dalle_zero.training.prior import PriorTask, build_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg, tokenizer = resolve_config(args)
    task = PriorTask(cfg, tokenizer=tokenizer)
    model = build_model(cfg)
    m = cfg.model
    print(
        f"prior: {m.n_layer} layers, {m.n_head} heads, d {m.n_embd}, {model.num_parameters():,} parameters; "
        f"text {m.text_seq_len} x {m.text_vocab_size} ids, image {m.image_grid}x{m.image_grid} x "
        f"{m.image_vocab_size} codes; {len(task.train_dataset())} training pairs"
    )
    out = Path(args.out)
    model_dir = train(
        model, task, cfg.loop, out, train_config=cfg, resume=args.resume, progress=not args.no_progress
    )
    if not (out / "tokenizer").exists():
        tokenizer.save_pretrained(out / "tokenizer")  # the run folder carries what reads its model
    _print_summary(out / "metrics.jsonl")
    print(f"model: {model_dir}")
    return 0


def _print_summary(path: Path) -> None:
    if not path.is_file():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if r.get("loss") is not None]
    val_rows = [r for r in rows if r.get("val/loss") is not None]
    if train_rows:
        r = train_rows[-1]
        print(
            f"step {r['step']}: train loss {r['loss']:.4f} (text {r.get('loss_text', float('nan')):.4f}, "
            f"image {r.get('loss_image', float('nan')):.4f}), lr {r.get('lr', float('nan')):.3g}"
        )
    if val_rows:
        r = val_rows[-1]
        print(
            f"step {r['step']}: validation loss {r['val/loss']:.4f} (text {r['val/loss_text']:.4f}, "
            f"image {r['val/loss_image']:.4f}, {r['val/bits_per_image_token']:.3f} bits per image token)"
        )
