"""Text to image: tokenizer + prior + dVAE decoder (+ contrastive reranker) as one model (paper §2, §2.6).

``TextToImagePipeline(tokenizer, dvae, transformer, clip=None)`` turns captions into images:

1. the caption is BPE-encoded to ``text_seq_len`` ids (lower-cased; an over-long caption keeps its
   first tokens, with a warning; a caption with no text left after normalisation is refused,
   :meth:`~TextToImagePipeline.check_caption`);
2. ``candidates`` image-token grids per caption are sampled from the prior
   (:func:`~dalle_zero.sampling.generate.generate_image_tokens`), optionally primed with the top
   ``prime_rows`` rows of an encoded image (image-to-image, paper §3.3);
3. the dVAE decodes each grid to pixels (paper §2.6: one-hot codes -> decoder -> sigmoid -> unmap);
4. with a CLIP reranker the candidates are scored against the caption and the best ``n`` kept,
   best first (paper §2.6: best of 512).

Images are returned as float tensors ``[n, 3, H, W]`` in [0, 1] per caption (H, W: the dVAE's
``image_size``); :func:`to_pil` converts them. Randomness comes from one ``torch.Generator`` seeded with
``seed``: the same seed, settings and ``batch_size`` give the same images. For many captions at once
(an evaluation, a benchmark), :meth:`~TextToImagePipeline.generate_batch` shares sampling batches
between captions and draws from a generator the caller passes.

A pipeline saves as one folder (docs/sampling.md; read by :mod:`dalle_zero.pipelines.folder`):
``pipeline.json`` naming the components, and the sub-folders ``tokenizer/``, ``dvae/``, ``transformer/``
and (optionally) ``clip/``, written atomically.
Components that do not fit together (text vocabulary or length, image vocabulary or grid) are
refused with both values in the message.

A model only draws what its training captions taught it, and nothing in a free-text box says what
that is. So a pipeline may carry ``examples`` (captions that show its caption language, saved as
``examples.json``, a JSON list of strings), and :meth:`~TextToImagePipeline.caption_warning` flags a
caption most of whose words the training captions never contained (:mod:`~dalle_zero.pipelines.captions`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dalle_zero.data.images import image_pixels
from dalle_zero.io import FORMAT_VERSION, atomic_directory
from dalle_zero.models.clip import DalleCLIP
from dalle_zero.models.dvae import DiscreteVAE
from dalle_zero.models.transformer import DalleTransformer
from dalle_zero.pipelines.captions import caption_warning, check_caption, encode_captions
from dalle_zero.pipelines.folder import (
    EXAMPLES_NAME,
    PIPELINE_NAME,
    check_examples,
    read_examples,
    read_pipeline_json,
    resolve_component_dir,
)
from dalle_zero.pipelines.outputs import BatchOutput, GenerationOutput, to_pil
from dalle_zero.pipelines.sampling_defaults import (
    SAMPLING_NAME,
    SamplingDefaults,
    read_sampling_defaults,
    sampling_json,
)
from dalle_zero.sampling.generate import generate_image_tokens
from dalle_zero.sampling.rerank import rerank
from dalle_zero.tokenizers.bpe import BPETokenizer

__all__ = ["EXAMPLES_NAME", "PIPELINE_NAME", "BatchOutput", "GenerationOutput", "TextToImagePipeline",
           "check_components", "read_examples", "read_pipeline_json", "resolve_component_dir",
           "to_pil"]  # folder names and outputs kept importable from here too

def check_components(
    tokenizer: BPETokenizer, dvae: DiscreteVAE, transformer: DalleTransformer, clip: DalleCLIP | None = None
) -> None:
    """Raise ValueError naming both values if the components cannot work together."""
    t = transformer.config
    pairs = [
        ("tokenizer vocab_size", tokenizer.vocab_size, "transformer text_vocab_size", t.text_vocab_size),
        ("tokenizer text_seq_len", tokenizer.text_seq_len, "transformer text_seq_len", t.text_seq_len),
        ("dVAE vocab_size", dvae.config.vocab_size, "transformer image_vocab_size", t.image_vocab_size),
        ("dVAE grid_size", dvae.config.grid_size, "transformer image_grid", t.image_grid),
    ]
    if clip is not None:
        pairs.append(
            ("tokenizer vocab_size", tokenizer.vocab_size, "CLIP text_vocab_size", clip.config.text_vocab_size)
        )
    for a_name, a, b_name, b in pairs:
        if a != b:
            raise ValueError(f"components do not match: {a_name} is {a} but {b_name} is {b}")


class TextToImagePipeline:
    """Captions -> images with a BPE tokenizer, a dVAE, a DALL-E prior and an optional CLIP reranker.

    ``examples``: captions that show what the model can draw (saved as ``examples.json``).
    ``sampling``: the settings used when a call leaves them unset (saved as ``sampling.json``;
    :mod:`~dalle_zero.pipelines.sampling_defaults`).
    """

    def __init__(
        self,
        tokenizer: BPETokenizer,
        dvae: DiscreteVAE,
        transformer: DalleTransformer,
        clip: DalleCLIP | None = None,
        *,
        examples: Sequence[str] = (),
        sampling: SamplingDefaults | None = None,
    ) -> None:
        check_components(tokenizer, dvae, transformer, clip)
        self.examples = check_examples(examples)
        self.sampling = sampling if sampling is not None else SamplingDefaults()
        self.tokenizer = tokenizer
        self.dvae = dvae.eval()
        self.transformer = transformer.eval()
        self.clip = clip.eval() if clip is not None else None

    def candidates_for(self, n: int) -> int:
        """Samples drawn per caption when ``n`` are kept and the call leaves ``candidates`` unset: the
        folder's recommendation (never fewer than ``n``), or ``n`` without a CLIP to rerank them."""
        return self.sampling.candidates_for(n) if self.clip is not None else n

    @property
    def device(self) -> torch.device:
        return self.transformer.text_head.weight.device

    def to(self, device: torch.device | str) -> TextToImagePipeline:
        """Move every model to ``device`` (in place; returns self)."""
        for m in (self.dvae, self.transformer, self.clip):
            if m is not None:
                m.to(device)
        return self

    def quantize_int8(self) -> TextToImagePipeline:
        """Int8 weight-only transformer blocks for faster CPU sampling, in place (DalleTransformer.quantize_int8)."""
        self.transformer.quantize_int8()
        return self

    # ---- captions and priming ----

    def check_caption(self, caption: str) -> None:
        """Raise ValueError (one line) if ``caption`` leaves no text to condition on
        (:func:`~dalle_zero.pipelines.captions.check_caption`)."""
        check_caption(self.tokenizer, caption)

    def unknown_words(self, caption: str) -> list[str]:
        """Words of ``caption`` that no training caption of the tokenizer contained, each once, in order.

        Empty when the tokenizer records no word list (trained before word lists were recorded).
        """
        return self.tokenizer.unknown_words(caption)

    def caption_warning(self, caption: str) -> str | None:
        """One line if more than half of the words of ``caption`` never appeared in training, else None
        (:func:`~dalle_zero.pipelines.captions.caption_warning`)."""
        return caption_warning(self.tokenizer, caption)

    def encode_captions(self, prompts: list[str]) -> Tensor:
        """Captions -> LongTensor[B, Tt]; captions without text are refused, over-long ones truncated with a warning."""
        return encode_captions(self.tokenizer, prompts)

    def prime_tokens(self, prime_image: str | Path | Tensor | Any, prime_rows: int | None) -> Tensor:
        """The first ``prime_rows`` rows of the dVAE codes of ``prime_image`` -> LongTensor[1, prime_rows · grid].

        ``prime_image``: an image path, a PIL image, or FloatTensor[3, H, W] / [1, 3, H, W] in [0, 1]
        (resized to the dVAE's image_size). ``prime_rows`` defaults to half the grid (the paper
        primes 15 of 32 rows).
        """
        grid, size = self.dvae.config.grid_size, self.dvae.config.image_size
        if prime_rows is None:
            prime_rows = grid // 2
        if isinstance(prime_rows, bool) or not isinstance(prime_rows, int) or not 0 <= prime_rows <= grid:
            raise ValueError(
                f"prime_rows must be an integer in [0, {grid}] (the token grid is {grid}), got {prime_rows!r}"
            )
        pixels = image_pixels(prime_image, size, name="prime_image")  # (1, 3, size, size)
        dvae_device = next(self.dvae.parameters()).device
        codes = self.dvae.encode(pixels.to(dvae_device))  # (1, grid, grid)
        return codes[:, :prime_rows].reshape(1, -1)

    # ---- generation ----

    def __call__(
        self,
        prompt: str | list[str],
        n: int = 4,
        *,
        candidates: int | None = None,
        seed: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
        guidance_top_p: float | None = None,
        prime_image: str | Path | Tensor | Any | None = None,
        prime_rows: int | None = None,
        batch_size: int = 8,
        progress: bool | Callable[[int, int], Any] = False,
    ) -> GenerationOutput:
        """Generate ``n`` images per caption (the best ``n`` of ``candidates`` when a CLIP is present).

        ``candidates``, ``temperature``, ``guidance_scale`` and ``guidance_top_p`` left as None take the
        folder's recommended settings (``self.sampling``); ``guidance_top_p=1`` is plain guidance.
        One caption is sampled at a time; :meth:`generate_batch` shares batches between captions.
        ``progress``: a tqdm bar if True, or a callable ``(done, total)`` called after every token step
        with the steps of the whole call; an exception it raises stops the sampling and propagates
        (how a caller cancels a call in progress).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a caption string or a non-empty list of strings")
        m = self._check_counts(n, candidates, batch_size)
        if prime_image is None and prime_rows is not None:
            raise ValueError("prime_rows needs a prime_image")
        settings = self._settings(temperature, top_k, top_p, guidance_scale, guidance_top_p)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        generator = torch.Generator().manual_seed(int(seed))

        text_ids = self.encode_captions(prompts)  # (P, Tt)
        prime = None if prime_image is None else self.prime_tokens(prime_image, prime_rows)  # (1, n_prime)
        grid = self.transformer.config.image_grid
        n_tokens = grid * grid - (0 if prime is None else prime.shape[1])
        n_batches = sum(-(-m // batch_size) for _ in prompts)
        total = n_batches * n_tokens
        report = progress if callable(progress) else None
        bar = tqdm(total=total, unit="token", desc="sampling", dynamic_ncols=True) if progress and not report else None
        steps = itertools.count(1)

        def on_token(_done: int, _total: int) -> None:  # counts the steps of the whole call, not of a batch
            if bar is not None:
                bar.update(1)
            if report is not None:
                report(next(steps), total)

        images, codes, scores = [], [], []
        try:
            for i, caption in enumerate(prompts):
                rows = text_ids[i : i + 1].expand(m, -1)
                grid_codes = torch.cat(list(self._sample(rows, batch_size, generator, settings, prime, on_token)))
                pixels = self.decode(grid_codes)  # (m, 3, H, W)
                score = None
                if self.clip is not None:
                    pixels, grid_codes, score = self._best_of(caption, pixels, grid_codes, n)
                images.append(pixels)
                codes.append(grid_codes.cpu())
                scores.append(score)
        finally:
            if bar is not None:
                bar.close()
        return GenerationOutput(prompts=prompts, images=images, codes=codes, scores=scores, seed=int(seed))

    @torch.no_grad()
    def generate_batch(
        self,
        captions: Sequence[str],
        n: int = 1,
        *,
        candidates: int | None = None,
        generator: torch.Generator,
        batch_size: int = 8,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
        guidance_top_p: float | None = None,
        progress: Callable[[int], Any] | None = None,
    ) -> BatchOutput:
        """``n`` images for each of many captions, the candidates of all captions sharing sampling batches.

        What an evaluation or a benchmark draws: with few candidates per caption, one caption at a time
        (as a call does) leaves most of each batch empty. ``candidates`` samples are drawn per caption
        (None: as a call draws, ``self.sampling``); the ``candidates · len(captions)`` sequences, the
        samples of one caption adjacent, are sampled ``batch_size`` at a time and each batch decoded.
        With ``candidates > n`` the CLIP reranker keeps the best ``n`` of each caption, best first, and
        ``scores`` holds their scores; with ``candidates == n`` every sample is kept, in the order drawn,
        and ``scores`` is None.

        All randomness comes from ``generator``, which the call advances: the same generator state,
        captions, settings and ``batch_size`` give the same images, and lists drawn in turn from one
        generator continue one stream. Sampling settings left as None take the folder's
        (``self.sampling``), as in a call. ``progress`` is called with the number of sequences each
        sampling batch drew (e.g. a tqdm bar's ``update``). Over-long captions are cut to ``text_seq_len``
        tokens with one line at INFO level for them all, not a warning each.
        """
        captions = list(captions)
        if not captions or not all(isinstance(c, str) for c in captions):
            raise ValueError("captions must be a non-empty list of strings")
        m = self._check_counts(n, candidates, batch_size)
        settings = self._settings(temperature, top_k, top_p, guidance_scale, guidance_top_p)
        rows = encode_captions(self.tokenizer, captions, warn=False).repeat_interleave(m, dim=0)  # (N·m, Tt)
        codes, pixels = [], []
        for batch_codes in self._sample(rows, batch_size, generator, settings):
            codes.append(batch_codes.cpu())
            pixels.append(self.decode(batch_codes))  # decoded batch by batch, as the batches are drawn
            if progress is not None:
                progress(len(batch_codes))
        all_codes, all_pixels = torch.cat(codes), torch.cat(pixels)  # (N·m, h, w), (N·m, 3, H, W)
        if m == n:
            return BatchOutput(images=all_pixels.unflatten(0, (len(captions), m)),
                               codes=all_codes.unflatten(0, (len(captions), m)), scores=None)
        best = [
            self._best_of(caption, all_pixels[i * m : (i + 1) * m], all_codes[i * m : (i + 1) * m], n)
            for i, caption in enumerate(captions)
        ]
        return BatchOutput(*(torch.stack(part) for part in zip(*best)))

    def _check_counts(self, n: int, candidates: int | None, batch_size: int) -> int:
        """Check the counts of a call; return the number of candidates to draw per caption."""
        for name, value in (("n", n), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        m = self.candidates_for(n) if candidates is None else candidates
        if isinstance(m, bool) or not isinstance(m, int) or m < n:
            raise ValueError(f"candidates must be an integer >= n ({n}), got {candidates!r}")
        if m > n and self.clip is None:
            raise ValueError(f"candidates={m} > n={n} needs a CLIP reranker, and this pipeline has none")
        return m

    def _settings(self, temperature: float | None, top_k: int | None, top_p: float | None,
                  guidance_scale: float | None, guidance_top_p: float | None) -> dict[str, Any]:
        """The sampling keywords of :func:`generate_image_tokens`, the folder's where a call left None."""
        s = self.sampling
        return {
            "temperature": s.temperature if temperature is None else temperature,
            "top_k": top_k,
            "top_p": top_p,
            "guidance_scale": s.guidance_scale if guidance_scale is None else guidance_scale,
            "guidance_top_p": s.guidance_top_p if guidance_top_p is None else guidance_top_p,
        }

    def _sample(self, rows: Tensor, batch_size: int, generator: torch.Generator, settings: dict[str, Any],
                prime: Tensor | None = None, on_token: Any = False) -> Iterator[Tensor]:
        """Image-token grids ``long[b, h, w]`` for the caption rows ``long[R, Tt]``, ``batch_size`` rows
        at a time, in order; ``prime``: ``long[1, n_prime]`` tokens every row starts with."""
        grid = self.transformer.config.image_grid
        for lo in range(0, len(rows), batch_size):
            ids = rows[lo : lo + batch_size].to(self.device)
            tokens = generate_image_tokens(
                self.transformer,
                ids,
                generator=generator,
                prime_tokens=None if prime is None else prime.expand(len(ids), -1),
                progress=on_token,
                **settings,
            )
            yield tokens.view(len(ids), grid, grid)

    def _best_of(self, caption: str, pixels: Tensor, codes: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """The reranker's best ``n`` of one caption's candidates, best first: images, codes, scores."""
        assert self.clip is not None
        scores, order = rerank(self.clip, self.tokenizer, caption, pixels, top=n)
        return pixels[order], codes[order.to(codes.device)], scores[order]

    @torch.inference_mode()
    def decode(self, codes: Tensor, chunk: int = 64) -> Tensor:
        """Image-token grids ``long[N, h, w]`` (from the prior, or from ``self.dvae.encode``) -> images
        ``float[N, 3, H, W]`` in [0, 1] on the CPU, decoded ``chunk`` at a time by the dVAE."""
        device = next(self.dvae.parameters()).device
        return torch.cat([self.dvae.decode(c.to(device)).cpu() for c in codes.split(chunk)])

    # ---- save / load ----

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``pipeline.json``, one sub-folder per component and (with examples) ``examples.json``
        to ``folder`` atomically."""
        folder = Path(folder)
        parts = {"tokenizer": self.tokenizer, "dvae": self.dvae, "transformer": self.transformer, "clip": self.clip}
        with atomic_directory(folder) as tmp:
            for name, part in parts.items():
                if part is not None:
                    part.save_pretrained(tmp / name)
            meta = {
                "model_type": "pipeline",
                "format_version": FORMAT_VERSION,
                "pipeline_class": type(self).__name__,
                "components": {name: (name if part is not None else None) for name, part in parts.items()},
            }
            (tmp / PIPELINE_NAME).write_text(json.dumps(meta, indent=2) + "\n")
            if self.examples:
                (tmp / EXAMPLES_NAME).write_text(json.dumps(self.examples, indent=2) + "\n")
            if self.sampling != SamplingDefaults():
                (tmp / SAMPLING_NAME).write_text(sampling_json(self.sampling))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, map_location: str | torch.device = "cpu") -> TextToImagePipeline:
        folder = Path(folder)
        components = read_pipeline_json(folder)
        tokenizer = BPETokenizer.from_pretrained(folder / components["tokenizer"])
        dvae = DiscreteVAE.from_pretrained(folder / components["dvae"], map_location=map_location)
        transformer = DalleTransformer.from_pretrained(folder / components["transformer"], map_location=map_location)
        clip = None
        if components.get("clip"):
            clip = DalleCLIP.from_pretrained(folder / components["clip"], map_location=map_location)
        examples = read_examples(folder)
        sampling = read_sampling_defaults(folder)
        try:
            return cls(tokenizer, dvae, transformer, clip, examples=examples, sampling=sampling)
        except ValueError as e:
            raise ValueError(f"{folder}: {e}") from None
