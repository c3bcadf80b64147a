#!/usr/bin/env python
"""dVAE speed on CPU: our DiscreteVAE vs DALLE-pytorch's DiscreteVAE on the shared `dvae` bench config.

The bench config (../shared/bench/README.md): 64 px images -> 16x16 tokens, 512 codes, batch 16;
DALLE-pytorch's model there is DiscreteVAE(image_size=64, num_layers=2, num_tokens=512,
codebook_dim=256, hidden_dim=64, num_resnet_blocks=1) = 536,963 parameters. Ours at a comparable
size: DVAEConfig(image_size=64, group_count=3, n_blk_per_group=1, n_hid=48, n_init=64,
vocab_size=512) = 494,894 parameters (the paper's architecture: full-resolution 7x7 input conv and
resblocks before each max-pool, so it does several times more work per image than the strided
convs of DALLE-pytorch at the same parameter count).

Timed work, batch 16, median of repeated runs after warm-up:
  train_step  full paper objective (Gumbel-softmax, logit-Laplace NLL, KL) + backward + AdamW step
  encode      pixels -> argmax codes;   decode   codes -> pixels   (no grad)

Usage:
    python benchmarks/bench_dvae.py                      # ours (this venv) + same-torch runs + reference
    python benchmarks/bench_dvae.py --reference-venv ''  # ours only
    python benchmarks/bench_dvae.py --reference-venv '' --memory-format both [--shape demo]
        # ours with channels-last weights (the model's default) and with contiguous (NCHW) ones, side
        # by side; --shape demo times the `dalle demo` preset's dVAE (32 px -> 8x8, batch 32) instead
    python benchmarks/bench_dvae.py --reference-venv '' --shape demo --tau 0.0625 --denormals both
        # train steps at the end of the Gumbel temperature schedule (tau 1/16, after --settle steps
        # at that tau), with denormal floats flushed to zero (as the `dalle` program does first thing)
        # and kept, side by side

Every row is JSON on stdout: section, metric, value, unit, median/min/max (ms), images_per_s.
Each configuration runs in a fresh subprocess with 2 threads. When the reference venv exists
(default $HOME/.venv-dalle-pytorch, torch 2.14.1), our model is timed again with *that* torch
build so the ratio compares the two implementations on the same torch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

THREADS = 2
BATCH = 16
SHAPES = {  # name -> (model fields, image size, batch)
    "bench": (dict(image_size=64, group_count=3, n_blk_per_group=1, n_hid=48, n_init=64, vocab_size=512), 64, 16),
    "demo": (dict(image_size=32, group_count=3, n_blk_per_group=1, n_hid=32, n_init=64, vocab_size=512), 32, 32),
}
REPO = Path(__file__).resolve().parent.parent
OURS = SHAPES["bench"][0]


_LAST_CPU: list[float] = []  # process CPU seconds (all threads) of the last _timeit() reps


def _timeit(fn, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out, cpu = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    _LAST_CPU[:] = cpu
    return out


def _row(section: str, metric: str, ts: list[float], batch: int = BATCH, **extra) -> dict:
    ms = [t * 1000 for t in ts]
    med = statistics.median(ms)
    return dict(
        section=section,
        metric=metric,
        value=round(med, 3),
        unit="ms",
        median=round(med, 3),
        min=round(min(ms), 3),
        max=round(max(ms), 3),
        n=len(ms),
        cpu_median=round(statistics.median(_LAST_CPU) * 1000, 3),  # CPU ms (all threads): robust to a busy box
        images_per_s=round(batch / (med / 1000), 1),
        batch=batch,
        loadavg=round(os.getloadavg()[0], 2),
        **extra,
    )


def child_ours(
    section: str, reps: int, memory_format: str = "channels_last", shape: str = "bench",
    tau: float | None = None, flush_denormal: bool = True, settle: int = 0,
) -> None:
    """Time our DiscreteVAE in this process and print JSON rows (weights in ``memory_format``).

    ``tau``: the Gumbel-softmax temperature of every step (default: the schedule's start, 1), after
    ``settle`` untimed training steps at it. ``flush_denormal``: flush denormal floats to zero before
    torch starts its threads, as the ``dalle`` program does (``dalle_zero.runtime.flush_denormals``).
    """
    import torch

    from dalle_zero.runtime import flush_denormals

    torch.set_num_threads(THREADS)
    if flush_denormal:
        flush_denormals()
    from dalle_zero.models.dvae import DiscreteVAE, DVAEConfig
    from dalle_zero.training.dvae import DVAETask, DVAETrainConfig
    from dalle_zero.training.loop import LoopConfig

    fields, size, batch_size = SHAPES[shape]
    torch.manual_seed(0)
    cfg = DVAEConfig(**fields)
    model = DiscreteVAE(cfg)  # channels-last weights
    if memory_format == "contiguous":
        model = model.to(memory_format=torch.contiguous_format)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            dict(
                section=section,
                metric="params",
                value=n_params,
                unit="params",
                torch=torch.__version__,
                config=fields,
                grid=cfg.grid_size,
                memory_format=memory_format,
            )
        ),
        flush=True,
    )
    taus = {} if tau is None else {"tau_start": tau, "tau_end": tau}
    train_cfg = DVAETrainConfig(model=cfg, loop=LoopConfig(steps=1000, batch_size=batch_size), **taus)
    task = DVAETask(train_cfg, train_data=[])
    opt = task.make_optimizer(model)
    pixels = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    batch = {"pixels": pixels, "seed": torch.arange(batch_size)}
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = task.loss(model, batch, 10)
        loss.backward()
        opt.step()

    for _ in range(settle):
        step()
    extra = dict(batch=batch_size, memory_format=memory_format, shape=shape, tau=train_cfg.tau_at(10),
                 flush_denormal=flush_denormal, settle=settle)
    print(json.dumps(_row(section, "train_step", _timeit(step, 3, reps), **extra)), flush=True)
    model.eval()
    print(json.dumps(_row(section, "encode", _timeit(lambda: model.encode(pixels), 3, reps), **extra)), flush=True)
    codes = model.encode(pixels)
    assert codes.shape == (batch_size, cfg.grid_size, cfg.grid_size)
    print(json.dumps(_row(section, "decode", _timeit(lambda: model.decode(codes), 3, reps), **extra)), flush=True)


def _run(cmd: list[str], env_extra: dict[str, str]) -> list[dict]:
    env = dict(
        os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), PYTHONWARNINGS="ignore", **env_extra
    )
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    rows = []
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            rows.append(json.loads(line))
            print(line, flush=True)
    if p.returncode != 0:
        row = dict(section="error", metric="failed", cmd=" ".join(cmd), stderr_tail=p.stderr[-800:])
        print(json.dumps(row), flush=True)
    return rows


def _print_ratios(rows: list[dict], other: str, name: str, ms_keys: tuple[str, str], **extra) -> None:
    """One JSON row per timed metric: section ``other``'s median over section "ours"'s (> 1: ours faster)."""
    by = {(r["section"], r["metric"]): r for r in rows}
    for metric in ("train_step", "encode", "decode"):
        a, b = by.get(("ours", metric)), by.get((other, metric))
        if a and b:
            print(json.dumps(dict(
                section="ratio", metric=f"{metric}.{name}_speedup", value=round(b["median"] / a["median"], 3),
                unit="x", cpu_time_ratio=round(b["cpu_median"] / a["cpu_median"], 3),
                **{ms_keys[0]: a["median"], ms_keys[1]: b["median"]}, **extra,
            )), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    common.add_reference_arguments(ap)
    ap.add_argument(
        "--memory-format", choices=("channels_last", "contiguous", "both"), default="channels_last",
        help="weight layout of our model (both: two runs side by side, then their ratio)",
    )
    ap.add_argument("--shape", choices=sorted(SHAPES), default="bench", help="bench config or the demo preset's dVAE")
    ap.add_argument("--tau", type=float, default=None, help="Gumbel temperature of the timed steps (default 1)")
    ap.add_argument("--settle", type=int, default=150, help="untimed train steps at --tau before timing")
    ap.add_argument(
        "--denormals", choices=("flush", "keep", "both"), default="flush",
        help="flush denormal floats to zero (as the dalle program does) or keep them; both: side by side",
    )
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    settle = args.settle if args.tau is not None else 0
    if args._child:
        child_ours(args._child, args.reps, args.memory_format, args.shape, args.tau, args.denormals == "flush", settle)
        return

    me = [os.path.abspath(__file__), "--reps", str(args.reps), "--shape", args.shape, "--settle", str(settle)]
    if args.tau is not None:
        me += ["--tau", str(args.tau)]
    formats = ("channels_last", "contiguous") if args.memory_format == "both" else (args.memory_format,)
    if args.denormals == "both" and len(formats) == 2:
        ap.error("--denormals both and --memory-format both: compare one thing at a time")
    rows = []
    for fmt in formats:
        section = "ours" if fmt == "channels_last" else "ours_contiguous"
        rows += _run([sys.executable, *me, "--memory-format", fmt, "--denormals", "flush" if args.denormals == "both"
                      else args.denormals, "--_child", section], {})
    if args.denormals == "both":
        rows += _run([sys.executable, *me, "--memory-format", formats[0], "--denormals", "keep",
                      "--_child", "ours_denormals"], {})
        tau = next((r["tau"] for r in rows if "tau" in r), None)
        _print_ratios(rows, "ours_denormals", "flush_denormal", ("flush_ms", "keep_ms"), shape=args.shape,
                      tau=tau, note=">1 means flushing denormals is faster")
    if len(formats) == 2:
        _print_ratios(rows, "ours_contiguous", "channels_last", ("channels_last_ms", "contiguous_ms"),
                      shape=args.shape, note=">1 means channels-last weights are faster")
    ref_py = Path(args.reference_venv) / "bin" / "python" if args.reference_venv else None
    if ref_py is None or not ref_py.exists():
        print(json.dumps(dict(section="note", metric="reference_skipped", value=str(args.reference_venv))))
        return
    # same torch build as the reference: our source on its interpreter
    rows += _run([str(ref_py), *me, "--memory-format", formats[0], "--_child", "ours_same_torch"],
                 {"PYTHONPATH": str(REPO / "src")})
    ref = _run([str(ref_py), str(Path(args.reference_bench) / "bench_dalle_pytorch.py"), "--sections", "dvae"], {})
    by = {(r["section"], r["metric"]): r for r in rows + ref}
    pairs = {"train_step": "vae.train_step", "encode": "vae.encode_get_codebook_indices", "decode": "vae.decode"}
    for ours_metric, ref_metric in pairs.items():
        a, b = by.get(("ours_same_torch", ours_metric)), by.get(("dvae", ref_metric))
        if a and b:
            # > 1: ours is faster; wall-clock and CPU-time ratios (CPU time is steadier on a shared machine)
            row = dict(
                section="ratio",
                metric=f"{ours_metric}.speedup_vs_dalle_pytorch",
                value=round(b["median"] / a["median"], 3),
                unit="x",
                cpu_time_ratio=round(b["cpu_median"] / a["cpu_median"], 3),
                ours_ms=a["median"],
                dalle_pytorch_ms=b["median"],
                ours_cpu_ms=a["cpu_median"],
                dalle_pytorch_cpu_ms=b["cpu_median"],
                note="same torch build; >1 means ours is faster per batch",
            )
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
