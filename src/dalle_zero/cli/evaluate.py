"""``dalle eval``: zero-shot figures of a model folder on a dataset's held-out splits (paper §3.1; paper_spec §6).

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
from pathlib import Path
from typing import Any

from dalle_zero.cli.options import add_sampling_arguments, sampling_settings

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
    parser.add_argument("--candidates", type=int, default=1, help="images drawn per caption, best kept (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences sampled at once (default 64)")
    add_sampling_arguments(parser)
    parser.add_argument("--inception", help="TorchScript Inception-v3 file for standard FID/IS (optional)")
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


def write_eval_report(results: dict[str, Any], out_dir: Path, *, title: str = "dalle-zero evaluation") -> Path:
    """``out_dir/report.html``: the figure table and the generated-vs-real grids under ``out_dir/samples``."""
    from dalle_zero.evaluation.figures import IN_HOUSE_NOTE, SPLIT_TITLES, dvae_rows, figure_table_html
    from dalle_zero.evaluation.report import HtmlReport

    out_dir = Path(out_dir).resolve()  # image paths below are built from it: relative ones would be prefixed twice
    report = HtmlReport(title, out_dir)
    report.paragraph(IN_HOUSE_NOTE, note=True)
    report.section("Figures")
    report.raw_html(figure_table_html(results))
    if results.get("dvae"):
        report.figure_table(dvae_rows(results))
    samples = out_dir / "samples"
    for split in results.get("splits", {}):
        gen, real = samples / f"{split}_generated.png", samples / f"{split}_real.png"
        if gen.is_file() and real.is_file():
            report.section(f"Samples: {SPLIT_TITLES.get(split, split)}")
            report.image(gen, "generated, one per caption (first captions of the evaluated set)")
            report.image(real, "the real images of the same captions, in the same order")
    recon = samples / "dvae_reconstructions.png"
    if recon.is_file():
        report.section("dVAE reconstructions")
        report.image(recon, "pairs of columns: original, then its reconstruction from hard codes")
    return report.save()


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from dalle_zero.evaluation.evaluate import SPLITS, EvalConfig, evaluate_model, json_ready
    from dalle_zero.io import atomic_write_text
    from dalle_zero.models.clip import DalleCLIP
    from dalle_zero.models.evaluator import EmojiEvaluator
    from dalle_zero.pipelines.text_to_image import TextToImagePipeline

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    model = Path(args.model)
    if not model.is_dir():
        raise FileNotFoundError(f"--model: model folder not found: {model}")
    data = Path(args.data)
    if not data.is_dir():
        raise FileNotFoundError(f"--data: data folder not found: {data}")
    if not (data / "splits.json").is_file():
        raise FileNotFoundError(f"--data: {data} has no splits.json (build it with `dalle data emoji`)")
    evaluator = EmojiEvaluator.from_pretrained(model_dir(args.evaluator, "evaluator", "--evaluator"))
    clip = DalleCLIP.from_pretrained(model_dir(args.clip, "clip", "--clip")) if args.clip else None
    inception = None
    if args.inception:
        from dalle_zero.evaluation.inception import TorchScriptInception, sha256_file

        if not Path(args.inception).is_file():
            raise FileNotFoundError(f"--inception: file not found: {args.inception}")
        print(f"Inception-v3: {args.inception} (sha256 {sha256_file(args.inception)})")
        inception = (
            TorchScriptInception.from_file(args.inception, output="features"),
            TorchScriptInception.from_file(args.inception, output="logits"),
        )
    pipeline = TextToImagePipeline.from_pretrained(model)
    if args.int8:
        pipeline.quantize_int8()
    if args.threads is None:
        from dalle_zero.demo.budget import fastest_thread_count

        fastest_thread_count()  # on a busy machine 1 thread can be many times faster than 2
    else:
        torch.set_num_threads(args.threads)
    config = EvalConfig(
        splits=tuple(args.split) if args.split else SPLITS,
        samples=args.samples,
        candidates=args.candidates,
        seed=args.seed,
        batch_size=args.batch_size,
        **sampling_settings(args),
    )
    out = Path(args.out)
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
