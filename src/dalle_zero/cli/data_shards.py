"""``dalle data shards``: convert an image–caption folder into WebDataset tar shards (img2dataset layout)."""

from __future__ import annotations

import argparse

HELP = "convert an image-caption folder into WebDataset tar shards (00000.tar, ...)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="folder of images with same-stem .txt captions")
    parser.add_argument("--out", required=True, help="new (or empty) folder for the shards")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per tar file (default 1000)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.data.shard_writer import write_shards

    s = write_shards(args.data, args.out, per_shard=args.per_shard, progress=not args.no_progress)
    last = f"{s.shards - 1:05d}"
    print(
        f"wrote {s.samples} samples in {s.shards} shards to {s.out_dir} (use --data {s.out_dir} "
        f"or --data '{s.out_dir}/{{00000..{last}}}.tar')"
    )
    if s.skipped:
        print("  skipped: " + ", ".join(f"{n} {reason}" for reason, n in sorted(s.skipped.items())))
    return 0
