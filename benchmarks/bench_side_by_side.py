#!/usr/bin/env python
"""A demo's dVAE and CLIP reranker trained one after the other on all the cores, then side by side.

    python benchmarks/bench_side_by_side.py --run DEMO --data DATA [--dvae-steps 600] [--clip-steps 300]

Trains ``dalle train dvae`` and ``dalle train clip`` with the train configs of a ``dalle demo`` run
(``DEMO/runs/{dvae,clip}/train_config.json``) for a fixed number of steps: first each alone on all
the cores, then both at once, each on half of them (``OMP_NUM_THREADS``), as the demo's
``"beside": "dvae"`` runs them. Prints each run's steps per second (from its ``metrics.jsonl``,
between the rows nearest 5 % and 99 % of its steps, so start-up is left out), the wall seconds of
the two orders, and their ratio. Runs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402


def command(kind: str, run: Path, data: str, out: Path, steps: int) -> list[str]:
    cmd = ["dalle", "train", kind, "--data", data, "--out", str(out), "--steps", str(steps), "--no-progress",
           "--config", str(run / "runs" / kind / "train_config.json")]
    if kind == "clip":
        cmd += ["--tokenizer", str(run / "tokenizer")]
    return cmd


def steps_per_second(out: Path) -> float:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    a, b = rows[int(0.05 * len(rows))], rows[int(0.99 * (len(rows) - 1))]
    return (b["step"] - a["step"]) / (b["time"] - a["time"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="a `dalle demo` output folder")
    ap.add_argument("--data", required=True, help="its dataset folder")
    ap.add_argument("--dvae-steps", type=int, default=600)
    ap.add_argument("--clip-steps", type=int, default=300)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    steps = {"dvae": args.dvae_steps, "clip": args.clip_steps}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def start(kind: str, order: str, threads: int) -> subprocess.Popen:
            out = root / f"{order}_{kind}"
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            return subprocess.Popen(command(kind, args.run, args.data, out, steps[kind]), env=env,
                                    stdout=subprocess.DEVNULL)

        wall = {}
        t0 = time.perf_counter()
        for kind in steps:
            if start(kind, "alone", cores).wait():
                raise SystemExit(f"dalle train {kind} failed")
        wall["one after the other"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        procs = [start(kind, "beside", max(1, cores // 2)) for kind in steps]
        if any(p.wait() for p in procs):
            raise SystemExit("a side-by-side run failed")
        wall["side by side"] = time.perf_counter() - t0
        for kind in steps:
            for order, threads in (("alone", cores), ("beside", max(1, cores // 2))):
                rate = steps_per_second(root / f"{order}_{kind}")
                emit("side_by_side", f"{kind}.{order}.steps_per_second", round(rate, 2), "steps/s",
                     threads=threads, steps=steps[kind])
    for order, seconds in wall.items():
        emit("side_by_side", "wall_seconds", round(seconds, 1), "s", order=order,
             **{f"{k}_steps": v for k, v in steps.items()})
    emit("side_by_side", "speedup", round(wall["one after the other"] / wall["side by side"], 3), cores=cores)


if __name__ == "__main__":
    main()
