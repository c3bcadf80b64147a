"""The images an evaluation scores: captions picked evenly from a split, their real images, and
samples drawn from a pipeline in shared batches (the reranker's best when there are candidates),
through the pipeline's public batched sampling, in this process or in several.

``config`` is an :class:`~dalle_zero.evaluation.evaluate.EvalConfig` (its sampling settings, batch
and worker processes).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dalle_zero.data.images import load_image, resize_pixels
from dalle_zero.data.splits import unit_hash
from dalle_zero.pipelines.text_to_image import TextToImagePipeline
from dalle_zero.runtime import exit_now, flush_denormals, when_orphaned

if TYPE_CHECKING:  # the config lives with the driver that reads all of it
    from dalle_zero.evaluation.evaluate import EvalConfig


def pick_evenly(items: Sequence[str], n: int) -> list[str]:
    """Up to ``n`` items evenly spread over ``items`` (deterministic; all of them if n >= len)."""
    if n >= len(items):
        return list(items)
    idx = torch.linspace(0, len(items) - 1, n).round().long().unique().tolist()
    return [items[i] for i in idx]


def load_real_images(data_dir: Path, stems: Sequence[str], size: int) -> Tensor:
    """``float[N, 3, size, size]`` in [0, 1] from ``data_dir/images/<stem>.png`` (resized if needed)."""
    out = []
    for stem in stems:
        path = data_dir / "images" / f"{stem}.png"
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        out.append(load_image(path).float() / 255.0)  # (3, H, W)
    return resize_pixels(torch.stack(out), size).clamp(0, 1)


def sampling_options(config: EvalConfig) -> dict[str, Any]:
    """The keywords of :meth:`~dalle_zero.pipelines.text_to_image.TextToImagePipeline.generate_batch`
    that ``config`` sets: its sampling batch and settings (no nucleus for guidance is ``1``)."""
    return {
        "batch_size": config.batch_size,
        "temperature": config.temperature,
        "top_k": config.top_k,
        "top_p": config.top_p,
        "guidance_scale": config.guidance_scale,
        "guidance_top_p": 1.0 if config.guidance_top_p is None else config.guidance_top_p,
    }


def generate_for_captions(
    pipeline: TextToImagePipeline,
    captions: Sequence[str],
    config: EvalConfig,
    *,
    generator: torch.Generator,
    progress: Any = None,
) -> tuple[Tensor, Tensor | None]:
    """One image per caption: ``float[N, 3, S, S]`` and reranker scores ``float[N]`` (or None).

    With ``config.candidates`` > 1 the pipeline draws that many per caption and its CLIP keeps the
    best of each (:meth:`~dalle_zero.pipelines.text_to_image.TextToImagePipeline.generate_batch`, the
    candidates of several captions in one sampling batch); ``progress`` (a tqdm bar) is advanced by
    the images drawn.
    """
    m = config.candidates
    if m > 1 and pipeline.clip is None:
        raise ValueError(f"candidates={m} needs a CLIP reranker in the model folder, and it has none")
    out = pipeline.generate_batch(
        captions,
        candidates=m,
        generator=generator,
        progress=None if progress is None else progress.update,
        **sampling_options(config),
    )
    if out.scores is None:
        return out.images[:, 0], None
    # the reranker's picks in the standard (contiguous) layout, as the evaluation has always scored them: the
    # evaluator's convolutions round differently on the decoder's channels-last layout, and the figures
    # of a seed stay the same to the last bit
    return out.images[:, 0].contiguous(), out.scores[:, 0]


# ---------------------------------------------------------------------------------------------
# many caption lists, in chunks that any process can draw


def chunk_seed(seed: int, name: str, index: int) -> int:
    """The generator seed of chunk ``index`` of the caption list ``name``: the same whichever process
    draws the chunk, in whatever order, beside whichever other lists."""
    return int(unit_hash(seed, f"eval-samples/{name}", str(index)) * 2**53)


def caption_chunks(lists: Mapping[str, Sequence[str]], config: EvalConfig) -> list[tuple[str, int, list[str], int]]:
    """``(list name, chunk index, captions, seed)`` for every chunk: as many captions as fill one
    sampling batch with their candidates (at least one)."""
    per_chunk = max(1, config.batch_size // config.candidates)
    return [
        (name, k, list(captions[lo : lo + per_chunk]), chunk_seed(config.seed, name, k))
        for name, captions in lists.items()
        for k, lo in enumerate(range(0, len(captions), per_chunk))
    ]


def draw_caption_lists(
    pipeline: TextToImagePipeline,
    lists: Mapping[str, Sequence[str]],
    config: EvalConfig,
    *,
    progress: Any = None,
) -> dict[str, tuple[Tensor, Tensor | None]]:
    """For each named caption list, one image per caption and the reranker's scores (as
    :func:`generate_for_captions` returns them).

    Each list is drawn in chunks (:func:`caption_chunks`), every chunk from its own seeded generator,
    so the images do not depend on the other lists nor on how many processes draw them (given the same
    number of threads per sampler: another thread count rounds floats differently). With
    ``config.workers`` > 1 that many processes draw the chunks side by side, each with an equal part of
    the cores: on 2 cores two single-threaded samplers draw more images per second than one sampler
    on both (BENCHMARKS.md, "Evaluation in two processes"). ``progress`` (a tqdm bar) is advanced by
    the images drawn.
    """
    chunks = caption_chunks(lists, config)
    done: dict[tuple[str, int], tuple[Tensor, Tensor | None]] = {}
    for name, k, fake, scores in _draw_chunks(pipeline, chunks, config):
        done[name, k] = (fake, scores)
        if progress is not None:
            progress.update(len(fake) * config.candidates)
    out: dict[str, tuple[Tensor, Tensor | None]] = {}
    for name in lists:
        parts = [done[c[0], c[1]] for c in chunks if c[0] == name]
        if not parts:
            continue
        fake = torch.cat([p[0] for p in parts])
        scores = None if parts[0][1] is None else torch.cat([p[1] for p in parts])  # type: ignore[misc]
        out[name] = (fake, scores)
    return out


def _draw_chunks(
    pipeline: TextToImagePipeline, chunks: list[tuple[str, int, list[str], int]], config: EvalConfig
) -> Iterator[tuple[str, int, Tensor, Tensor | None]]:
    if config.workers <= 1 or len(chunks) <= 1:
        for name, k, captions, seed in chunks:
            fake, scores = generate_for_captions(
                pipeline, captions, config, generator=torch.Generator().manual_seed(seed)
            )
            yield name, k, fake, scores
        return
    if pipeline.device.type != "cpu":
        raise ValueError(f"sampling in {config.workers} processes runs on the CPU, not {pipeline.device}")
    try:
        pickle.dumps(pipeline)
    except Exception as e:  # e.g. a quantised prior whose packed weights do not pickle
        raise ValueError(f"sampling in {config.workers} processes needs a pipeline that pickles ({e}); use 1") from e
    pool = sampling_processes(config.workers, _keep, (pipeline, config))
    try:
        yield from pool.map(_draw_chunk, chunks)
    except BrokenProcessPool as e:  # a process died (out of memory, killed): no pool left to wait on
        raise RuntimeError(f"a sampling process stopped unexpectedly ({e}); try fewer --workers") from None
    finally:  # on Ctrl-C the chunks not yet started are dropped, not drawn first
        pool.shutdown(wait=True, cancel_futures=True)


def sampling_processes(workers: int, setup: Callable[..., None], args: tuple) -> ProcessPoolExecutor:
    """``workers`` spawned processes, each on an equal part of the cores, that leave Ctrl-C to this
    process (it ends the pool) and run ``setup(*args)`` (a module-level function) as they start."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn, not fork: a forked child of a process whose OpenMP threads have run can hang in them
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=(threads, setup, args))


def _start(threads: int, setup: Callable[..., None], args: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    when_orphaned(exit_now)  # a parent killed outright never shuts the pool down
    flush_denormals()  # as the `dalle` program does, before torch starts its threads
    torch.set_num_threads(threads)
    setup(*args)


_WORKER: dict[str, Any] = {}  # a sampling process's pipeline and config


def _keep(pipeline: TextToImagePipeline, config: EvalConfig) -> None:
    _WORKER.update(pipeline=pipeline, config=config)


def _draw_chunk(chunk: tuple[str, int, list[str], int]) -> tuple[str, int, Tensor, Tensor | None]:
    name, k, captions, seed = chunk
    generator = torch.Generator().manual_seed(seed)
    fake, scores = generate_for_captions(_WORKER["pipeline"], captions, _WORKER["config"], generator=generator)
    return name, k, fake, scores
