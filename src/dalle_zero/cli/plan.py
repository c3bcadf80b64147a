"""``dalle plan``: parameters, FLOPs, memory and training time of a transformer config (paper §2.4–2.5).

``--config`` is a preset name from ``dalle_zero/configs`` (``paper-12b``, ``transformer_tiny``,
``transformer_emoji``) or a JSON file holding a transformer config, or a train config whose
``model`` entry is a complete transformer config.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

from dalle_zero.config import read_json_file

HELP = "estimate parameters, FLOPs, memory and time of training a transformer config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="preset name (paper-12b, transformer_emoji, ...) or JSON file")
    parser.add_argument("--gpus", type=int, default=1, help="number of GPUs (default 1)")
    parser.add_argument("--batch", type=int, default=None, help="global batch in sequences (default: 1 per GPU)")
    parser.add_argument("--steps", type=int, default=430_000, help="optimizer updates (default 430,000, the paper's)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="activation precision")
    parser.add_argument("--peak-tflops", type=float, default=312.0, help="peak TFLOP/s per GPU (default A100 bf16)")
    parser.add_argument("--mfu", type=float, default=0.4, help="achieved fraction of peak (default 0.4)")
    parser.add_argument("--shard", type=int, default=None, help="GPUs sharing the weights/optimizer (default all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def load_transformer_config(name_or_path: str):  # -> TransformerConfig
    from dalle_zero.models.transformer import TransformerConfig

    path = Path(name_or_path)
    if not path.is_file():
        preset = resources.files("dalle_zero") / "configs" / f"{name_or_path.removesuffix('.json')}.json"
        if not preset.is_file():
            raise FileNotFoundError(f"no config file or preset named {name_or_path!r}")
        path = Path(str(preset))
    data = read_json_file(path)
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in ("config_class", "model_type", "format_version")}
    return TransformerConfig.from_dict(data, source=str(path))


def _count(n: int) -> str:
    return f"{n / 1e9:,.3f} B" if n >= 1e9 else f"{n / 1e6:,.2f} M"


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from dalle_zero.planning import plan_training

    config = load_transformer_config(args.config)
    plan = plan_training(
        config,
        gpus=args.gpus,
        batch_size=args.batch,
        steps=args.steps,
        precision=args.precision,
        peak_flops=args.peak_tflops * 1e12,
        mfu=args.mfu,
        shard=args.shard,
    )
    if args.json:
        print(json.dumps({"config": config.to_dict(), **asdict(plan)}, indent=2))
        return 0
    p = plan.parameters
    batch = args.batch or args.gpus
    rows = [
        (
            "model",
            f"{config.n_layer} layers, {config.n_head} heads × {config.n_embd // config.n_head}, "
            f"d {config.n_embd}, stream {config.stream_len} positions",
        ),
        (
            "parameters",
            f"{_count(p['total'])} (blocks {_count(p['blocks'])}, of which matrices "
            f"{_count(p['block_matrices'])}; embeddings {_count(p['embeddings'])}; heads {_count(p['heads'])})",
        ),
        (
            "FLOPs / token (train)",
            f"{plan.flops_per_token:.3e} (attention {100 * plan.attention_fraction:.1f}% of forward)",
        ),
        (
            "FLOPs / step (train)",
            f"{plan.flops_per_step:.3e} sparse masks; {plan.flops_per_step_dense_attention:.3e} "
            "with dense causal attention",
        ),
        ("tokens / step", f"{plan.tokens_per_step:,} ({batch} sequences)"),
        (
            "weights+grads+AdamW / GPU",
            f"{_gb(plan.state_bytes_per_gpu)} (16 B/param, sharded over {args.shard or args.gpus})",
        ),
        (
            "activations / GPU",
            f"{_gb(plan.activation_bytes_per_gpu)} ({args.precision}); "
            f"{_gb(plan.activation_bytes_per_gpu_checkpointed)} with activation checkpointing",
        ),
        (
            "time / step",
            f"{_duration(plan.step_seconds)} at {args.gpus} × {args.peak_tflops:g} TFLOP/s × MFU {args.mfu:g}",
        ),
        ("time for all steps", f"{_duration(plan.total_seconds)} ({args.steps:,} steps)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
