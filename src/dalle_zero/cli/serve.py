"""``dalle serve``: an HTTP API and a web page in front of a model folder from ``dalle assemble``.

``GET /`` is a page to try captions in a browser, ``GET /health`` the model summary, and
``POST /generate`` takes a JSON body (caption, n, candidates, seed, temperature, top_k, top_p,
guidance_scale, prime_image, prime_rows) and answers with base64 PNGs, reranker scores, the seed
and the timing (see :mod:`dalle_zero.server`). Requests are sampled one at a time; the same seed
gives the same images as ``dalle generate --seed``. Ctrl-C stops the server.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

HELP = "serve a model folder over HTTP: a JSON API and a web page"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder written by `dalle assemble`")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--threads", type=int, help="torch threads for sampling (default: torch's choice)")
    parser.add_argument("--max-images", type=int, default=16, help="most images per request (default 16)")
    parser.add_argument(
        "--max-candidates", type=int, default=64, help="most candidates per request, with a reranker (default 64)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="int8 weight-only transformer blocks: faster sampling on CPU, slightly different samples",
    )


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from dalle_zero.cli.options import load_pipeline
    from dalle_zero.server import GenerationService, ServerLimits, make_server

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    for flag, value in (("--max-images", args.max_images), ("--max-candidates", args.max_candidates)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.max_candidates < args.max_images:
        raise ValueError(f"--max-candidates ({args.max_candidates}) must be >= --max-images ({args.max_images})")
    model_dir = Path(args.model)
    pipeline = load_pipeline(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    limits = ServerLimits(max_images=args.max_images, max_candidates=args.max_candidates)
    service = GenerationService(pipeline, limits, name=model_dir.resolve().name)
    server = make_server(service, args.host, args.port)
    logging.getLogger("dalle_zero.server").setLevel(logging.INFO)  # one line per request
    d = pipeline.dvae.config
    reranker = "with a CLIP reranker" if pipeline.clip is not None else "no reranker"
    print(f"{model_dir}: {d.image_size} px images, {d.grid_size}x{d.grid_size} tokens, {reranker}")
    print(f"serving on {server.url}  (Ctrl-C to stop)", flush=True)
    # `kill`, `docker stop`: stop as on Ctrl-C; and Ctrl-C itself even where a shell started the server
    # in the background, which makes it inherit SIGINT ignored (Python then installs no handler)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
