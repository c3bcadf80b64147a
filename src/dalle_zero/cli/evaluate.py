"""``dalle eval``: zero-shot figures of a model folder on a dataset's held-out splits (paper §3.1; docs/evaluation.md).

Generates images for the captions of each split and writes ``OUT/results.json`` and
``OUT/report.html`` (with PNG grids under ``OUT/samples``): in-house FID/KID/IS with the evaluator
from ``dalle train evaluator`` as feature extractor, R-precision with a CLIP trained apart from the
reranker (``--clip``), the share of images whose tone/style the evaluator reads as asked, held-out
bits per image/text token of the prior, and dVAE PSNR/SSIM/codebook figures. With ``--inception
PATH`` (a TorchScript Inception-v3 such as ``inception-2015-12-05.pt``) also standard FID/IS. See
:mod:`dalle_zero.evaluation.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from dalle_zero.cli.options import add_sampling_arguments, check_output_folder, sampling_settings

HELP = "evaluate a model folder: in-house FID/KID/IS, R-precision, tone/style accuracy, bits per token"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (from `dalle assemble` or `dalle demo`)")
    parser.add_argument("--data", required=True, help="dataset folder from `dalle data emoji` (splits.json)")
    parser.add_argument("--evaluator", required=True, help="evaluator run or model folder (`dalle train evaluator`)")
    parser.add_argument(
        "--clip", help="CLIP run or model folder for R-precision, trained apart from the reranker (optional)"
    )
    parser.add_argument(
        "--split",
        action="append",
        help="split to evaluate (repeatable; default: train, validation, unseen_compositions, unseen_concepts)",
    )
    parser.add_argument("--samples", type=int, default=256, help="captions per split, one image each (default 256)")
    parser.add_argument(
        "--candidates",
        type=int,
        default=1,
        help="images drawn per caption, best kept (default 1; not taken from the model folder, so figures compare)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences sampled at once (default 64)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that sample side by side, each on an equal part of the cores (default 1; on 2 cores, "
        "2 draw more images per second)",
    )
    add_sampling_arguments(parser)
    parser.add_argument("--inception", help="TorchScript Inception-v3 file for standard FID/IS (optional)")
    parser.add_argument(
        "--inception-sha256",
        metavar="HEX",
        help="the SHA-256 the --inception file must have (loading a TorchScript file runs its code); required "
        "unless --trust-inception",
    )
    parser.add_argument(
        "--trust-inception", action="store_true", help="load the --inception file without checking its SHA-256"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: 1 or all cores, whichever is faster right now)"
    )
    parser.add_argument("--out", required=True, help="output folder (results.json, report.html, samples/)")
    parser.add_argument(
        "--int8", action="store_true", help="evaluate the prior with int8 weight-only blocks (`dalle generate --int8`)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def model_dir(path: str | Path, model_type: str, flag: str) -> Path:
    """A model folder of ``model_type`` given the folder itself or a training run folder (its ``model/``)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{flag}: folder not found: {path}")
    for candidate in (path, path / "model"):
        cfg = candidate / "config.json"
        if cfg.is_file():
            got = json.loads(cfg.read_text()).get("model_type")
            if got != model_type:
                raise ValueError(f"{flag}: {candidate} holds a {got!r} model, expected {model_type!r}")
            return candidate
    raise FileNotFoundError(f"{flag}: {path} is neither a {model_type} model folder nor a run folder with model/")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    import torch

    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.evaluation.evaluate import SPLITS, EvalConfig, evaluate_model, json_ready
    from dalle_zero.evaluation.figures import write_eval_report
    from dalle_zero.evaluation.inception import TorchScriptInception, check_inception_file
    from dalle_zero.io import atomic_write_text
    from dalle_zero.models.clip import DalleCLIP
    from dalle_zero.models.evaluator import EmojiEvaluator
    from dalle_zero.pipelines.text_to_image import TextToImagePipeline
    from dalle_zero.runtime import fastest_thread_count

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    model = Path(args.model)
    if not model.is_dir():
        raise FileNotFoundError(f"--model: model folder not found: {model}")
    data = Path(args.data)
    if not data.is_dir():
        raise FileNotFoundError(f"--data: data folder not found: {data}")
    if not (data / "splits.json").is_file():
        raise FileNotFoundError(f"--data: {data} has no splits.json (build it with `dalle data emoji`)")
    out = check_output_folder(args.out)  # before the work, not when it is done
    if args.inception_sha256 is not None and not args.inception:
        raise ValueError("--inception-sha256 is the hash of the --inception file: give --inception too")
    inception_sha256 = None
    if args.inception:  # checked before anything is loaded: loading the file runs its code
        inception_sha256 = check_inception_file(
            args.inception, sha256=args.inception_sha256, trust=args.trust_inception
        )
    evaluator = EmojiEvaluator.from_pretrained(model_dir(args.evaluator, "evaluator", "--evaluator"))
    clip = DalleCLIP.from_pretrained(model_dir(args.clip, "clip", "--clip")) if args.clip else None
    inception = None
    if args.inception:
        print(f"Inception-v3: {args.inception} (sha256 {inception_sha256})")
        inception = (  # the hash checked again as each is loaded: the file may have changed since
            TorchScriptInception.from_file(args.inception, output="features", sha256=inception_sha256),
            TorchScriptInception.from_file(args.inception, output="logits", sha256=inception_sha256),
        )
    pipeline = TextToImagePipeline.from_pretrained(model)
    if args.int8:
        pipeline.quantize_int8()
    if args.threads is None:
        fastest_thread_count()  # on a busy machine 1 thread can be many times faster than 2
    else:
        torch.set_num_threads(args.threads)
    config = EvalConfig(
        splits=tuple(args.split) if args.split else SPLITS,
        samples=args.samples,
        candidates=args.candidates,
        seed=args.seed,
        batch_size=args.batch_size,
        workers=args.workers,
        **sampling_settings(args, pipeline.sampling),  # unset options: the folder's recommendation
    )
    out.mkdir(parents=True, exist_ok=True)
    results = evaluate_model(
        pipeline,
        data,
        evaluator,
        config=config,
        r_precision_clip=clip,
        inception=inception,
        out_dir=out,
        progress=not args.no_progress,
    )
    results["settings"].update(
        {
            "model": str(model),
            "evaluator": str(args.evaluator),
            "clip": args.clip,
            "inception": args.inception,
            "int8": args.int8,
        }
    )
    results = json_ready(results)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    path = write_eval_report(results, out)
    for split, f in results["splits"].items():
        parts = [f"FID {_num(f.get('fid'))}", f"IS {_num(f.get('is_mean'))}"]
        if "r_precision" in f:
            parts.append(f"R-precision {_num(f['r_precision'])}")
        if "heldout_attribute_accuracy" in f:
            parts.append(f"held-out tone/style read as asked {_num(f['heldout_attribute_accuracy'])}")
        parts.append(f"{_num(f['bits_per_image_token'])} bits/image token")
        print(f"{split} ({f['n_images']} images): " + ", ".join(parts))
    if "dvae" in results:
        d = results["dvae"]
        print(
            f"dVAE: PSNR {d['psnr']:.2f} dB, SSIM {d['ssim']:.3f}, codebook perplexity "
            f"{d['codebook_perplexity']:.1f}, usage {d['codebook_usage']:.3f}"
        )
    print("(in-house figures: not comparable to published FID/IS)")
    print(f"results: {out / 'results.json'}")
    print(f"report: {path}")
    return 0


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
