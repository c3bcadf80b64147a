"""``dalle encode``: tokenize every image once with the frozen dVAE into token shards (paper §3.5).

The prior trains on these shards and never runs the dVAE; see :mod:`dalle_zero.training.encode`.
"""

from __future__ import annotations

import argparse

from dalle_zero.cli.options import add_data_argument, check_device

HELP = "encode an image-caption folder or WebDataset shards into dVAE token shards for training the prior"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dvae", required=True, help="dVAE run folder (its model/ is used) or model folder")
    add_data_argument(parser)
    parser.add_argument("--out", required=True, help="token folder to write")
    parser.add_argument("--batch-size", type=int, default=64, help="images per dVAE call (default 64)")
    parser.add_argument("--split", default=None, help="encode only this split of splits.json (default: all)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="images per shard (default 10000)")
    parser.add_argument("--device", default="cpu", help="torch device for the dVAE (default cpu)")
    parser.add_argument(
        "--augment", type=int, default=1, metavar="K",
        help="encode K views of every image: the plain resize and K-1 random crops (the paper's Listing 2, "
        "no flip); the prior trains on one per epoch and validates on the resize (default 1: the resize alone)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the --augment crops (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.data.tokens import read_token_index
    from dalle_zero.training.encode import encode_folder

    device = check_device(args.device)  # before the dVAE is loaded: `--device bogus` is one line
    out = encode_folder(
        args.dvae,
        args.data,
        args.out,
        batch_size=args.batch_size,
        split=args.split,
        shard_size=args.shard_size,
        device=device,
        progress=not args.no_progress,
        augment=args.augment,
        seed=args.seed,
    )
    index = read_token_index(out)
    h, w = index["grid"]
    crops = f" ({index['crops']} crops each)" if index.get("crops", 1) > 1 else ""
    print(f"encoded {index['count']} images{crops} into {h}x{w} tokens of {index['image_vocab_size']} codes -> {out}")
    if index.get("splits"):
        print("  splits: " + ", ".join(f"{k} {len(v)}" for k, v in index["splits"].items()))
    if index.get("skipped"):
        print("  skipped: " + ", ".join(f"{n} {r}" for r, n in index["skipped"].items()))
    return 0
