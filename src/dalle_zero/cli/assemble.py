"""``dalle assemble``: put a tokenizer, a dVAE, a prior and an optional CLIP into one model folder (design.md).

Each source may be a model folder (``config.json`` + weights), a training run folder (its
``model/`` sub-folder is used) or an existing pipeline folder (its matching component). The
components are checked against each other (text vocabulary and length, image vocabulary and grid)
before anything is written; the result loads with ``TextToImagePipeline.from_pretrained`` and runs
with ``dalle generate --model``.
"""

from __future__ import annotations

import argparse

HELP = "assemble tokenizer + dVAE + prior (+ CLIP) into one model folder for `dalle generate`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (`dalle train tokenizer`)")
    parser.add_argument("--dvae", required=True, help="dVAE run or model folder")
    parser.add_argument("--prior", required=True, help="transformer prior run or model folder")
    parser.add_argument("--clip", help="CLIP reranker run or model folder (optional)")
    parser.add_argument("--out", required=True, help="model folder to write")


def run(args: argparse.Namespace) -> int:
    from dalle_zero.models.clip import DalleCLIP
    from dalle_zero.models.dvae import DiscreteVAE
    from dalle_zero.models.transformer import DalleTransformer
    from dalle_zero.pipelines.text_to_image import TextToImagePipeline, resolve_component_dir
    from dalle_zero.tokenizers.bpe import BPETokenizer

    tokenizer = BPETokenizer.from_pretrained(resolve_component_dir(args.tokenizer, "tokenizer"))
    dvae = DiscreteVAE.from_pretrained(resolve_component_dir(args.dvae, "dvae"))
    prior = DalleTransformer.from_pretrained(resolve_component_dir(args.prior, "transformer"))
    clip = DalleCLIP.from_pretrained(resolve_component_dir(args.clip, "clip")) if args.clip else None
    pipeline = TextToImagePipeline(tokenizer, dvae, prior, clip)
    out = pipeline.save_pretrained(args.out)
    t = prior.config
    print(
        f"wrote {out}: text {t.text_seq_len} tokens of {t.text_vocab_size}, image {t.image_grid}x{t.image_grid} "
        f"of {t.image_vocab_size} codes, {dvae.config.image_size}px, reranker: {'yes' if clip else 'no'}"
    )
    return 0
