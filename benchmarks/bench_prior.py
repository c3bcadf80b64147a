#!/usr/bin/env python
"""Train-step speed and memory of our transformer prior against DALLE-pytorch, same configs, same run.

    python benchmarks/bench_prior.py                          # dalle_full + large32, ours and theirs
    python benchmarks/bench_prior.py --sections dalle_full --skip-reference --out rows.jsonl

Configurations are those of ../shared/bench/bench_dalle_pytorch.py (``dalle_full``: d 256, 4 layers,
8 heads × 32, text 32 + 16×16 image tokens, batch 8; ``large32``: d 512, 8 layers, 8 heads × 64,
text 64 + 32×32 image tokens, batch 4; 1000 text ids, 512 image codes). DALLE-pytorch's feed-forward
is GEGLU with mult 4 (d → 8d → 4d → d, 12·d² weights), so ours uses ``mlp_ratio=6`` (d → 6d → d, the
same 12·d² weights and FLOPs): equal parameter count, both counts reported.

Every configuration runs in a fresh subprocess (peak memory is that process's ru_maxrss, as in their
harness) with 2 threads. A train step = zero_grad, loss forward, backward, optimizer step on one
fixed random batch, timed after warm-up steps (their harness: warm-up 3 / 10 timed for dalle_full, 1
/ 2 for large32). Variants: fp32 and bf16 autocast (``bf16attn``: bf16 with the attention of a train
step kept in bf16 too, as before ``nn.attention.CPU_BF16_ATTENTION_IN_FP32``), full causal attention
(like-for-like with their ``dalle_full``) and the paper's row/column/conv layer pattern. Ours run on
the reference venv's torch by default (the same torch build as theirs; ../shared/bench/README.md)
and, with ``--also-local``, on this venv's torch too. The reference runs as ``bench_dalle_pytorch.py
--sections ...`` in its venv.

Achieved FLOP/s: model FLOPs per step = 6 · (matrix parameters of blocks and heads) · tokens +
12 · n_layer · T · d · tokens (dense attention scores and values, forward + backward; nanoGPT's
estimate), divided by the step time and by the machine's matmul peak measured here (n × n fp32 and
bf16 matmuls, best of 5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = common.ROOT

DEMO = dict(n_layer=4, text_seq_len=32, image_grid=8, mlp_ratio=4, conv_kernel_size=5, warmup=3, reps=20)
# (d, layers, heads, text_seq_len, image_grid, batch, warmup, reps) as in bench_dalle_pytorch.py
CONFIGS = {
    "dalle_full": dict(
        n_embd=256, n_layer=4, n_head=8, text_seq_len=32, image_grid=16, batch=8, warmup=3, reps=10
    ),
    "large32": dict(
        n_embd=512, n_layer=8, n_head=8, text_seq_len=64, image_grid=32, batch=4, warmup=1, reps=2
    ),
    # the `dalle demo` prior (configs/demo.json), and two it was chosen against: d 256 at batch 24 (the
    # preset before) and d 96 (ours only: the reference harness has no such sections)
    "demo": dict(DEMO, n_embd=128, n_head=4, batch=48),
    "demo_d96": dict(DEMO, n_embd=96, n_head=3, batch=48),
    "demo_d256": dict(DEMO, n_embd=256, n_head=8, batch=24),
}
REFERENCE_SECTIONS = ("dalle_full", "large32")
VARIANTS = ("fp32-full", "bf16-full", "fp32-paper", "bf16-paper")


def matmul_dtype(variant: str) -> str:
    """The dtype a variant's matrix products run in: "bf16" for bf16 and bf16attn, else "fp32"."""
    return "bf16" if variant.split("-")[0].startswith("bf16") else "fp32"
TEXT_VOCAB, IMAGE_VOCAB = common.TEXT_VOCAB, common.IMAGE_VOCAB


def model_config(section: str, pattern: str):  # -> TransformerConfig
    return common.section_transformer_config(CONFIGS[section], pattern)


def model_flops_per_step(model, batch: int) -> float:
    """6·N·tokens + 12·L·T·d·tokens; N = matrix weights of the blocks and heads (not embeddings)."""
    cfg = model.config
    n = sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.dim() == 2 and ("blocks" in name or "head" in name)
    )
    t = cfg.text_seq_len + cfg.image_seq_len
    tokens = batch * t
    return 6.0 * n * tokens + 12.0 * cfg.n_layer * t * cfg.n_embd * tokens


def child(section: str, variant: str, profile: str | None) -> None:
    """One configuration in this (fresh) process: params, train-step time, tokens/s, peak RSS."""
    import contextlib

    import torch

    from dalle_zero.models.transformer import DalleTransformer
    from dalle_zero.runtime import keep_freed_memory
    from dalle_zero.training.prior import make_optimizer

    common.set_threads()
    malloc_tuned = keep_freed_memory()  # as dalle_zero.training.loop.train does on CPU
    precision, pattern, *kernel = variant.split("-")  # e.g. fp32-paper or fp32-paper-sdpa_dense
    if precision == "bf16attn":
        from dalle_zero.nn import attention

        attention.CPU_BF16_ATTENTION_IN_FP32 = False
    c = CONFIGS[section]
    label = f"{section}.ours.{variant}"
    torch.manual_seed(0)
    model = DalleTransformer(model_config(section, pattern)).train()
    if kernel:
        model.set_attention_kernel(kernel[0])
    cfg = model.config
    opt = make_optimizer(
        model, lr=3e-4, betas=(0.9, 0.96), eps=1e-8, weight_decay=4.5e-2
    )  # what training uses
    g = torch.Generator().manual_seed(0)
    b = c["batch"]
    text = torch.randint(1, TEXT_VOCAB, (b, cfg.text_seq_len), generator=g)
    image = torch.randint(0, IMAGE_VOCAB, (b, cfg.image_seq_len), generator=g)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if matmul_dtype(variant) == "bf16" else contextlib.nullcontext()
    )
    losses: list[float] = []

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = model.loss(text, image)
        loss.backward()
        opt.step()
        losses.append(float(loss))

    rss0 = common.peak_rss_mib()
    times = common.timeit(step, warmup=c["warmup"], reps=c["reps"])
    med = statistics.median(times)
    tokens = b * (cfg.text_seq_len + cfg.image_seq_len)
    flops = model_flops_per_step(model, b)
    peak_rss = common.peak_rss_mib()  # before the matmul probe below allocates anything
    # the machine's matmul peak right now, in this process (the load on a shared machine drifts)
    peak = common.matmul_peak_flops(matmul_dtype(variant))
    common.emit(
        section,
        f"{label}.train_step",
        round(med * 1000, 3),
        "ms",
        **common.summary(times, 1000.0),
        batch=b,
        tokens_per_s=round(tokens / med, 1),
        params=sum(p.numel() for p in model.parameters()),
        attn_pattern=list(cfg.attn_pattern),
        malloc_keeps_freed_memory=malloc_tuned,
        model_flops_per_step=flops,
        achieved_flops=round(flops / med),
        matmul_peak_flops_now=round(peak),
        flops_fraction_of_matmul_peak_now=round(flops / med / peak, 3),
        loss_first=round(losses[0], 4),
        loss_last=round(losses[-1], 4),
        torch=torch.__version__,
    )
    common.emit(
        section,
        f"{label}.train_peak_rss",
        round(peak_rss, 1),
        "MiB",
        rss_before_train_MiB=round(rss0, 1),
    )
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        Path(profile).write_text(table)
        common.emit(section, f"{label}.profile", profile)


def peak_child() -> None:
    import torch

    common.set_threads()
    for dtype in ("fp32", "bf16"):
        common.emit(
            "env",
            f"matmul_peak_{dtype}",
            round(common.matmul_peak_flops(dtype) / 1e9, 2),
            "GFLOP/s",
            n=2048,
            torch=torch.__version__,
            threads=torch.get_num_threads(),
        )


def _find(rows: list[dict], metric: str, section: str | None = None) -> dict | None:
    for r in rows:
        if r.get("metric") == metric and (section is None or r.get("section") == section):
            return r
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="dalle_full,large32")
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="precision-pattern[-kernel] list, e.g. fp32-paper-sdpa_dense (kernel: default sdpa)",
    )
    ap.add_argument(
        "--python",
        default=None,
        help="interpreter for our runs (default: the reference venv's, "
        "same torch build as theirs; falls back to this one)",
    )
    ap.add_argument("--also-local", action="store_true", help="also time ours on this interpreter's torch")
    ap.add_argument("--skip-reference", action="store_true")
    common.add_reference_arguments(ap)
    ap.add_argument("--reference-quick", action="store_true", help="pass --quick to their harness")
    ap.add_argument("--profile-dir", default=None, help="write a torch.profiler table per configuration here")
    ap.add_argument(
        "--reference-malloc-too",
        action="store_true",
        help="also run their harness with glibc's mmap and trimming off (what our training loop sets in-process)",
    )
    ap.add_argument("--out", default=None, help="also write every row to this JSONL file")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="LOAD",
        help="before each measurement wait (up to --wait-timeout s) for the 1-min load average < LOAD",
    )
    ap.add_argument("--wait-timeout", type=float, default=120.0)
    ap.add_argument(
        "--omp-passive",
        action="store_true",
        help="OMP_WAIT_POLICY=PASSIVE for ours and theirs: on a busy machine spinning OpenMP threads "
        "otherwise stall each other (a tiny model's step went from 1.4 s to 8 ms)",
    )
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_profile", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child == "peak":
        return peak_child()
    if args._child:
        section, variant = args._child.split(":")
        return child(section, variant, args._profile)

    ref_python = common.python_for(args.reference_venv)
    ours = args.python or (ref_python if os.path.exists(ref_python) else sys.executable)
    interpreters = [ours] + ([sys.executable] if args.also_local and sys.executable != ours else [])
    env_path = str(ROOT / "src")
    os.environ["PYTHONPATH"] = env_path + os.pathsep + os.environ.get("PYTHONPATH", "")
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    sections = args.sections.split(",")
    rows: list[dict] = []
    me = str(Path(__file__).resolve())

    def measure(cmd: list[str], **tag: str) -> None:
        common.wait_quiet(args.wait_quiet, timeout=args.wait_timeout)
        tag = {**tag, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}
        rows.extend(dict(r, **tag) for r in common.run_child(cmd))

    for py in interpreters:
        measure([py, me, "--_child", "peak"], python=py)
    # per section: ours, then theirs right after, so that both see the same machine load
    for section in sections:
        for py in interpreters:
            for variant in args.variants.split(","):
                cmd = [py, me, "--_child", f"{section}:{variant}"]
                if args.profile_dir:
                    Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
                    tag = "ref-torch" if py == ref_python else "local-torch"
                    cmd += ["--_profile", str(Path(args.profile_dir) / f"{section}.{variant}.{tag}.txt")]
                measure(cmd, python=py)
        if not args.skip_reference and args.reference_venv and section in REFERENCE_SECTIONS:
            cmd = [ref_python, str(Path(args.reference_bench) / "bench_dalle_pytorch.py"), "--sections", section]
            cmd += ["--quick"] if args.reference_quick else []
            measure(cmd, implementation="dalle_pytorch")
            if args.reference_malloc_too:
                with common.env(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**31 - 1)):
                    measure(cmd, implementation="dalle_pytorch", malloc="keep_freed_memory")
    rows += summarize(rows, sections, args.variants.split(","), ours)
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def summarize(rows: list[dict], sections: list[str], variants: list[str], ours_python: str) -> list[dict]:
    """Ratio rows: their step time / ours (speed-up), our peak RSS / theirs, FLOP/s / measured peak."""
    out = []
    peaks = {
        d: _find([r for r in rows if r.get("python") == ours_python], f"matmul_peak_{d}")
        for d in ("fp32", "bf16")
    }
    for section in sections:
        ref_step = _find(rows, f"{section}.train_step", section)
        ref_rss = _find(rows, f"{section}.train_peak_rss", section)
        ref_params = _find(rows, "params", section)
        for variant in variants:
            mine = [r for r in rows if r.get("python") == ours_python]
            step = _find(mine, f"{section}.ours.{variant}.train_step")
            rss = _find(mine, f"{section}.ours.{variant}.train_peak_rss")
            if step is None:
                continue
            peak = peaks[matmul_dtype(variant)]
            row = {
                "ours_ms": step["value"],
                "ours_tokens_per_s": step["tokens_per_s"],
                "ours_params": step["params"],
                "ours_peak_rss_MiB": rss["value"] if rss else None,
                "ours_train_rss_increase_MiB": round(rss["value"] - rss["rss_before_train_MiB"], 1)
                if rss
                else None,
            }
            if peak is not None:
                row["flops_fraction_of_matmul_peak"] = round(
                    step["achieved_flops"] / (peak["value"] * 1e9), 3
                )
                row["achieved_GFLOP_per_s"] = round(step["achieved_flops"] / 1e9, 2)
            if "flops_fraction_of_matmul_peak_now" in step:
                row["flops_fraction_of_matmul_peak_now"] = step["flops_fraction_of_matmul_peak_now"]
            if ref_step is not None:
                row.update(
                    ref_ms=ref_step["value"],
                    ref_tokens_per_s=ref_step["tokens_per_s"],
                    speedup=round(ref_step["value"] / step["value"], 2),
                    ref_params_trainable=ref_params.get("trainable") if ref_params else None,
                )
            if ref_rss is not None and rss is not None:
                row.update(
                    ref_peak_rss_MiB=ref_rss["value"],
                    ref_train_rss_increase_MiB=round(ref_rss["value"] - ref_rss["rss_before_train_MiB"], 1),
                    peak_rss_ratio=round(rss["value"] / ref_rss["value"], 2),
                )
            out.append(
                common.emit(section, f"{section}.compare.{variant}", row.get("speedup"), "x faster", **row)
            )
    return out


if __name__ == "__main__":
    main()
