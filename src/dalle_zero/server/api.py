"""The generation API without HTTP: JSON-native requests in, JSON-native responses out.

:class:`GenerationService` wraps one :class:`~dalle_zero.pipelines.text_to_image.TextToImagePipeline`:

- :meth:`~GenerationService.info` summarises the model (image size, token grid, vocabularies,
  reranker, example captions) and the server's limits;
- :meth:`~GenerationService.generate` checks a request (:func:`parse_generate_request`), waits
  for its turn in a bounded first-in-first-out queue (one model, one device: requests are sampled
  one at a time), samples, and returns base64 PNGs, reranker scores, the seed used, the timing and
  warnings (a truncated caption; a caption of mostly words the training captions never contained;
  ``prime_rows`` that leave nothing to draw, or keep nothing).

The queue holds at most ``max_queue`` waiting requests; one more gets 503 with ``Retry-After``, and
so does a request still waiting after ``queue_timeout`` seconds. A request whose client has hung up
(the caller's ``client_gone()``) leaves the queue without being sampled, or stops being sampled within
a tenth of a second: a model busy drawing for closed sockets would make every live client wait longer.
Once the caller's ``stopping()`` is true (the server is closing), waiting requests get 503 within a
tenth of a second and sampling ones at their next token step.

Every mistake in a request raises :class:`ApiError` with an HTTP status and a one-line message
naming the field and what was expected. The same seed and settings give the same PNG bytes, and
the same images as ``dalle generate`` with that seed (both sample in batches of
:data:`BATCH_SIZE`).
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from dalle_zero.pipelines.text_to_image import TextToImagePipeline, to_pil
from dalle_zero.sampling.generate import GUIDANCE_SCALE_RANGE, TEMPERATURE_RANGE
from dalle_zero.server.generate_request import (
    ApiError,
    ServerLimits,
    first_line,
    parse_generate_request,
    prime_warnings,
)

BATCH_SIZE = 8  # the pipeline's (and `dalle generate`'s) default, so seeds give the same images


class ClientGone(Exception):
    """The client hung up while its request waited for its turn or was sampled; there is nobody to answer."""


CLIENT_POLL_SECONDS = 0.1  # how often a waiting or sampling request checks that its client is still there


def _stopping_error() -> ApiError:
    return ApiError("the server is stopping; retry shortly", 503, {"Retry-After": "1"})


def png_base64(image: Any) -> str:
    """A PIL image -> base64 (ASCII) of its PNG file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class GenerationService:
    """One pipeline behind a bounded first-in-first-out queue: model summary and checked, serialised generation."""

    def __init__(self, pipeline: TextToImagePipeline, limits: ServerLimits | None = None, *, name: str = "") -> None:
        self.pipeline = pipeline
        self.limits = limits or ServerLimits()
        self.name = name
        self._turns = threading.Condition()
        self._waiting: deque[object] = deque()  # tickets of the requests waiting, first in line first
        self._sampling = False
        self._mean_seconds = 1.0  # running mean of a request's sampling time, for Retry-After
        # every queued request ends as exactly one of: sampled, abandoned (its client left first),
        # timed_out, refused_stopping; "cancelled" counts the sampled ones cut short (client left, server stopping)
        self.counts = {"queued": 0, "sampled": 0, "abandoned": 0, "timed_out": 0, "refused_busy": 0,
                       "refused_stopping": 0, "cancelled": 0}  # fmt: skip

    def info(self) -> dict[str, Any]:
        """The model summary of ``GET /health``."""
        p = self.pipeline
        t, d = p.transformer.config, p.dvae.config
        with self._turns:
            queue = {"waiting": len(self._waiting), "sampling": self._sampling, "counts": dict(self.counts)}
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
            "examples": list(p.examples),
            "sampling": p.sampling.to_dict(),  # the settings a request gets for the fields it leaves out
            "device": str(p.device),
            "int8": p.transformer.quantized == "int8",  # `dalle generate --int8` draws the same images
            "priming": {"prime_rows_max": d.grid_size, "prime_rows_default": d.grid_size // 2},
            "ranges": {"temperature": list(TEMPERATURE_RANGE), "guidance_scale": list(GUIDANCE_SCALE_RANGE)},
            "limits": {
                "max_images": self.limits.max_images,
                "max_candidates": self.limits.max_candidates if p.clip is not None else self.limits.max_images,
                "max_caption_chars": self.limits.max_caption_chars,
                "max_body_bytes": self.limits.max_body_bytes,
                "max_queue": self.limits.max_queue,
                "queue_timeout": self.limits.queue_timeout,
            },
            "busy": queue["sampling"],
            "queue": queue,
        }
        return info

    def generate(
        self,
        payload: Any,
        client_gone: Callable[[], bool] | None = None,
        stopping: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Check ``payload`` (a decoded ``POST /generate`` body), wait for a turn, sample, and return the
        response body. ``client_gone()`` says whether the client hung up (checked while waiting and
        while sampling; :class:`ClientGone` if so). ``stopping()`` says whether the server is stopping
        (checked while waiting and at every token step; 503 if so), so that no thread is left
        sampling when it exits."""
        request = parse_generate_request(payload, self.pipeline, self.limits)
        warnings = []
        caption_warning = self.pipeline.caption_warning(request.caption)
        if caption_warning:
            warnings.append(caption_warning)
        tokens = len(self.pipeline.tokenizer.tokenize([request.caption])[0])
        if tokens > self.pipeline.tokenizer.text_seq_len:
            warnings.append(
                f"the caption has {tokens} tokens; only the first {self.pipeline.tokenizer.text_seq_len} are used"
            )
        warnings.extend(prime_warnings(request, self.pipeline.dvae.config.grid_size))
        arrived = time.perf_counter()
        client_gone, stopping = client_gone or (lambda: False), stopping or (lambda: False)
        self._wait_for_turn(client_gone, stopping)
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
                guidance_top_p=request.guidance_top_p,
                prime_image=request.prime_image,
                prime_rows=request.prime_rows,
                batch_size=BATCH_SIZE,
                progress=self._interrupter(client_gone, stopping),
            )
        except ApiError:  # the server stopping (from the per-token callback)
            raise
        except ValueError as e:  # the pipeline's own checks of user input
            raise ApiError(first_line(e)) from None
        finally:
            seconds = time.perf_counter() - started
            self._end_turn(seconds)
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

    # ---- the queue ----

    def _wait_for_turn(self, client_gone: Callable[[], bool], stopping: Callable[[], bool]) -> None:
        """Join the queue and return once this request may sample (the caller then calls _end_turn)."""
        limits = self.limits
        ticket = object()
        with self._turns:
            if len(self._waiting) >= limits.max_queue:
                self.counts["refused_busy"] += 1
                raise self._busy(f"the server is busy: {len(self._waiting)} requests are waiting; retry later")
            self._waiting.append(ticket)
            self.counts["queued"] += 1
            deadline = time.monotonic() + limits.queue_timeout
            try:
                while True:
                    if stopping():
                        self.counts["refused_stopping"] += 1
                        raise _stopping_error()
                    # a request whose client left is dropped here, before it costs any sampling
                    if client_gone():
                        self.counts["abandoned"] += 1
                        raise ClientGone
                    if not self._sampling and self._waiting[0] is ticket:
                        self._sampling = True
                        self.counts["sampled"] += 1
                        return
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self.counts["timed_out"] += 1
                        raise self._busy(
                            f"the server is busy: the request waited {limits.queue_timeout:g} s for its turn; "
                            "retry later"
                        )
                    self._turns.wait(min(remaining, CLIENT_POLL_SECONDS))
            finally:
                self._waiting.remove(ticket)
                self._turns.notify_all()  # the next in line may start

    def _interrupter(self, client_gone: Callable[[], bool], stopping: Callable[[], bool]) -> Callable[[int, int], None]:
        """The pipeline's per-token callback of a request being sampled: it stops the sampling (by
        raising) at the next token step once the server stops, and within ``CLIENT_POLL_SECONDS`` once
        the client hangs up (a check of the socket per token would cost a system call each)."""
        next_check = time.monotonic() + CLIENT_POLL_SECONDS

        def check(_done: int, _total: int) -> None:
            nonlocal next_check
            error: Exception | None = None
            if stopping():
                error = _stopping_error()
            elif time.monotonic() >= next_check:
                next_check = time.monotonic() + CLIENT_POLL_SECONDS
                if client_gone():
                    error = ClientGone()
            if error is not None:
                with self._turns:
                    self.counts["cancelled"] += 1
                raise error

        return check

    def _end_turn(self, seconds: float) -> None:
        with self._turns:
            self._sampling = False
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds
            self._turns.notify_all()

    def _busy(self, message: str) -> ApiError:
        # every waiting request and the one sampling finish before a retry could start
        retry = math.ceil(self._mean_seconds * (len(self._waiting) + 1))
        return ApiError(message, 503, {"Retry-After": str(min(max(retry, 1), 3600))})
