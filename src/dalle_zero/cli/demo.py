"""``dalle demo``: build the emoji data, train every model, sample, evaluate, write a report.

One command, no arguments needed (paper §2 in miniature): the emoji dataset (downloaded once with
``npm pack`` and cached under ``~/.cache/dalle-zero``), the BPE tokenizer, the dVAE, the token
shards, the CLIP reranker, a second CLIP and the evaluator for the figures, and the prior, with
step counts scaled to ``--minutes`` from step rates measured on this machine; then reranked samples
for seen and held-out captions, an image-to-image example, ``dalle eval`` and ``DIR/report.html``.
Run it again after an interruption to resume where it stopped. See :mod:`dalle_zero.demo`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import signal
import sys
from pathlib import Path

HELP = "train the whole system on emoji in minutes on a CPU and write an HTML report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo", help="output folder (default ./demo); run again to resume")
    parser.add_argument("--minutes", type=float, default=None, help="time budget in minutes (default 15, the preset's)")
    parser.add_argument(
        "--data", default=None, help="an existing dataset folder from `dalle data emoji` (default: build one)"
    )
    parser.add_argument(
        "--styles",
        default=None,
        help="comma-separated art styles of the dataset: google, twitter (default: google,twitter)",
    )
    parser.add_argument("--config", default="demo", help="demo preset name or JSON file (default: demo)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def demo_command(args: argparse.Namespace) -> str:
    """The ``dalle demo`` command line of ``args``: the one that resumes this run, options and all."""
    parts = ["dalle demo", "--out", shlex.quote(args.out)]
    for flag, value in (("--minutes", args.minutes), ("--data", args.data), ("--styles", args.styles)):
        if value is not None:
            parts += [flag, shlex.quote(f"{value:g}" if isinstance(value, float) else str(value))]
    if args.config != "demo":
        parts += ["--config", shlex.quote(args.config)]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.demo import DemoInterrupted, load_demo_config, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    config = load_demo_config(args.config)
    if args.minutes is not None:
        if args.minutes <= 0:
            raise ValueError(f"--minutes must be > 0, got {args.minutes}")
        config = config.replace(minutes=args.minutes)
    if args.styles is not None:
        styles = tuple(s.strip().lower() for s in args.styles.split(",") if s.strip())
        config = config.replace(dataset=dataclasses.replace(config.dataset, styles=styles))
    out = Path(args.out)
    print(f"dalle demo: {config.minutes:g}-minute budget, output in {out}")
    # A stop between training loops (while the demo encodes, samples or evaluates) ends as Ctrl-C does:
    # unhandled, SIGTERM would end the process without a word and leave its helper processes behind.
    # The training loops set their own handler (checkpoint, then stop) and put this one back.
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # raises KeyboardInterrupt
    except ValueError:  # not the main thread (run from Python): leave signals alone
        previous = None
    try:
        report = run_demo(out, config, data=args.data, progress=not args.no_progress, command=demo_command(args))
    except (DemoInterrupted, KeyboardInterrupt) as e:
        reason = str(e) if isinstance(e, DemoInterrupted) else "stopped"
        print(f"dalle demo: {reason}; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(f"report: {report.resolve()}")
    return 0
