#!/usr/bin/env python
"""Images per second of the evaluation's sampling path, by batch size and number format.

    python benchmarks/bench_eval_sampling.py --model MODEL [--batch 64 --batch 128 ...] [--candidates 6] [--repeats 3]

For a model folder (a demo's ``model/``), times what ``dalle eval`` and the demo's reserve probe run
(:func:`dalle_zero.demo.budget.measure_sampling_rate`: cached sampling with classifier-free guidance,
then the dVAE decode; ``--candidates`` samples per caption, as the evaluation draws them) at each
``--batch``, in fp32, under bf16 autocast and with int8 weight-only
transformer blocks (``--int8``); "fp32 sdpa-decode" is fp32 with every decode step's attention in
torch's SDPA kernel (:data:`dalle_zero.nn.attention.DECODE_MATMUL_MIN_ROWS` out of reach), the path
before batched matmuls took over large batches. Prints one JSON row per setting: the best and the median images per
second of ``--repeats`` timings, side by side in one run. ``--workers 2`` also times fp32 sampling in 2
processes on an equal part of the cores each, as ``dalle eval --workers 2`` and the demo's evaluation
run it (:func:`dalle_zero.demo.budget.parallel_sampling_rate`: each process times its batch while the
others time theirs; the rate is their sum). With ``--profile``, also the seconds of one
batch of image tokens (the first ``--batch``) with and without guidance, and the share of CPU time of
the operators that take most of it (``torch.profiler``).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from common import emit


def main() -> None:
    from dalle_zero.demo.budget import measure_sampling_rate, parallel_sampling_rate
    from dalle_zero.evaluation.evaluate import EvalConfig
    from dalle_zero.nn import attention
    from dalle_zero.pipelines.text_to_image import TextToImagePipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="pipeline folder (`dalle assemble`, or a demo's model/)")
    ap.add_argument("--batch", type=int, action="append", default=[], help="sampling batch (repeatable)")
    ap.add_argument("--guidance-scale", type=float, default=3.0)
    ap.add_argument("--candidates", type=int, default=1, help="samples per caption (the demo's evaluation: 6)")
    ap.add_argument("--formats", default="fp32,bf16 autocast,int8",
                    help="comma-separated subset of: fp32, fp32 sdpa-decode, bf16 autocast, int8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, action="append", default=[],
                    help="also time fp32 sampling in this many processes (repeatable; e.g. 2)")
    ap.add_argument("--profile", action="store_true", help="also profile one batch of image tokens")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = args.batch or [64, 128, 256]
    captions = [
        "grinning face, noto style (smileys & emotion, face smiling)",
        "red heart, twemoji style (smileys & emotion, heart)",
        "person running: medium skin tone, noto style (people & body, person activity)",
    ]

    def timed(pipeline: TextToImagePipeline, batch: int, fmt: str) -> None:
        config = EvalConfig(batch_size=batch, guidance_scale=args.guidance_scale, candidates=args.candidates)
        rates = []
        for _ in range(args.repeats):
            if fmt == "bf16 autocast":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    rates.append(measure_sampling_rate(pipeline, config, captions))
            elif fmt == "fp32 sdpa-decode":
                kept, attention.DECODE_MATMUL_MIN_ROWS = attention.DECODE_MATMUL_MIN_ROWS, sys.maxsize
                try:
                    rates.append(measure_sampling_rate(pipeline, config, captions))
                finally:
                    attention.DECODE_MATMUL_MIN_ROWS = kept
            else:
                rates.append(measure_sampling_rate(pipeline, config, captions))
        emit("eval_sampling", "images_per_second", round(max(rates), 2), "img/s", batch=batch, format=fmt,
             median=round(statistics.median(rates), 2), repeats=args.repeats, guidance_scale=args.guidance_scale,
             candidates=args.candidates)

    pipeline = TextToImagePipeline.from_pretrained(args.model)
    if args.profile:
        profile(pipeline, captions, batches[0], args.guidance_scale)
    formats = args.formats.split(",")
    for batch in batches:  # the formats of one batch one after the other: side by side in time
        for fmt in ("fp32 sdpa-decode", "fp32", "bf16 autocast"):
            if fmt in formats:
                timed(pipeline, batch, fmt)
    for workers in args.workers:
        for batch in batches:
            config = EvalConfig(batch_size=batch, guidance_scale=args.guidance_scale, candidates=args.candidates,
                                workers=workers)
            rates = [parallel_sampling_rate(pipeline, config, captions) for _ in range(args.repeats)]
            emit("eval_sampling", "images_per_second", round(max(rates), 2), "img/s", batch=batch, format="fp32",
                 workers=workers, median=round(statistics.median(rates), 2), repeats=args.repeats,
                 guidance_scale=args.guidance_scale, candidates=args.candidates)
    if "int8" in formats:
        pipeline.quantize_int8()
        for batch in batches:
            timed(pipeline, batch, "int8")


@torch.no_grad()
def profile(pipeline, captions: list[str], batch: int, guidance_scale: float, *, top: int = 6) -> None:
    """Seconds of one batch of image tokens, guided and not, and the operators' shares of a guided one."""
    import time

    from dalle_zero.sampling.generate import generate_image_tokens

    ids = pipeline.tokenizer.encode([captions[i % len(captions)] for i in range(batch)])
    g = torch.Generator().manual_seed(0)
    generate_image_tokens(pipeline.transformer, ids[:8], generator=g, guidance_scale=guidance_scale)  # warm-up
    for scale in (guidance_scale, 1.0):
        t0 = time.perf_counter()
        generate_image_tokens(pipeline.transformer, ids, generator=g, guidance_scale=scale)
        emit("eval_sampling", "token_batch_seconds", round(time.perf_counter() - t0, 3), "s", batch=batch,
             guidance_scale=scale)
    with torch.profiler.profile() as prof:
        generate_image_tokens(pipeline.transformer, ids, generator=g, guidance_scale=guidance_scale)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    for e in events[:top]:
        emit("eval_sampling", "operator_share", round(e.self_cpu_time_total / total, 3), batch=batch,
             operator=e.key, calls=e.count, guidance_scale=guidance_scale)
    emit("eval_sampling", "profiled_cpu_seconds", round(total / 1e6, 3), "s", batch=batch,
         guidance_scale=guidance_scale)


if __name__ == "__main__":
    main()
