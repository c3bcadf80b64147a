"""Shared helpers for the benchmark scripts: timing, statistics, JSON rows, memory, matmul peak.

Every benchmark prints one JSON object per line (``section``, ``metric``, ``value``, ``unit`` and
extra keys), like ../shared/bench/bench_dalle_pytorch.py, so that figures from our code and from the
reference implementation can be read side by side. Peak memory is the process's ``ru_maxrss``, so
anything that reports it should run in a fresh subprocess per configuration (:func:`run_child`).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The reference implementation: the venv that has DALLE-pytorch installed, and the folder holding its
# timing harness (bench_dalle_pytorch.py). Each script takes them as --reference-venv and
# --reference-bench; these environment variables set the defaults (BENCHMARKS.md, the introduction).
REF_VENV = os.environ.get("DALLE_PYTORCH_VENV") or os.path.expanduser("~/.venv-dalle-pytorch")
SHARED_BENCH = Path(os.environ.get("DALLE_PYTORCH_BENCH") or ROOT.parent / "shared" / "bench")


def add_reference_arguments(ap: Any) -> None:
    """``--reference-venv`` and ``--reference-bench`` on an argparse parser, defaults as documented above."""
    ap.add_argument(
        "--reference-venv",
        default=REF_VENV,
        help="venv with DALLE-pytorch installed (default: $DALLE_PYTORCH_VENV or ~/.venv-dalle-pytorch; "
        "empty: skip the reference)",
    )
    ap.add_argument(
        "--reference-bench",
        default=str(SHARED_BENCH),
        help="folder with the reference harness bench_dalle_pytorch.py (default: $DALLE_PYTORCH_BENCH or "
        "../shared/bench beside this checkout)",
    )

THREADS = 2  # the reference harness pins 2 threads; we do the same for like-for-like figures


def emit(section: str, metric: str, value: Any = None, unit: str | None = None, **extra: Any) -> dict:
    """Print one JSON row and return it."""
    row: dict[str, Any] = {"section": section, "metric": metric}
    if value is not None:
        row["value"] = value
    if unit is not None:
        row["unit"] = unit
    row.update(extra)
    print(json.dumps(row), flush=True)
    return row


def timeit(fn: Callable[[], Any], *, warmup: int, reps: int) -> list[float]:
    """Wall seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summary(times: Iterable[float], scale: float = 1.0) -> dict[str, float]:
    """median/min/max/n/cv of ``times · scale`` (cv = stdev / mean) and the current load average."""
    xs = [t * scale for t in times]
    mean = statistics.fmean(xs)
    cv = statistics.stdev(xs) / mean if len(xs) > 1 and mean > 0 else 0.0
    return {
        "median": round(statistics.median(xs), 3),
        "min": round(min(xs), 3),
        "max": round(max(xs), 3),
        "n": len(xs),
        "cv": round(cv, 3),
        "loadavg": round(os.getloadavg()[0], 2),
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_threads(n: int = THREADS) -> None:
    import torch

    torch.set_num_threads(n)


def matmul_peak_flops(dtype_name: str = "fp32", *, n: int = 2048, reps: int = 5) -> float:
    """Measured FLOP/s of an n×n by n×n matmul in ``dtype_name`` ("fp32" | "bf16"), best of reps."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    times = timeit(lambda: a @ b, warmup=2, reps=reps)
    return 2.0 * n**3 / min(times)


def wait_quiet(max_load: float | None, *, timeout: float = 600.0, poll: float = 5.0) -> float:
    """Sleep until the 1-minute load average is below ``max_load`` (or ``timeout`` s); return the load."""
    load = os.getloadavg()[0]
    deadline = time.monotonic() + timeout
    while max_load is not None and load >= max_load and time.monotonic() < deadline:
        time.sleep(poll)
        load = os.getloadavg()[0]
    return load


def child_env(threads: int = THREADS) -> dict[str, str]:
    return dict(
        os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore"
    )


@contextlib.contextmanager
def env(**values: str) -> Iterator[None]:
    """Set environment variables for the children started inside the block (:func:`run_child`)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_child(cmd: list[str], *, timeout: float | None = None, echo: bool = True) -> list[dict]:
    """Run ``cmd`` (a benchmark child printing JSON rows), echo and return its rows.

    A failed child yields one ``child_failed`` row with the tail of its stderr instead of raising.
    """
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout)
    except subprocess.TimeoutExpired as e:
        row = {"metric": "child_failed", "cmd": cmd, "error": f"timeout after {e.timeout} s"}
        print(json.dumps(row), flush=True)
        return [row]
    rows = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows.append(row)
        if echo:
            print(json.dumps(row), flush=True)
    if proc.returncode != 0:
        row = {
            "metric": "child_failed",
            "cmd": cmd,
            "rc": proc.returncode,
            "stderr_tail": proc.stderr[-1500:],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def python_for(venv: str | None) -> str:
    """The interpreter of ``venv`` (a virtualenv folder), or this one."""
    return os.path.join(venv, "bin", "python") if venv else sys.executable


# the reference harness uses 1000 text ids and 512 image codes in every transformer section
TEXT_VOCAB, IMAGE_VOCAB = 1000, 512


def section_transformer_config(dims: dict[str, int], pattern: str) -> Any:
    """Our TransformerConfig for a benchmark section's ``dims``.

    ``dims`` holds n_layer, n_head, n_embd, text_seq_len and image_grid. The sections shared with
    bench_dalle_pytorch.py must match DALLE-pytorch in size: its feed-forward is GEGLU with mult 4
    (12·d² weights), so ours uses ``mlp_ratio=6`` (also 12·d²) unless ``dims`` gives ``mlp_ratio``
    (and ``conv_kernel_size``), as the sections of our own presets do. ``pattern`` is "full" or
    "paper" (row, column, ..., conv last).
    """
    from dalle_zero.models.transformer import TransformerConfig

    return TransformerConfig(
        n_layer=dims["n_layer"],
        n_head=dims["n_head"],
        n_embd=dims["n_embd"],
        text_vocab_size=TEXT_VOCAB,
        text_seq_len=dims["text_seq_len"],
        image_vocab_size=IMAGE_VOCAB,
        image_grid=dims["image_grid"],
        mlp_ratio=dims.get("mlp_ratio", 6),
        conv_kernel_size=dims.get("conv_kernel_size", 11),
        attn_pattern=("full",) * dims["n_layer"] if pattern == "full" else None,
    )
