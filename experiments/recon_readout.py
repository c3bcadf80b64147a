#!/usr/bin/env python
"""How an evaluator reads the real held-out images, and the same images after a round trip through a dVAE.

    python experiments/recon_readout.py --evaluator RUN_OR_MODEL --data DATASET [--dvae RUN_OR_MODEL ...]

For every image of the unseen-composition split it asks the evaluator for the held-out attribute (the
skin tone of a held-out (concept, tone) pair, the style of a held-out (concept, style) pair), and for
every image of the validation split for its tone and style, on the real images and on each ``--dvae``'s
hard-code reconstructions of them (:func:`dalle_zero.models.dvae.round_trip`). This is the
``real_`` / ``recon_`` read-out of ``dalle eval`` on whole splits instead of its 200 sampled captions,
without a prior. Prints one JSON row per (split, images, head).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    from dalle_zero.data.metadata import read_dataset_splits, read_metadata
    from dalle_zero.evaluation import metrics
    from dalle_zero.evaluation.readouts import asked_labels
    from dalle_zero.evaluation.samples import load_real_images
    from dalle_zero.io import resolve_model_dir
    from dalle_zero.models.dvae import DiscreteVAE, round_trip
    from dalle_zero.models.evaluator import EmojiEvaluator

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evaluator", required=True, help="evaluator run or model folder")
    ap.add_argument("--data", required=True, help="dataset folder from `dalle data emoji`")
    ap.add_argument("--dvae", action="append", default=[], help="dVAE run or model folder (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = Path(args.data)
    meta, splits = read_metadata(data), read_dataset_splits(data)
    evaluator = EmojiEvaluator.from_pretrained(resolve_model_dir(args.evaluator)).eval()
    dvaes = {d: DiscreteVAE.from_pretrained(resolve_model_dir(d)).eval() for d in args.dvae}
    size = evaluator.config.image_size
    for split, holdout_only in (("unseen_compositions", True), ("validation", False)):
        stems = splits[split]
        rows = [meta[s] for s in stems]
        views = {"real": load_real_images(data, stems, size)}
        for name, dvae in dvaes.items():
            views[f"recon {name}"] = round_trip(dvae, views["real"])[1]
        for view, images in views.items():
            for head in ("tone", "style"):
                asked = asked_labels(rows, head, holdout_only=holdout_only)
                acc, n = metrics.attribute_accuracy(evaluator, images, head, asked)
                row = {"split": split, "images": view, "head": head, "held_out_only": holdout_only}
                print(json.dumps({**row, "accuracy": round(acc, 4), "n": n}), flush=True)


if __name__ == "__main__":
    main()
