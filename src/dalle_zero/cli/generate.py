"""``dalle generate``: captions -> PNG images with a model folder from ``dalle assemble`` (paper §2.6, §3.3).

For each caption it writes, into ``--out``:

- ``NN_<slug>_MM.png``: each image at the model's own resolution (not resized);
- ``NN_<slug>_grid.png``: all images of the caption in one grid, upscaled with nearest neighbour
  so that tiny images (e.g. 32 px emoji) are visible (``--grid-scale``);
- ``NN_<slug>.json``: caption, seed, settings, files and reranker scores (best first).

With ``--candidates N`` and a CLIP in the model folder, N samples are drawn and the best ``-n``
kept. ``--prime-image PATH --prime-rows R`` keeps the top R token rows of the encoded image and
samples the rest (image-to-image). Without ``--seed`` a random seed is drawn and recorded.

``--examples`` prints the model folder's example captions (``examples.json``) instead. A caption
most of whose words the training captions never contained gets a ``dalle: warning:`` line on stderr
and is drawn anyway.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch

from dalle_zero.cli.options import add_sampling_arguments, check_output_folder, load_pipeline, sampling_settings

HELP = "generate images from captions with a model folder (from `dalle assemble`)"
MAX_GRID_SCALE = 256
MAX_GRID_PIXELS = 1 << 26  # 64 Mpx: the grid PNG is held in memory whole (3 bytes a pixel)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("captions", nargs="*", metavar="CAPTION", help="one or more captions")
    parser.add_argument(
        "--examples",
        action="store_true",
        help="print the model's example captions, one per line, and exit (no CAPTION needed)",
    )
    parser.add_argument("--model", required=True, help="model folder written by `dalle assemble`")
    parser.add_argument("-n", type=int, default=4, help="images to keep per caption (default 4)")
    parser.add_argument(
        "--candidates",
        type=int,
        help="samples drawn per caption, reranked by CLIP (>= -n; default: the model folder's sampling.json, else -n)",
    )
    parser.add_argument("--seed", type=int, help="random seed (default: drawn at random and recorded)")
    add_sampling_arguments(parser)
    parser.add_argument("--prime-image", help="image whose top rows are kept (image-to-image)")
    parser.add_argument("--prime-rows", type=int, help="token rows of --prime-image to keep (default: half the grid)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples drawn at once (default 8)")
    parser.add_argument(
        "--grid-scale",
        type=int,
        help=f"nearest-neighbour upscale of the grid PNG, 1 to {MAX_GRID_SCALE} (default: to at least 128 px per "
        "image); the grid may have at most 64 Mpx",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="int8 weight-only transformer blocks: faster sampling on CPU, slightly different samples",
    )
    parser.add_argument("--out", default="samples", help="output folder (default ./samples)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def slugify(text: str, max_len: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].strip("-")
    return slug or "caption"


def make_grid(images: list, scale: int, pad: int = 2) -> object:
    """PIL images of one size -> one PIL grid image (about square), each cell upscaled ``scale``× (nearest)."""
    # imported here, not at the top: `dalle --help` imports every command module
    from PIL import Image

    w, h = images[0].size
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    cw, ch = w * scale, h * scale
    grid = Image.new("RGB", (cols * cw + (cols + 1) * pad, rows * ch + (rows + 1) * pad), (255, 255, 255))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(im.resize((cw, ch), Image.Resampling.NEAREST), (pad + c * (cw + pad), pad + r * (ch + pad)))
    return grid


def check_grid_size(n: int, image_size: int, scale: int) -> None:
    """ValueError naming --grid-scale if the grid of ``n`` images of ``image_size`` px, each upscaled
    ``scale`` times, would have more than :data:`MAX_GRID_PIXELS` pixels."""
    if n < 1:
        return
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    side = image_size * scale
    pixels = cols * side * rows * side
    if pixels > MAX_GRID_PIXELS:
        largest = max(1, math.isqrt(MAX_GRID_PIXELS // (cols * rows)) // image_size)
        raise ValueError(
            f"--grid-scale {scale} makes a grid of {cols * side}x{rows * side} pixels ({n} images of {image_size} px), "
            f"over the cap of {MAX_GRID_PIXELS // (1 << 20)} Mpx; use --grid-scale {largest} or less"
        )


def print_examples(args: argparse.Namespace) -> int:
    """``--examples``: the example captions of ``--model``, one per line (the models are not loaded)."""
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.pipelines.folder import EXAMPLES_NAME, read_examples, read_pipeline_json

    if args.captions:
        raise ValueError("--examples lists the model's example captions and draws nothing: drop the captions")
    model_dir = Path(args.model)
    read_pipeline_json(model_dir)  # a clear error unless this is a model folder
    examples = read_examples(model_dir)
    if not examples:
        print(
            f"dalle: {model_dir} has no example captions (a JSON list of captions in {EXAMPLES_NAME} adds some)",
            file=sys.stderr,
        )
        return 0
    for caption in examples:
        # one line each; the tokenizer collapses whitespace runs anyway, so the caption means the same
        print(" ".join(caption.split()))
    return 0


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.io import atomic_write_text
    from dalle_zero.pipelines.text_to_image import to_pil

    if args.examples:
        return print_examples(args)
    if not args.captions:
        raise ValueError("give at least one caption to draw (--examples lists the model's example captions)")
    for caption in args.captions:
        if not caption.strip():
            raise ValueError("a caption is empty: give some text to draw")
    if args.grid_scale is not None and not 1 <= args.grid_scale <= MAX_GRID_SCALE:
        raise ValueError(f"--grid-scale must be in [1, {MAX_GRID_SCALE}], got {args.grid_scale}")
    if args.prime_image is not None and not Path(args.prime_image).is_file():
        raise FileNotFoundError(f"--prime-image: image not found: {args.prime_image}")
    out = check_output_folder(args.out)  # before sampling: a bad --out must not cost the samples
    model_dir = Path(args.model)
    pipeline = load_pipeline(args)
    if args.grid_scale is not None:
        check_grid_size(args.n, pipeline.dvae.config.image_size, args.grid_scale)
    for caption in args.captions:
        pipeline.check_caption(caption)  # e.g. only control characters: nothing left once normalised
        warning = pipeline.caption_warning(caption)
        if warning:
            hint = " (dalle generate --examples lists some)" if pipeline.examples else ""
            print(f"dalle: warning: {warning}{hint}", file=sys.stderr)
    seed = args.seed if args.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    sampling = sampling_settings(args, pipeline.sampling)  # unset options: the folder's recommendation
    candidates = pipeline.candidates_for(args.n) if args.candidates is None else args.candidates
    settings = {
        "n": args.n,
        "candidates": candidates,
        **sampling,
        "prime_image": args.prime_image,
        "prime_rows": args.prime_rows,
        "batch_size": args.batch_size,
        "int8": args.int8,
    }
    output = pipeline(
        args.captions,
        n=args.n,
        candidates=candidates,
        seed=seed,
        **sampling,
        prime_image=args.prime_image,
        prime_rows=args.prime_rows,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    out.mkdir(parents=True, exist_ok=True)
    for k, (caption, images, scores) in enumerate(zip(output.prompts, output.images, output.scores)):
        stem = f"{k:02d}_{slugify(caption)}"
        pils = to_pil(images)
        files = []
        for i, im in enumerate(pils):
            name = f"{stem}_{i:02d}.png"
            im.save(out / name)
            files.append(name)
        scale = args.grid_scale or max(1, math.ceil(128 / max(pils[0].size)))
        make_grid(pils, scale).save(out / f"{stem}_grid.png")
        record = {
            "caption": caption,
            "seed": seed,
            "model": str(model_dir),
            "settings": settings,
            "images": [
                {"file": f, "score": None if scores is None else round(float(s), 6)}
                for f, s in zip(files, scores if scores is not None else [None] * len(files))
            ],
            "image_size": list(pils[0].size),
            "grid": f"{stem}_grid.png",
            "grid_scale": scale,
            "note": "images are at the model's resolution; the grid is upscaled with nearest neighbour",
        }
        atomic_write_text(out / f"{stem}.json", json.dumps(record, indent=2) + "\n")
        best = "" if scores is None else f" (best score {float(scores[0]):.3f})"
        print(f"{caption!r}: {len(files)} images -> {out / stem}_*.png{best}")
    print(f"seed {seed}")
    return 0
