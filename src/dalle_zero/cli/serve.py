"""``dalle serve``: an HTTP API and a web page in front of a model folder from ``dalle assemble``.

``GET /`` is a page to try captions in a browser, ``GET /health`` the model summary, and
``POST /generate`` takes a JSON body (caption, n, candidates, seed, temperature, top_k, top_p,
guidance_scale, prime_image, prime_rows) and answers with base64 PNGs, reranker scores, the seed
and the timing (see :mod:`dalle_zero.server`). Requests are sampled one at a time, from a bounded
queue; the same seed gives the same images as ``dalle generate --seed``. Ctrl-C stops the server.

The server answers only to its own names (``--allowed-hosts`` adds some) and pages of its own
origin. Anyone who can reach the port can use the model, so beyond localhost give it ``--token``
(or ``--token-file``, which keeps the token out of the process list).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
from pathlib import Path

from dalle_zero.cli.options import load_pipeline

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
    parser.add_argument(
        "--allowed-hosts",
        action="append",
        default=[],
        metavar="NAMES",
        help="comma-separated host names the server may be called by besides localhost and --host "
        "(e.g. the name of this machine); others get 403, which stops DNS-rebinding pages",
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every request but the page")
    token.add_argument("--token-file", help="as --token, with the token read from this file's first line")
    parser.add_argument(
        "--max-connections", type=int, default=32, help="connections served at once; more get 503 (default 32)"
    )
    parser.add_argument(
        "--max-queue", type=int, default=8, help="requests waiting for the model; more get 503 (default 8)"
    )
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=120.0,
        help="seconds a request may wait for the model before it gets 503 (default 120)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="seconds for a request's headers and body to arrive; slower ones get 408 (default 30)",
    )


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    import torch

    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.server import GenerationService, ServerLimits, make_server
    from dalle_zero.server.guards import check_host_name, check_token

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    for flag, value in (("--max-images", args.max_images), ("--max-candidates", args.max_candidates)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.max_candidates < args.max_images:
        raise ValueError(f"--max-candidates ({args.max_candidates}) must be >= --max-images ({args.max_images})")
    for flag, value in (("--max-connections", args.max_connections), ("--max-queue", args.max_queue)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    for flag, value in (("--queue-timeout", args.queue_timeout), ("--request-timeout", args.request_timeout)):
        if not 0 < value < float("inf"):
            raise ValueError(f"{flag} must be a number of seconds > 0, got {value}")
    # checked here too (make_server does) so that a mistake does not wait for the model to load
    allowed_hosts = [check_host_name(h.strip()) for hosts in args.allowed_hosts for h in hosts.split(",") if h.strip()]
    token = _read_token(args)
    if token is not None:
        check_token(token)
    model_dir = Path(args.model)
    pipeline = load_pipeline(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    limits = ServerLimits(
        max_images=args.max_images,
        max_candidates=args.max_candidates,
        max_queue=args.max_queue,
        queue_timeout=args.queue_timeout,
    )
    service = GenerationService(pipeline, limits, name=model_dir.resolve().name)
    server = make_server(
        service,
        args.host,
        args.port,
        timeout=args.request_timeout,
        max_connections=args.max_connections,
        allowed_hosts=allowed_hosts,
        token=token,
    )
    if token is None and not _is_loopback(args.host):
        print(
            f"dalle: warning: listening on {args.host} without --token: "
            "anyone who can reach this port can use the model",
            file=sys.stderr,
        )
    logging.getLogger("dalle_zero.server").setLevel(logging.INFO)  # one line per request
    d = pipeline.dvae.config
    reranker = "with a CLIP reranker" if pipeline.clip is not None else "no reranker"
    print(f"{model_dir}: {d.image_size} px images, {d.grid_size}x{d.grid_size} tokens, {reranker}")
    if token is not None:  # the token itself is not printed: output often ends up in logs
        print(f"the page asks for the token once per browser tab, or open {server.url}#token=<token>")
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


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token_file is None:
        return args.token
    path = Path(args.token_file)
    if not path.is_file():
        raise FileNotFoundError(f"--token-file: no such file: {path}")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"--token-file: {path} is empty; put the token on its first line")
    return lines[0].strip()


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
