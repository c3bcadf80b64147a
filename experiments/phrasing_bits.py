#!/usr/bin/env python
"""How much each way of phrasing a caption tells a model's prior about the real image.

    python experiments/phrasing_bits.py --model RUN/model --data DATASET [--images 256]

For ``--images`` training images spread evenly over the split, the prior's bits per image with each
caption kind: the canonical caption, the plain name, the name with attributes, each unseen-phrasing
template on its own, three of the training variants and the empty caption. A phrasing the prior reads
costs about as few bits as the canonical caption; one it cannot read costs as much as the empty one.
Prints one JSON row per phrasing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    from dalle_zero.data.metadata import read_dataset_splits, read_metadata
    from dalle_zero.evaluation.evaluate import prior_bits
    from dalle_zero.evaluation.samples import load_real_images, pick_evenly
    from dalle_zero.pipelines.text_to_image import TextToImagePipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model folder (dalle demo's RUN/model)")
    ap.add_argument("--data", required=True, type=Path, help="dataset folder from `dalle data emoji`")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    pipeline = TextToImagePipeline.from_pretrained(args.model)
    rows = read_metadata(args.data)
    train = pick_evenly(read_dataset_splits(args.data)["train"], args.images)
    picked = [rows[s] for s in train]
    real = load_real_images(args.data, train, pipeline.dvae.config.image_size)
    image_tokens = pipeline.transformer.config.image_seq_len

    phrasings: dict[str, list[str]] = {
        "canonical": [r["caption"] for r in picked],
        "name": [r["name"] for r in picked],
        "name_attributes": [r["plain_caption"] for r in picked],
    }
    for t in range(len(picked[0]["unseen_captions"])):
        phrasings[f"unseen template {t + 1}"] = [r["unseen_captions"][t] for r in picked]
    for k in (4, 8, 12):  # past the canonical, name and name + attributes at the list's head
        phrasings[f"training variant {k}"] = [r["captions"][min(k, len(r["captions"]) - 1)] for r in picked]
    phrasings["empty"] = [""] * len(picked)

    for kind, captions in phrasings.items():
        bits = prior_bits(pipeline, captions, real)["bits_per_image_token"] * image_tokens
        row = {"phrasing": kind, "bits_per_image": round(bits, 1), "example": captions[len(captions) // 2]}
        print(json.dumps(row, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
