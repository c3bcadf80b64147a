#!/usr/bin/env python
"""Training speed over the course of a run: optimizer steps per second in each part of its steps.

    python benchmarks/run_rates.py RUN [RUN ...] [--parts 4]

Reads a training run folder's ``metrics.jsonl`` (the loop logs each row's step and wall time) and
prints, per run, the steps per second between the logged rows nearest 5 %, 25 %, 50 %, 75 % and 99 %
of its steps (for ``--parts 4``), and the dVAE's Gumbel temperature at those rows where it is logged.
A rate that falls as the run goes on while the work per step stays the same points at the numbers
(denormal floats as the dVAE's temperature anneals: BENCHMARKS.md, "dVAE"), not at the machine.
One JSON row per run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402


def rates(run: Path, parts: int) -> dict:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{run}: no metrics.jsonl (not a training run folder)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]  # training rows (evaluation rows carry val/ figures only)
    if len(rows) < parts + 1:
        raise SystemExit(f"{run}: {len(rows)} logged training rows, too few for {parts} parts")
    marks = [0.05] + [k / parts for k in range(1, parts)] + [0.99]
    picked = [rows[min(len(rows) - 1, int(f * len(rows)))] for f in marks]
    per_part = [
        round((b["step"] - a["step"]) / (b["time"] - a["time"]), 2) for a, b in zip(picked, picked[1:])
    ]
    return {
        "steps_per_second": per_part,
        "at_steps": [r["step"] for r in picked],
        "tau": [round(r["tau"], 3) for r in picked] if "tau" in picked[0] else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="training run folders (with metrics.jsonl)")
    ap.add_argument("--parts", type=int, default=4)
    args = ap.parse_args()
    for run in args.runs:
        emit("run_rates", "steps_per_second_by_part", run=str(run), parts=args.parts, **rates(run, args.parts))


if __name__ == "__main__":
    main()
