"""``dalle train dvae``: train the stage-1 discrete VAE on a folder of images or shards (paper §2.1, App. A.2).

The config is a preset name (``dvae_emoji32``, ``dvae_tiny``, ``dvae_paper``: JSON files in
``dalle_zero/configs``) or a JSON file of :class:`~dalle_zero.training.dvae.DVAETrainConfig`
fields; flags override single fields. With ``splits.json`` in the data folder the model trains on
the "train" split and is evaluated on "validation". ``--resume`` continues the run in ``--out`` from
its ``train_config.json`` (``--steps`` may extend it).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dalle_zero.cli.options import add_data_argument, train_config_fields

HELP = "train the discrete VAE (image tokenizer) on a folder of images or WebDataset shards"

DEFAULT_PRESET = "dvae_emoji32"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_argument(parser, required=False)
    parser.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, samples/, model/)")
    parser.add_argument("--config", default=None, help=f"preset name or JSON file (default: {DEFAULT_PRESET})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--steps", type=int, default=None, help="override loop.steps (schedules scale with it)")
    parser.add_argument("--batch-size", type=int, default=None, help="override loop.batch_size")
    parser.add_argument("--image-size", type=int, default=None, help="override model.image_size")
    parser.add_argument("--vocab-size", type=int, default=None, help="override model.vocab_size")
    parser.add_argument("--lr", type=float, default=None, help="override the peak learning rate (lr_start)")
    parser.add_argument("--ema-decay", default=None, help="override loop.ema_decay (a number, or 'none')")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="override loop.precision")
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default=None, help="override loop.strategy (torchrun)")
    parser.add_argument("--eval-every", type=int, default=None, help="override loop.eval_every (0: at the end)")
    parser.add_argument("--seed", type=int, default=None, help="override loop.seed (init, data order, noise)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _ema(value: str) -> float | None:
    if value.lower() in ("none", "off", "0"):
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--ema-decay must be a number in (0, 1) or 'none', got {value!r}") from None


def resolve_config(args: argparse.Namespace) -> Any:
    """Preset/file + saved run config + flags -> a validated DVAETrainConfig."""
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.data.sources import check_data_source
    from dalle_zero.training.dvae import DVAETrainConfig

    data, source = train_config_fields(args, prefix="dvae_", default=DEFAULT_PRESET)
    if args.data:
        data["data"] = str(Path(args.data).resolve())
    if not data.get("data"):
        raise ValueError("--data is required (the config names no image folder)")
    check_data_source(data["data"])
    model = dict(data.get("model", {}))
    for key, value in (("image_size", args.image_size), ("vocab_size", args.vocab_size)):
        if value is not None:
            model[key] = value
    data["model"] = model
    loop = dict(data.get("loop", {}))
    overrides = (
        ("steps", args.steps),
        ("batch_size", args.batch_size),
        ("seed", args.seed),
        ("precision", args.precision),
        ("strategy", args.strategy),
        ("eval_every", args.eval_every),
    )
    for key, value in overrides:
        if value is not None:
            loop[key] = value
    if args.ema_decay is not None:
        loop["ema_decay"] = _ema(args.ema_decay)
    data["loop"] = loop
    if args.lr is not None:
        data["lr_start"] = args.lr
    return DVAETrainConfig.from_dict(data, source=source)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.training.dvae import DVAETask, build_datasets, build_model
    from dalle_zero.training.loop import train
    from dalle_zero.training.run_files import last_validation_step

    config = resolve_config(args)
    train_data, eval_data, note = build_datasets(config)
    model = build_model(config)
    m, lp = config.model, config.loop
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"dVAE: {n_params / 1e6:.2f}M parameters, {m.image_size} px -> {m.grid_size}x{m.grid_size} codes "
        f"of {m.vocab_size}; {lp.steps} steps of batch {lp.batch_size} on {len(train_data)} images ({note})"
    )
    print(
        f"schedules: tau {config.tau_start:g}->{config.tau_end:g} over {config.tau_length} steps, "
        f"KL weight {config.kl_weight_start:g}->{config.kl_weight_end:g} over {config.kl_weight_length}, "
        f"lr {config.lr_start:g}->{config.lr_end:g} over {config.lr_length}; EMA {lp.ema_decay}"
    )
    model_dir = train(
        model,
        DVAETask(config, train_data=train_data, eval_data=eval_data),
        lp,
        args.out,
        train_config=config,
        resume=args.resume,
        progress=not args.no_progress,
    )
    step, last = last_validation_step(args.out)
    if "psnr" in last:
        print(
            f"validation at step {step}: PSNR {last['psnr']:.2f} dB, "
            f"{last['recon_bpd']:.3f} bits/dim, codebook perplexity {last['perplexity']:.1f}, "
            f"{100 * last['code_usage']:.1f}% of codes used"
        )
        grids = sorted((Path(args.out) / "samples").glob("dvae_recon_step_*.png"))
        if grids:
            print(f"reconstructions: {grids[-1]}")
    print(f"wrote {model_dir}")
    return 0
