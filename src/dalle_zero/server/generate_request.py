"""A request to the generation API, checked: :func:`parse_generate_request` turns a decoded JSON body
into a :class:`GenerateRequest` or raises :class:`ApiError` (an HTTP status and a one-line message
naming the field and what was expected); the server's :class:`ServerLimits` bound what one request
may ask for. Fields left out take the model folder's recommended sampling settings."""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from dalle_zero.pipelines.text_to_image import TextToImagePipeline
from dalle_zero.sampling.generate import GUIDANCE_SCALE_RANGE, TEMPERATURE_RANGE

MAX_SEED = 2**63 - 1
# Pillow can open ~40 formats, some through outside programs (EPS runs Ghostscript); a prime image
# is a picture from a browser or a script, so only these are decoded.
PRIME_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


class ApiError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status to answer with, ``headers`` extra
    response headers (``Retry-After``, ``Allow``, ``WWW-Authenticate``)."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """What one request may ask for (larger requests are refused with a 400, or 413 for the body), and
    how many requests may wait for the sampler (``max_queue``) and for how long (``queue_timeout``, s)."""

    max_images: int = 16
    max_candidates: int = 64
    max_caption_chars: int = 1000
    max_body_bytes: int = 8 * 2**20
    max_prime_pixels: int = 4096 * 4096
    max_queue: int = 8
    queue_timeout: float = 120.0

    def __post_init__(self) -> None:
        for name in (
            "max_images",
            "max_candidates",
            "max_caption_chars",
            "max_body_bytes",
            "max_prime_pixels",
            "max_queue",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        timeout = self.queue_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"queue_timeout must be a number of seconds > 0, got {timeout!r}")
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
    guidance_top_p: float | None
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
            "guidance_top_p": self.guidance_top_p,
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
    "guidance_top_p",
    "prime_image",
    "prime_rows",
)


# ---- field checks: each raises ApiError naming the field ----


def _integer(payload: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = payload.get(name)
    if value is None:  # absent or null: the default
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(f"{name} must be an integer, got {_show(value)}")
    if not low <= value <= high:
        raise ApiError(f"{name} must be in [{low}, {high}], got {_show(value)}")
    return value


def _number(
    payload: dict, name: str, default: float | None, low: float, high: float, *, low_open: bool = False
) -> float | None:
    """A JSON number in [low, high] (or (low, high]) as a float. Bounds are compared before any
    conversion: float() of a 400-digit JSON integer raises OverflowError."""
    value = payload.get(name)
    if value is None:  # absent or null: the default
        return default
    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(f"{name} must be a number in {bounds}, got {_show(value)}")
    inside = (low < value if low_open else low <= value) and value <= high  # exact for ints of any size
    if not inside:  # NaN fails both comparisons
        raise ApiError(f"{name} must be a number in {bounds}, got {_show(value)}")
    return float(value)


def _show(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 64:  # repr() of a 5000-digit int raises ValueError
        return f"an integer of about {round(value.bit_length() * math.log10(2))} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def decode_image(data: Any, *, max_pixels: int) -> Any:
    """Base64 (or a ``data:image/...;base64,`` URL) of an image file -> a loaded PIL image.

    The pipeline composites transparent pixels onto white, the background of the training images.
    """
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
        with Image.open(io.BytesIO(raw), formats=PRIME_FORMATS) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ApiError(f"prime_image is {w}x{h} pixels; at most {max_pixels} pixels are accepted")
            im.load()
            return im.copy()
    except ApiError:
        raise
    except Image.UnidentifiedImageError:
        raise ApiError("prime_image is not a readable PNG, JPEG, WebP, GIF or BMP file") from None
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

    - ``caption``: a string of at most ``max_caption_chars`` characters with some text left once
      normalised (:meth:`~TextToImagePipeline.check_caption`) (required);
    - ``n``: images to return, in [1, ``max_images``] (default 4, or ``max_images`` if smaller);
    - ``candidates``: samples to draw and rerank, in [n, ``max_candidates``]; more than ``n`` needs a CLIP
      (default: the model folder's recommendation, ``sampling.json``, within the limit);
    - ``seed``: an integer in [0, 2**63 - 1] (default: drawn at random and returned);
    - ``temperature`` (in [0.05, 10], default 1), ``top_k`` (in [1, image vocabulary]), ``top_p``
      (in (0, 1]), ``guidance_scale`` (in [0, 50]), ``guidance_top_p`` (in (0, 1]), as in
      ``dalle generate``; temperature and guidance default to the model folder's recommendation
      (``sampling.json``; without one: temperature 1, no guidance);
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
    try:
        pipeline.check_caption(caption)  # refused here, not after waiting for the lock
    except ValueError as e:
        raise ApiError(first_line(e)) from None
    n = _integer(payload, "n", min(4, limits.max_images), 1, limits.max_images)
    recommended = pipeline.sampling
    candidates = _integer(payload, "candidates", None, n, limits.max_candidates)
    if candidates is None:
        candidates = min(pipeline.candidates_for(n), limits.max_candidates)
    if candidates is not None and candidates > n and pipeline.clip is None:
        raise ApiError(f"candidates={candidates} > n={n} needs a CLIP reranker, and this model has none")
    temperature = _number(payload, "temperature", recommended.temperature, *TEMPERATURE_RANGE)
    top_p = _number(payload, "top_p", None, 0.0, 1.0, low_open=True)
    guidance_scale = _number(payload, "guidance_scale", recommended.guidance_scale, *GUIDANCE_SCALE_RANGE)
    guidance_top_p = _number(payload, "guidance_top_p", recommended.guidance_top_p, 0.0, 1.0, low_open=True)
    top_k = _integer(payload, "top_k", None, 1, pipeline.transformer.config.image_vocab_size)
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
        top_k=top_k,
        top_p=top_p,
        guidance_scale=guidance_scale,
        guidance_top_p=guidance_top_p,
        prime_image=prime_image,
        prime_rows=prime_rows,
    )


def prime_warnings(request: GenerateRequest, grid: int) -> list[str]:
    """A line when ``prime_rows`` leaves nothing to draw (the whole grid) or keeps nothing (0)."""
    if request.prime_image is None:
        return []
    if request.prime_rows == grid:
        return [
            f"prime_rows = {grid} is the whole token grid: nothing was sampled, so every image is the prime "
            "image as the dVAE encodes and decodes it, whatever the caption and seed (use fewer rows to let "
            "the model draw the rest)"
        ]
    if request.prime_rows == 0:
        return ["prime_rows = 0: the prime image was not used"]
    return []
