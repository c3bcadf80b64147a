#!/usr/bin/env python
"""Caption encoding as the prior's training data calls it: one caption per sample, in Python.

Plain BPE runs in the Rust ``tokenizers`` library; BPE dropout (paper §2.2) runs in Python per sample
so that it is seeded, and with ``bpe_dropout_spares`` / ``bpe_dropout_spared_words`` some words are
left whole. Each 100 µs per caption costs a batch of 48 captions 4.8 ms of the prior's step, in the
process that trains it. Three modes, on a dataset's own captions (one of each image's captions,
drawn as the readers draw them):

  plain     encode(caption)
  dropout   encode(caption, dropout=True) at p = 0.1
  spared    the same, keep_whole = the image's name words + the demo's thirteen tone and style words

Usage (``--src`` is repeatable: each source tree is timed in its own process, side by side):

    python benchmarks/bench_caption_encoding.py --data DATASET --tokenizer TOKENIZER \\
        [--src src --src /tmp/other/src] [--captions 4000] [--reps 5]

Every row is JSON on stdout: section (the source tree), metric (the mode), µs per caption (median of
``--reps`` passes over the captions, after one untimed pass).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import emit, run_child, summary, timeit  # noqa: E402

SPARED_WORDS = ("light", "medium", "dark", "skin", "tone", "noto", "google", "twitter", "twemoji", "style",
                "emoji", "with", "and")  # the demo preset's bpe_dropout_spared_words


def child(args: argparse.Namespace) -> None:
    import torch

    from dalle_zero.tokenizers.bpe import BPETokenizer

    torch.set_num_threads(1)
    tok = BPETokenizer.from_pretrained(args.tokenizer).with_dropout(0.1)
    rows = [json.loads(line) for line in (Path(args.data) / "metadata.jsonl").read_text().splitlines() if line]
    rows = rows[: args.captions]
    g = torch.Generator().manual_seed(0)
    picks = torch.randint(0, 1 << 30, (len(rows),), generator=g).tolist()
    items = []
    for r, k in zip(rows, picks):
        captions = r.get("captions") or [r["caption"]]
        items.append((captions[k % len(captions)], tuple(r.get("name", "").split()) + SPARED_WORDS))

    def run(mode: str) -> None:
        gen = torch.Generator().manual_seed(1)
        for caption, keep in items:
            if mode == "plain":
                tok.encode(caption)
            elif mode == "dropout":
                tok.encode(caption, dropout=True, generator=gen)
            else:
                tok.encode(caption, dropout=True, generator=gen, keep_whole=keep)

    for mode in ("plain", "dropout", "spared"):
        times = timeit(lambda m=mode: run(m), warmup=1, reps=args.reps)
        emit(args.label, mode, unit="us_per_caption", captions=len(items),
             **summary(times, scale=1e6 / len(items)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset folder with metadata.jsonl (`dalle data emoji`)")
    ap.add_argument("--tokenizer", required=True, help="tokenizer folder")
    ap.add_argument("--src", action="append", default=None, help="source tree to time (repeatable; default: src)")
    ap.add_argument("--captions", type=int, default=4000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--label", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    sources = args.src or [str(HERE.parent / "src")]
    if not (Path(args.data) / "metadata.jsonl").is_file():
        ap.error(f"--data: no metadata.jsonl in {args.data} (a dataset folder from `dalle data emoji`)")
    if not (Path(args.tokenizer) / "tokenizer.json").is_file():
        ap.error(f"--tokenizer: no tokenizer.json in {args.tokenizer} (a folder from `dalle train tokenizer`)")
    missing = [src for src in sources if not (Path(src) / "dalle_zero").is_dir()]
    if missing:
        ap.error(f"--src: no dalle_zero package in {', '.join(missing)}")
    if args.captions < 1 or args.reps < 1:
        ap.error("--captions and --reps must be at least 1")
    for src in sources:
        cmd = [sys.executable, __file__, "--child", "--label", src, "--data", args.data, "--tokenizer",
               args.tokenizer, "--captions", str(args.captions), "--reps", str(args.reps)]
        os.environ["PYTHONPATH"] = str(Path(src).resolve())
        run_child(cmd)


if __name__ == "__main__":
    main()
