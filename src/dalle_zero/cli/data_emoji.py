"""``dalle data emoji``: build the emoji image–caption dataset from pinned npm tarballs."""

from __future__ import annotations

import argparse
import logging

HELP = "build the emoji image-caption dataset (pinned npm tarballs, offline after the first run)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (images/<stem>.png + .txt, splits.json)")
    parser.add_argument(
        "--styles",
        default="google",
        help="comma-separated art styles: google (Noto, Apache-2.0), twitter (Twemoji, CC-BY-4.0); default: google",
    )
    parser.add_argument("--size", type=int, choices=(32, 64), default=32, help="image size in pixels (default 32)")
    parser.add_argument(
        "--skin-tones",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include the skin-tone variants of people and hands (default: included; "
        "--no-skin-tones keeps only the base emoji)",
    )
    parser.add_argument(
        "--cache",
        default=None,
        help="folder for the downloaded npm tarballs (default ~/.cache/dalle-zero/npm)",
    )
    parser.add_argument(
        "--captions-per-image",
        type=int,
        default=16,
        help="training captions per image: the canonical one, the plain name, the name with its "
        "attributes and phrasings drawn from the metadata (default 16; 1: the canonical caption only)",
    )
    parser.add_argument(
        "--languages",
        default="en",
        help="comma-separated caption languages: en, or en,ko to add captions from CLDR's Korean names",
    )
    parser.add_argument("--seed", type=int, default=0, help="salt of the split hashes (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.data.emoji import EmojiDatasetConfig, build_emoji_dataset
    from dalle_zero.data.splits import SplitConfig

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    styles = tuple(s.strip().lower() for s in args.styles.split(",") if s.strip())
    languages = tuple(s.strip().lower() for s in args.languages.split(",") if s.strip())
    config = EmojiDatasetConfig(
        styles=styles, size=args.size, skin_tones=args.skin_tones, splits=SplitConfig(seed=args.seed),
        captions_per_image=args.captions_per_image, languages=languages,
    )  # fmt: skip
    s = build_emoji_dataset(config, args.out, cache_dir=args.cache, progress=not args.no_progress)
    how = "already built, reused" if s.reused else "built"
    print(f"{how} {s.out_dir}: {s.images} images, {s.concepts} concepts in {s.seconds:.1f} s")
    print("  styles: " + ", ".join(f"{k} {v}" for k, v in s.style_counts.items()))
    print("  splits: " + ", ".join(f"{k} {v}" for k, v in s.split_counts.items()))
    if s.skipped:
        print(f"  skipped {s.skipped} emoji with no image in the tarball")
    return 0
