#!/usr/bin/env python
"""Can a reranker tell an image from its siblings? (the same concept in another skin tone or style)

    python experiments/reranker_siblings.py --data DATASET --clip RUN_OR_MODEL [--clip ...] [--dvae RUN_OR_MODEL]

For every image of the unseen-composition split (its caption asks for a (concept, tone) or (concept,
style) pair never seen in training), the CLIP scores the caption against every image of the dataset
with the same concept, and a hit is the top-scoring image carrying the asked tone and style. This is
the choice reranking faces among the candidates for one caption, on real images and, with ``--dvae``,
on their dVAE reconstructions (which look like generated images). Chance is 1 / (images of the concept).
Prints one JSON row per (clip, images).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


@torch.no_grad()
def main() -> None:
    from dalle_zero.data.images import resize_pixels
    from dalle_zero.data.metadata import read_dataset_splits, read_metadata
    from dalle_zero.evaluation.samples import load_real_images
    from dalle_zero.io import resolve_model_dir
    from dalle_zero.models.clip import DalleCLIP
    from dalle_zero.models.dvae import DiscreteVAE, round_trip
    from dalle_zero.tokenizers.bpe import BPETokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset folder from `dalle data emoji`")
    ap.add_argument("--clip", action="append", required=True, help="CLIP run or model folder (repeatable)")
    ap.add_argument("--tokenizer", required=True, help="tokenizer folder the CLIPs were trained with")
    ap.add_argument("--dvae", default=None, help="dVAE run or model folder: also score its reconstructions")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = Path(args.data)
    meta, splits = read_metadata(data), read_dataset_splits(data)
    queries = splits["unseen_compositions"]
    concepts = {meta[s]["concept"] for s in queries}
    pool = sorted(s for s, r in meta.items() if r["concept"] in concepts)  # every image of those concepts
    real = load_real_images(data, pool, 32)
    views = {"real": real}
    if args.dvae:
        views["recon"] = round_trip(DiscreteVAE.from_pretrained(resolve_model_dir(args.dvae)).eval(), real)[1]
    tokenizer = BPETokenizer.from_pretrained(args.tokenizer)
    by_concept: dict[str, list[int]] = {}
    for i, s in enumerate(pool):
        by_concept.setdefault(meta[s]["concept"], []).append(i)
    for path in args.clip:
        clip = DalleCLIP.from_pretrained(resolve_model_dir(path)).eval()
        tok = tokenizer.with_text_seq_len(clip.config.text_seq_len)
        text = torch.cat([clip.encode_text(tok.encode([meta[s]["caption"] for s in queries[i : i + 256]]))
                          for i in range(0, len(queries), 256)])  # (Q, D)
        for view, images in views.items():
            emb = torch.cat([clip.encode_image(resize_pixels(b, clip.config.image_size)) for b in images.split(256)])
            hits, chance = {"tone": [], "style": []}, []
            for q, stem in enumerate(queries):
                row = meta[stem]
                cand = by_concept[row["concept"]]
                best = pool[cand[int((emb[cand] @ text[q]).argmax())]]
                ok = meta[best]["tone"] == row["tone"] and meta[best]["style"] == row["style"]
                hits[row["holdout"]].append(ok)
                chance.append(1 / len(cand))
            out = {"clip": path, "images": view, "queries": len(queries)}
            for head, h in hits.items():
                out[f"{head}_hit"] = round(sum(h) / max(1, len(h)), 4)
                out[f"{head}_n"] = len(h)
            out["all_hit"] = round(sum(map(sum, hits.values())) / len(queries), 4)
            out["chance"] = round(sum(chance) / len(chance), 4)
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
