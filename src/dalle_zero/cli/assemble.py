"""``dalle assemble``: put a tokenizer, a dVAE, a prior and an optional CLIP into one model folder (docs/sampling.md).

Each source may be a model folder (``config.json`` + weights), a training run folder (its
``model/`` sub-folder is used) or an existing pipeline folder (its matching component). The
components are checked against each other (text vocabulary and length, image vocabulary and grid)
before anything is written; the result loads with ``TextToImagePipeline.from_pretrained`` and runs
with ``dalle generate --model``. A prior run trained with ``select_by`` contributes its
``best_model/`` (the lowest validation figure) unless ``--last`` asks for the last model. ``--examples``
stores example captions in the folder (``dalle generate --examples`` prints them). A guidance scale
is refused for a prior run trained without the empty caption (``null_caption_prob`` 0); a model
folder keeps no training settings, so there it cannot be checked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "assemble tokenizer + dVAE + prior (+ CLIP) into one model folder for `dalle generate`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (`dalle train tokenizer`)")
    parser.add_argument("--dvae", required=True, help="dVAE run or model folder")
    parser.add_argument("--prior", required=True, help="transformer prior run or model folder")
    parser.add_argument("--clip", help="CLIP reranker run or model folder (optional)")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument(
        "--last", action="store_true", help="take a prior run's last model, not its best by validation"
    )
    parser.add_argument(
        "--examples", help="text file of example captions, one per line, stored with the model (optional)"
    )
    recommend = parser.add_argument_group(
        "recommended sampling", "stored as sampling.json: what `dalle generate`, the API and the page use when not told"
    )
    recommend.add_argument("--temperature", type=float, help="softmax temperature (default 1)")
    recommend.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (default 1: none)")
    recommend.add_argument("--guidance-top-p", type=float, help="guidance within the conditional nucleus of this mass")
    recommend.add_argument("--candidates", type=int, help="samples drawn per caption and reranked (needs --clip)")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.models.clip import DalleCLIP
    from dalle_zero.models.dvae import DiscreteVAE
    from dalle_zero.models.transformer import DalleTransformer
    from dalle_zero.pipelines.folder import resolve_component_dir
    from dalle_zero.pipelines.sampling_defaults import SamplingDefaults
    from dalle_zero.pipelines.text_to_image import TextToImagePipeline
    from dalle_zero.tokenizers.bpe import BPETokenizer
    from dalle_zero.training.run_files import best_model, trained_setting

    given = {k: getattr(args, k) for k in ("temperature", "guidance_scale", "guidance_top_p", "candidates")}
    sampling = SamplingDefaults.from_dict(
        {k: v for k, v in given.items() if v is not None}, source="recommended sampling options"
    )  # checked before anything is loaded
    if sampling.candidates is not None and sampling.candidates > 1 and not args.clip:
        raise ValueError("--candidates above 1 needs a reranker: give --clip too")
    guided = sampling.guidance_scale is not None and sampling.guidance_scale != 1.0
    if guided and trained_setting(args.prior, "null_caption_prob") == 0:
        # guidance compares the caption's prediction with the empty caption's, which this prior never saw
        raise ValueError(
            f"--guidance-scale {sampling.guidance_scale:g}: the prior run {args.prior} was trained with "
            "null_caption_prob 0, so it has no model of the empty caption to guide against; train it with "
            "null_caption_prob above 0 (0.1 by default) or leave guidance at 1"
        )
    tokenizer = BPETokenizer.from_pretrained(resolve_component_dir(args.tokenizer, "tokenizer"))
    dvae = DiscreteVAE.from_pretrained(resolve_component_dir(args.dvae, "dvae"))
    best = None if args.last else best_model(args.prior)
    prior_dir = best[0] if best is not None else resolve_component_dir(args.prior, "transformer")
    if best is not None:
        print(f"prior: the best model of the run ({best[1].get('figure')} {best[1].get('value'):.4g} at step "
              f"{best[1].get('step')}); --last takes the last")
    prior = DalleTransformer.from_pretrained(prior_dir)
    clip = DalleCLIP.from_pretrained(resolve_component_dir(args.clip, "clip")) if args.clip else None
    examples: list[str] = []
    if args.examples:
        path = Path(args.examples)
        if not path.is_file():
            raise FileNotFoundError(f"--examples: file not found: {path}")
        examples = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pipeline = TextToImagePipeline(tokenizer, dvae, prior, clip, examples=examples, sampling=sampling)
    out = pipeline.save_pretrained(args.out)
    t = prior.config
    print(
        f"wrote {out}: text {t.text_seq_len} tokens of {t.text_vocab_size}, image {t.image_grid}x{t.image_grid} "
        f"of {t.image_vocab_size} codes, {dvae.config.image_size}px, reranker: {'yes' if clip else 'no'}"
    )
    return 0
