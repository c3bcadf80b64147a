"""``dalle plan``: parameters, FLOPs, memory and training time of a prior (paper §2.4–2.5).

``--config`` is a prior preset from ``dalle_zero/configs``, named with or without ``prior_``
(``paper_12b`` for ``prior_paper_12b.json``; ``model_tiny`` and ``model_emoji`` hold a model only), or
a JSON file holding a transformer config, or a train config whose ``model`` entry is a complete
transformer config. A train config's ``loop`` gives the PowerSGD rank and, through its
``powersgd_shards``, the GPUs per machine unless the options say otherwise. The paper's setup
(Table 1, §2.5; docs/training_at_scale.md):

    dalle plan --config paper_12b --gpus 1024 --gpus-per-machine 8 --precision fp16 --peak-tflops 125 --gpu-memory 16
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dalle_zero.config import PRESET_DIR, current_preset_name, load_config_source, read_json_file

HELP = "estimate parameters, FLOPs, memory and time of training a prior"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="prior preset (paper_12b, model_emoji, ...) or JSON file")
    parser.add_argument("--gpus", type=int, default=1, help="number of GPUs (default 1)")
    parser.add_argument("--batch", type=int, default=None, help="global batch in sequences (default: 1 per GPU)")
    parser.add_argument("--steps", type=int, default=430_000, help="optimizer updates (default 430,000, the paper's)")
    parser.add_argument(
        "--precision", choices=("bf16", "fp32", "fp16"), default="bf16",
        help="bf16/fp32: this code's fp32 state, activations in that precision; fp16: the paper's state layout",
    )
    parser.add_argument("--peak-tflops", type=float, default=312.0, help="peak TFLOP/s per GPU (default A100 bf16)")
    parser.add_argument("--mfu", type=float, default=0.4, help="achieved fraction of peak (default 0.4)")
    parser.add_argument(
        "--shard", type=int, default=None,
        help="GPUs sharing the weights/optimizer (default: a machine's GPUs with --gpus-per-machine above 1, else all)",
    )
    parser.add_argument(
        "--gpus-per-machine", type=int, default=None,
        help="GPUs per machine: state sharded within one, PowerSGD between them (default: the config's "
        "loop.powersgd_shards, else 1; the paper: 8)",
    )
    parser.add_argument("--powersgd-rank", type=int, default=None, help="PowerSGD rank (default: the config's, else 0)")
    parser.add_argument("--gpu-memory", type=float, default=None, help="GB per GPU: say whether the run fits")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def load_transformer_config(name_or_path: str):  # -> TransformerConfig
    return load_plan_config(name_or_path)[0]


def load_plan_config(name_or_path: str) -> tuple[Any, dict[str, Any]]:
    """(TransformerConfig, the train config's ``loop`` entry or {}) of a preset name or JSON file."""
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.models.transformer import TransformerConfig

    path = Path(name_or_path)
    if not path.is_file():
        name = current_preset_name(name_or_path)
        preset = PRESET_DIR / f"{name.removesuffix('.json')}.json"
        path = preset if preset.is_file() and "/" not in name else load_config_source(name, prefix="prior_")[1]
    data = read_json_file(path)
    loop: dict[str, Any] = {}
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        loop = data["loop"] if isinstance(data.get("loop"), dict) else {}
        data = data["model"]
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in ("config_class", "model_type", "format_version")}
    return TransformerConfig.from_dict(data, source=str(path)), loop


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


def _layout(precision: str, rank: int) -> str:
    if precision == "fp16":
        return "paper's fp16 layout: 8 B per block-matrix param, 16 B for the rest"
    return "16 B/param" + (" + 4 B error buffer per block-matrix param" if rank else "")


def _memory(plan: Any, gpu_memory: float | None) -> str:
    gathered = f" + {_gb(plan.gathered_bytes_per_gpu)} gathered layers" if plan.gathered_bytes_per_gpu else ""
    text = f"{_gb(plan.memory_bytes_per_gpu)} (state{gathered} + checkpointed activations)"
    if gpu_memory is not None:
        fits = plan.memory_bytes_per_gpu <= gpu_memory * 1e9
        text += f": {'fits' if fits else 'does not fit'} a {gpu_memory:g} GB GPU"
    return text


def _powersgd(plan: Any) -> str:
    if not plan.powersgd_rank:
        return "off"
    m = plan.gpus_per_machine
    shards = f" ({plan.powersgd_rank // m} for each of {m} shards)" if m > 1 else ""
    return f"rank {plan.powersgd_rank}{shards}; the blocks' matrices compressed {100 * plan.compression_rate:.1f}%"


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.planning import plan_training

    config, loop = load_plan_config(args.config)
    rank = args.powersgd_rank if args.powersgd_rank is not None else int(loop.get("powersgd_rank", 0))
    per_machine = args.gpus_per_machine or int(loop.get("powersgd_shards", 1))
    if args.gpus_per_machine is None and args.gpus % per_machine:
        raise ValueError(f"--gpus {args.gpus} is not a multiple of the config's loop.powersgd_shards ({per_machine}), "
                         "its GPUs per machine; pass --gpus-per-machine")
    plan = plan_training(
        config,
        gpus=args.gpus,
        batch_size=args.batch,
        steps=args.steps,
        precision=args.precision,
        peak_flops=args.peak_tflops * 1e12,
        mfu=args.mfu,
        shard=args.shard,
        gpus_per_machine=per_machine,
        powersgd_rank=rank,
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
        ("weights+grads+AdamW / GPU", f"{_gb(plan.state_bytes_per_gpu)} ({_layout(args.precision, rank)}, "
                                      f"sharded over {plan.shard})"),
        (
            "activations / GPU",
            f"{_gb(plan.activation_bytes_per_gpu)} ({args.precision}); "
            f"{_gb(plan.activation_bytes_per_gpu_checkpointed)} with activation checkpointing",
        ),
        ("memory / GPU", _memory(plan, args.gpu_memory)),
        ("PowerSGD", _powersgd(plan)),
        (
            "sent / step / machine",
            f"{_gb(plan.bytes_sent_per_step)}"
            + (f" ({_gb(plan.bytes_sent_per_step_uncompressed)} uncompressed)" if rank else " (uncompressed)")
            + f"; {args.gpus // per_machine} machine(s) of {per_machine} GPU(s)",
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
