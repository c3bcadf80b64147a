"""``dalle encode``: tokenize every image once with the frozen dVAE into token shards (paper §3.5).

The prior trains on these shards and never runs the dVAE. Images get a plain resize to the dVAE's
``image_size`` (no augmentation), so the tokens are deterministic. The source folder's (for WebDataset
shards, the shards' folder's) ``splits.json`` (restricted to the encoded stems) goes into the token
index and its ``metadata.jsonl`` is copied beside the token shards, so the prior trains on "train" and
validates on the rest.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HELP = "encode an image-caption folder or WebDataset shards into dVAE token shards for training the prior"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dvae", required=True, help="dVAE run folder (its model/ is used) or model folder")
    parser.add_argument(
        "--data",
        required=True,
        help="folder of images with same-stem .txt captions, or WebDataset shards "
        "(.tar, folder of .tar, shards/{00000..00009}.tar), or a .csv/.jsonl manifest of image,caption",
    )
    parser.add_argument("--out", required=True, help="token folder to write")
    parser.add_argument("--batch-size", type=int, default=64, help="images per dVAE call (default 64)")
    parser.add_argument("--split", default=None, help="encode only this split of splits.json (default: all)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="images per shard (default 10000)")
    parser.add_argument("--device", default="cpu", help="torch device for the dVAE (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def encode_folder(
    dvae_path: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    batch_size: int = 64,
    split: str | None = None,
    shard_size: int = 10_000,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Encode the images of ``data`` (an image folder or shards; optionally one split) with the dVAE at
    ``dvae_path`` into ``out``."""
    import torch
    from tqdm.auto import tqdm

    from dalle_zero.data.pairs import read_splits
    from dalle_zero.data.sources import data_folder, open_image_text_dataset
    from dalle_zero.data.tokens import write_token_shards
    from dalle_zero.data.transforms import ResizeTransform
    from dalle_zero.io import resolve_model_dir
    from dalle_zero.models.dvae import DiscreteVAE

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    data = Path(data)
    folder = data_folder(data)
    model_dir = resolve_model_dir(dvae_path)
    dvae = DiscreteVAE.from_pretrained(model_dir, map_location=device).eval()
    size = dvae.config.image_size
    dataset = open_image_text_dataset(data, ResizeTransform(resolution=size), split=split)

    def items() -> Iterator[tuple[str, list[str], Any]]:
        with torch.inference_mode(), tqdm(total=len(dataset), unit="img", desc="encode", disable=not progress) as bar:
            for lo in range(0, len(dataset), batch_size):
                idx = range(lo, min(lo + batch_size, len(dataset)))
                batch = [dataset[i] for i in idx]
                pixels = torch.stack([b["pixels"] for b in batch]).to(device)  # (B, 3, H, W) in [0, 1]
                codes = dvae.encode(pixels).cpu()  # (B, h, w)
                for i, b, c in zip(idx, batch, codes):
                    yield b["stem"], dataset.captions(i), c
                bar.update(len(batch))

    splits = None
    if (folder / "splits.json").is_file():
        encoded = set(dataset.stems)
        source_splits = read_splits(folder / "splits.json")
        splits = {name: [s for s in stems if s in encoded] for name, stems in source_splits.items()}
    meta = folder / "metadata.jsonl"
    extra = {"metadata.jsonl": meta.read_text()} if meta.is_file() else {}
    return write_token_shards(
        out,
        items(),
        image_vocab_size=dvae.config.vocab_size,
        shard_size=shard_size,
        dvae={"path": str(model_dir), "config": dvae.config.to_dict()},
        splits=splits,
        metadata={"data": str(data), "data_split": split, "skipped": dict(dataset.skipped)},
        extra_files=extra,
    )


def run(args: argparse.Namespace) -> int:
    from dalle_zero.data.tokens import read_token_index

    out = encode_folder(
        args.dvae,
        args.data,
        args.out,
        batch_size=args.batch_size,
        split=args.split,
        shard_size=args.shard_size,
        device=args.device,
        progress=not args.no_progress,
    )
    index = read_token_index(out)
    h, w = index["grid"]
    print(f"encoded {index['count']} images into {h}x{w} tokens of {index['image_vocab_size']} codes -> {out}")
    if index.get("splits"):
        print("  splits: " + ", ".join(f"{k} {len(v)}" for k, v in index["splits"].items()))
    if index.get("skipped"):
        print("  skipped: " + ", ".join(f"{n} {r}" for r, n in index["skipped"].items()))
    return 0
