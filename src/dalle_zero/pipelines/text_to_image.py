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
``seed``: the same seed, settings and ``batch_size`` give the same images.

A pipeline saves as one folder (docs/sampling.md; read by :mod:`dalle_zero.pipelines.folder`):
``pipeline.json`` naming the components, and the sub-folders ``tokenizer/``, ``dvae/``, ``transformer/``
and (optionally) ``clip/``, written atomically.
Components that do not fit together (text vocabulary or length, image vocabulary or grid) are
refused with both values in the message.

A model only draws what its training captions taught it, and nothing in a free-text box says what
that is. So a pipeline may carry ``examples`` (captions that show its caption language, saved as
``examples.json``, a JSON list of strings), and :meth:`~TextToImagePipeline.caption_warning` flags a
caption most of whose words the training captions never contained (the tokenizer's word list,
:meth:`~dalle_zero.tokenizers.bpe.BPETokenizer.unknown_words`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dalle_zero.data.images import load_square_image, square_pixels
from dalle_zero.io import FORMAT_VERSION, atomic_directory
from dalle_zero.models.clip import DalleCLIP
from dalle_zero.models.dvae import DiscreteVAE
from dalle_zero.models.transformer import DalleTransformer
from dalle_zero.pipelines.folder import (
    EXAMPLES_NAME,
    PIPELINE_NAME,
    check_examples,
    read_examples,
    read_pipeline_json,
    resolve_component_dir,
)
from dalle_zero.pipelines.sampling_defaults import (
    SAMPLING_NAME,
    SamplingDefaults,
    read_sampling_defaults,
    sampling_json,
)
from dalle_zero.sampling.generate import generate_image_tokens
from dalle_zero.sampling.rerank import rerank
from dalle_zero.tokenizers.bpe import BPETokenizer, caption_words

__all__ = ["EXAMPLES_NAME", "PIPELINE_NAME", "GenerationOutput", "TextToImagePipeline", "check_components",
           "read_examples", "read_pipeline_json", "resolve_component_dir", "to_pil"]  # folder names kept here too

logger = logging.getLogger(__name__)

MAX_WORDS_NAMED = 10  # a caption warning names at most this many unseen words


@dataclass(frozen=True)
class GenerationOutput:
    """What :class:`TextToImagePipeline` returns; one entry per caption, in input order.

    - ``images[i]``: FloatTensor[n, 3, H, W] in [0, 1] (best first when reranked);
    - ``codes[i]``: LongTensor[n, h, w], the dVAE codes of those images;
    - ``scores[i]``: FloatTensor[n] reranker cosine similarities (descending), or None without CLIP;
    - ``seed``: the seed actually used (drawn from torch's global generator when none was given).
    """

    prompts: list[str]
    images: list[Tensor]
    codes: list[Tensor]
    scores: list[Tensor | None]
    seed: int

    def pil_images(self) -> list[list[Any]]:
        """The images as PIL images, per caption."""
        return [to_pil(batch) for batch in self.images]


def to_pil(images: Tensor) -> list[Any]:
    """FloatTensor[N, 3, H, W] in [0, 1] -> N RGB ``PIL.Image.Image``."""
    from PIL import Image

    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, mode="RGB") for a in arr]


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


def _no_text_message(caption: str) -> str:
    if not caption.strip():
        return f"caption {caption!r} is empty: give some text to draw"
    return (
        f"caption {caption[:60]!r} has no text to draw: normalisation drops all of its characters "
        "(control or formatting characters); give some words"
    )


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
        """Raise ValueError (one line) if ``caption`` leaves no text to condition on: blank, or made only
        of characters the normalisation drops (:func:`~dalle_zero.tokenizers.bpe.normalize_caption`)."""
        if not isinstance(caption, str):
            raise ValueError(f"a caption must be a string, got {type(caption).__name__}")
        if not self.tokenizer.tokenize([caption])[0]:
            raise ValueError(_no_text_message(caption))

    def unknown_words(self, caption: str) -> list[str]:
        """Words of ``caption`` that no training caption of the tokenizer contained, each once, in order.

        Empty when the tokenizer records no word list (trained before word lists were recorded).
        """
        return self.tokenizer.unknown_words(caption)

    def caption_warning(self, caption: str) -> str | None:
        """One line if more than half of the words of ``caption`` never appeared in training, else None.

        The prior has never seen those words (byte-level BPE encodes them anyway), so the images
        follow the few words it knows, or none. None as well without the tokenizer's word list.
        """
        unknown = self.unknown_words(caption)
        if not unknown:
            return None
        words, unseen = caption_words(caption), set(unknown)
        n_unknown = sum(w in unseen for w in words)  # with repeats: "zebra zebra" counts twice
        if 2 * n_unknown <= len(words):
            return None
        named = ", ".join(f'"{w}"' for w in unknown[:MAX_WORDS_NAMED])
        if len(unknown) > MAX_WORDS_NAMED:
            named += f" and {len(unknown) - MAX_WORDS_NAMED} more"
        return (
            f"most words of this caption never appeared in training: {named}; "
            "the model draws only what its captions taught it"
        )

    def encode_captions(self, prompts: list[str]) -> Tensor:
        """Captions -> LongTensor[B, Tt]; captions without text are refused, over-long ones truncated with a warning."""
        lengths = [len(ids) for ids in self.tokenizer.tokenize(prompts)]
        for prompt, n in zip(prompts, lengths):
            if n == 0:
                raise ValueError(_no_text_message(prompt))
            if n > self.tokenizer.text_seq_len:
                logger.warning(
                    "caption %r has %d tokens; only the first %d (text_seq_len) are used",
                    prompt[:60],
                    n,
                    self.tokenizer.text_seq_len,
                )
        return self.tokenizer.encode(prompts)

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
        if isinstance(prime_image, (str, Path)):
            pixels = load_square_image(prime_image, size)
        elif isinstance(prime_image, Tensor):
            pixels = prime_image.unsqueeze(0) if prime_image.dim() == 3 else prime_image
            if pixels.dim() != 4 or pixels.shape[:2] != (1, 3) or not pixels.is_floating_point():
                raise ValueError(
                    f"prime_image tensor must be float [3, H, W] in [0, 1], got {tuple(prime_image.shape)}"
                )
            if pixels.shape[-2:] != (size, size):
                pixels = torch.nn.functional.interpolate(
                    pixels.float(), size=(size, size), mode="bilinear", antialias=True
                ).clamp(0, 1)
        else:
            pixels = square_pixels(prime_image, size)
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
        progress: bool = False,
    ) -> GenerationOutput:
        """Generate ``n`` images per caption (the best ``n`` of ``candidates`` when a CLIP is present).

        ``candidates``, ``temperature``, ``guidance_scale`` and ``guidance_top_p`` left as None take the
        folder's recommended settings (``self.sampling``); ``guidance_top_p=1`` is plain guidance.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a caption string or a non-empty list of strings")
        for name, value in (("n", n), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if candidates is None:
            candidates = self.candidates_for(n)
        temperature = self.sampling.temperature if temperature is None else temperature
        guidance_scale = self.sampling.guidance_scale if guidance_scale is None else guidance_scale
        guidance_top_p = self.sampling.guidance_top_p if guidance_top_p is None else guidance_top_p
        m = candidates
        if isinstance(m, bool) or not isinstance(m, int) or m < n:
            raise ValueError(f"candidates must be an integer >= n ({n}), got {candidates!r}")
        if m > n and self.clip is None:
            raise ValueError(f"candidates={m} > n={n} needs a CLIP reranker, and this pipeline has none")
        if prime_image is None and prime_rows is not None:
            raise ValueError("prime_rows needs a prime_image")
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        generator = torch.Generator().manual_seed(int(seed))

        text_ids = self.encode_captions(prompts)  # (P, Tt)
        prime = None if prime_image is None else self.prime_tokens(prime_image, prime_rows)  # (1, n_prime)
        grid = self.transformer.config.image_grid
        n_tokens = grid * grid - (0 if prime is None else prime.shape[1])
        n_batches = sum(-(-m // batch_size) for _ in prompts)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_batches * n_tokens, unit="token", desc="sampling", dynamic_ncols=True)

        images, codes, scores = [], [], []
        try:
            for i, caption in enumerate(prompts):
                grids = []
                for start in range(0, m, batch_size):
                    bsz = min(batch_size, m - start)
                    tokens = generate_image_tokens(
                        self.transformer,
                        text_ids[i : i + 1].expand(bsz, -1),
                        generator=generator,
                        temperature=temperature,
                        top_k=top_k,
                        top_p=top_p,
                        guidance_scale=guidance_scale,
                        guidance_top_p=guidance_top_p,
                        prime_tokens=None if prime is None else prime.expand(bsz, -1),
                        progress=(lambda done, total: bar.update(1)) if bar is not None else False,
                    )
                    grids.append(tokens.view(bsz, grid, grid))
                grid_codes = torch.cat(grids)  # (m, h, w)
                pixels = self.decode(grid_codes)  # (m, 3, H, W)
                score = None
                if self.clip is not None:
                    all_scores, order = rerank(self.clip, self.tokenizer, caption, pixels, top=n)
                    pixels, grid_codes, score = (
                        pixels[order],
                        grid_codes[order.to(grid_codes.device)],
                        all_scores[order],
                    )
                images.append(pixels)
                codes.append(grid_codes.cpu())
                scores.append(score)
        finally:
            if bar is not None:
                bar.close()
        return GenerationOutput(prompts=prompts, images=images, codes=codes, scores=scores, seed=int(seed))

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
