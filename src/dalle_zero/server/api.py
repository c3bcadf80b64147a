"""The generation API without HTTP: JSON-native requests in, JSON-native responses out.

:class:`GenerationService` wraps one :class:`~dalle_zero.pipelines.text_to_image.TextToImagePipeline`:

- :meth:`~GenerationService.info` summarises the model (image size, token grid, vocabularies,
  reranker) and the server's limits;
- :meth:`~GenerationService.generate` checks a request (:func:`parse_generate_request`), samples
  under a lock (one model, one device: requests run one at a time, in arrival order of the lock),
  and returns base64 PNGs, reranker scores, the seed used and the timing.

Every mistake in a request raises :class:`ApiError` with an HTTP status and a one-line message
naming the field and what was expected. The same seed and settings give the same PNG bytes, and
the same images as ``dalle generate`` with that seed (both sample in batches of
:data:`BATCH_SIZE`).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from dalle_zero.pipelines.text_to_image import TextToImagePipeline, to_pil

BATCH_SIZE = 8  # the pipeline's (and `dalle generate`'s) default, so seeds give the same images
MAX_SEED = 2**63 - 1


class ApiError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """What one request may ask for; larger requests are refused with a 400 (or 413 for the body)."""

    max_images: int = 16
    max_candidates: int = 64
    max_caption_chars: int = 1000
    max_body_bytes: int = 8 * 2**20
    max_prime_pixels: int = 4096 * 4096

    def __post_init__(self) -> None:
        for name in ("max_images", "max_candidates", "max_caption_chars", "max_body_bytes", "max_prime_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_candidates < self.max_images:
            raise ValueError(
                f"max_candidates ({self.max_candidates}) must be >= max_images ({self.max_images}): "
                "every image is one candidate"
            )


@dataclass(frozen=True)
class GenerateRequest:
    """A checked ``POST /generate`` body; ``prime_image`` is a ``PIL.Image.Image`` or None."""

    caption: str
    n: int
    candidates: int | None
    seed: int | None
    temperature: float
    top_k: int | None
    top_p: float | None
    guidance_scale: float
    prime_image: Any
    prime_rows: int | None

    def settings(self) -> dict[str, Any]:
        """The sampling settings as echoed in the response (no image data)."""
        return {
            "n": self.n,
            "candidates": self.candidates,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "guidance_scale": self.guidance_scale,
            "primed": self.prime_image is not None,
            "prime_rows": self.prime_rows,
        }


FIELDS = (
    "caption",
    "n",
    "candidates",
    "seed",
    "temperature",
    "top_k",
    "top_p",
    "guidance_scale",
    "prime_image",
    "prime_rows",
)


# ---- field checks: each raises ApiError naming the field ----


def _integer(payload: dict, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = payload.get(name)
    if value is None:  # absent or null: the default
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(f"{name} must be an integer, got {_show(value)}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ApiError(f"{name} must be {bound}, got {value}")
    return value


def _number(payload: dict, name: str, default: float | None) -> float | None:
    value = payload.get(name)
    if value is None:  # absent or null: the default
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(f"{name} must be a finite number, got {_show(value)}")
    return float(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def decode_image(data: Any, *, max_pixels: int) -> Any:
    """Base64 (or a ``data:image/...;base64,`` URL) of an image file -> a loaded PIL image.

    The pipeline composites transparent pixels onto white, the background of the training images.
    """
    from PIL import Image

    if not isinstance(data, str) or not data:
        raise ApiError(f"prime_image must be a base64 string of an image file, got {_show(data)}")
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if not header.endswith(";base64"):
            raise ApiError("prime_image: a data URL must be base64-encoded (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("prime_image is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ApiError(f"prime_image is {w}x{h} pixels; at most {max_pixels} pixels are accepted")
            im.load()
            return im.copy()
    except ApiError:
        raise
    except Exception as e:  # PIL raises many kinds (OSError, SyntaxError, DecompressionBombError, ...)
        raise ApiError(f"prime_image is not a readable image ({type(e).__name__}: {first_line(e)})") from None


def first_line(e: BaseException, empty: str | None = None) -> str:
    """The first line of an exception's message; ``empty`` (default: the exception's type name) if none."""
    text = str(e).strip()
    if text:
        return text.splitlines()[0]
    return type(e).__name__ if empty is None else empty


def parse_generate_request(payload: Any, pipeline: TextToImagePipeline, limits: ServerLimits) -> GenerateRequest:
    """Check a decoded JSON body against the pipeline and the limits -> :class:`GenerateRequest`.

    Fields (absent or ``null``: the default):

    - ``caption``: a non-empty string of at most ``max_caption_chars`` characters (required);
    - ``n``: images to return, in [1, ``max_images``] (default 4, or ``max_images`` if smaller);
    - ``candidates``: samples to draw and rerank, in [n, ``max_candidates``]; more than ``n`` needs a CLIP;
    - ``seed``: an integer in [0, 2**63 - 1] (default: drawn at random and returned);
    - ``temperature`` (> 0, default 1), ``top_k`` (>= 1), ``top_p`` (in (0, 1]), ``guidance_scale``
      (default 1: no guidance), as in ``dalle generate``;
    - ``prime_image``: base64 of an image file, or a ``data:image/...;base64,`` URL (image-to-image);
    - ``prime_rows``: token rows of the prime image to keep, in [0, grid] (default half the grid).
    """
    if not isinstance(payload, dict):
        raise ApiError(f"the body must be a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise ApiError(f"unknown field {unknown[0]!r}; the fields are: {', '.join(FIELDS)}")
    caption = payload.get("caption")
    if not isinstance(caption, str):
        raise ApiError(f"caption must be a string, got {_show(caption)}")
    if not caption.strip():
        raise ApiError("caption is empty: give some text to draw")
    if len(caption) > limits.max_caption_chars:
        raise ApiError(f"caption has {len(caption)} characters; at most {limits.max_caption_chars} are accepted")
    n = _integer(payload, "n", min(4, limits.max_images), 1, limits.max_images)
    candidates = _integer(payload, "candidates", None, n, limits.max_candidates)
    if candidates is not None and candidates > n and pipeline.clip is None:
        raise ApiError(f"candidates={candidates} > n={n} needs a CLIP reranker, and this model has none")
    temperature = _number(payload, "temperature", 1.0)
    if temperature <= 0:
        raise ApiError(f"temperature must be a number > 0, got {_show(payload.get('temperature'))}")
    top_p = _number(payload, "top_p", None)
    if top_p is not None and not 0 < top_p <= 1:
        raise ApiError(f"top_p must be in (0, 1], got {top_p}")
    guidance_scale = _number(payload, "guidance_scale", 1.0)
    grid = pipeline.dvae.config.grid_size
    prime_data = payload.get("prime_image")
    prime_rows = _integer(payload, "prime_rows", None, 0, grid)
    if prime_data is None and prime_rows is not None:
        raise ApiError("prime_rows needs a prime_image")
    prime_image = None if prime_data is None else decode_image(prime_data, max_pixels=limits.max_prime_pixels)
    if prime_image is not None and prime_rows is None:
        prime_rows = grid // 2
    return GenerateRequest(
        caption=caption,
        n=n,
        candidates=candidates,
        seed=_integer(payload, "seed", None, 0, MAX_SEED),
        temperature=temperature,
        top_k=_integer(payload, "top_k", None, 1),
        top_p=top_p,
        guidance_scale=guidance_scale,
        prime_image=prime_image,
        prime_rows=prime_rows,
    )


def png_base64(image: Any) -> str:
    """A PIL image -> base64 (ASCII) of its PNG file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class GenerationService:
    """One pipeline behind a lock: model summary and checked, serialised generation."""

    def __init__(self, pipeline: TextToImagePipeline, limits: ServerLimits | None = None, *, name: str = "") -> None:
        self.pipeline = pipeline
        self.limits = limits or ServerLimits()
        self.name = name
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """The model summary of ``GET /health``."""
        p = self.pipeline
        t, d = p.transformer.config, p.dvae.config
        info: dict[str, Any] = {
            "status": "ok",
            "model": self.name,
            "image_size": d.image_size,
            "image_grid": t.image_grid,
            "image_vocab_size": t.image_vocab_size,
            "text_vocab_size": t.text_vocab_size,
            "text_seq_len": t.text_seq_len,
            "transformer": {
                "n_layer": t.n_layer,
                "n_head": t.n_head,
                "n_embd": t.n_embd,
                "attn_pattern": t.attn_pattern,
            },
            "reranker": p.clip is not None,
            "device": str(p.device),
            "priming": {"prime_rows_max": d.grid_size, "prime_rows_default": d.grid_size // 2},
            "limits": {
                "max_images": self.limits.max_images,
                "max_candidates": self.limits.max_candidates if p.clip is not None else self.limits.max_images,
                "max_caption_chars": self.limits.max_caption_chars,
                "max_body_bytes": self.limits.max_body_bytes,
            },
            "busy": self._lock.locked(),
        }
        return info

    def generate(self, payload: Any) -> dict[str, Any]:
        """Check ``payload`` (a decoded ``POST /generate`` body), sample, and return the response body."""
        request = parse_generate_request(payload, self.pipeline, self.limits)
        warnings = []
        tokens = len(self.pipeline.tokenizer.tokenize([request.caption])[0])
        if tokens > self.pipeline.tokenizer.text_seq_len:
            warnings.append(
                f"the caption has {tokens} tokens; only the first {self.pipeline.tokenizer.text_seq_len} are used"
            )
        arrived = time.perf_counter()
        with self._lock:
            started = time.perf_counter()
            try:
                output = self.pipeline(
                    request.caption,
                    n=request.n,
                    candidates=request.candidates,
                    seed=request.seed,
                    temperature=request.temperature,
                    top_k=request.top_k,
                    top_p=request.top_p,
                    guidance_scale=request.guidance_scale,
                    prime_image=request.prime_image,
                    prime_rows=request.prime_rows,
                    batch_size=BATCH_SIZE,
                )
            except ValueError as e:  # the pipeline's own checks of user input
                raise ApiError(first_line(e)) from None
            seconds = time.perf_counter() - started
        pils = to_pil(output.images[0])
        scores = output.scores[0]
        return {
            "caption": request.caption,
            "seed": output.seed,
            "images": [png_base64(im) for im in pils],
            "scores": None if scores is None else [round(float(s), 6) for s in scores],
            "image_size": list(pils[0].size),
            "settings": request.settings(),
            "seconds": round(seconds, 3),
            "queued_seconds": round(started - arrived, 3),
            "warnings": warnings,
        }
