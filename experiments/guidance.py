"""How guidance settings change what the prior draws for captions it was trained on.

For ``--captions`` training captions (evenly spread over the split), one image each, no reranking,
at each guidance setting: the share of image tokens equal to the real image's dVAE codes (how much of
what the model learned survives sampling) and, with ``--evaluator``, the concept top-5 accuracy of the
decoded image. Both for the canonical caption and the plain name. Prints one JSON row per setting.

    python experiments/guidance.py --model demo/model --data ~/.cache/dalle-zero/datasets/emoji-google-twitter-32-s0 \
        --evaluator demo/runs/evaluator/model
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dalle_zero.data.metadata import read_dataset_splits, read_metadata
from dalle_zero.evaluation import metrics
from dalle_zero.evaluation.caption_kinds import kind_captions
from dalle_zero.evaluation.evaluate import EvalConfig
from dalle_zero.evaluation.samples import load_real_images, pick_evenly, sampling_options
from dalle_zero.models.evaluator import EmojiEvaluator
from dalle_zero.pipelines.text_to_image import TextToImagePipeline

SETTINGS = ((1.0, None), (3.0, None), (3.0, 0.95), (3.0, 0.8))  # (guidance_scale, guidance_top_p)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--evaluator", default=None, help="evaluator model folder (concept top-5)")
    p.add_argument("--split", default="train")
    p.add_argument("--captions", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    pipe = TextToImagePipeline.from_pretrained(args.model)
    data = Path(args.data)
    meta = read_metadata(data)
    rows = [meta[s] for s in pick_evenly(read_dataset_splits(data)[args.split], args.captions)]
    real = load_real_images(data, [r["stem"] for r in rows], pipe.dvae.config.image_size)
    codes = pipe.dvae.encode(real).flatten(1)  # (N, Ti)
    evaluator = EmojiEvaluator.from_pretrained(args.evaluator).eval() if args.evaluator else None
    for kind in ("canonical", "name"):
        idx, caps = kind_captions(rows, kind)
        for scale, top_p in SETTINGS:
            cfg = EvalConfig(guidance_scale=scale, guidance_top_p=top_p, batch_size=100)
            g = torch.Generator().manual_seed(args.seed)
            out = pipe.generate_batch(caps, candidates=1, generator=g, **sampling_options(cfg))
            tokens, images = out.codes.flatten(1), out.images[:, 0]
            row = {"kind": kind, "guidance_scale": scale, "guidance_top_p": top_p, "n": len(caps),
                   "token_agreement": float((tokens == codes[idx]).float().mean())}
            if evaluator is not None:
                acc, _ = metrics.label_top_k(evaluator, images, "concept", [rows[i]["concept"] for i in idx], ks=(1, 5))
                row.update(concept_top1=acc[1], concept_top5=acc[5])
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
