"""Stage 1 training: the dVAE's :class:`TrainTask` (paper §2.1, App. A.2-A.3).

The objective, the negative relaxed evidence lower bound, lives beside the model in
:mod:`dalle_zero.models.dvae_loss`. τ, β and the learning rate follow cosine schedules whose lengths
default to the paper's fractions of the run (τ 150k, β 5k, lr 1.2M of 3M updates), so a short run
anneals in proportion. The Gumbel noise of each sample is drawn from its own seed
(:func:`gumbel_noise`), so a resumed run sees the same noise.

EMA: the paper averages weights with decay 0.999. The shared loop warms the decay up as
``min(decay, (1+n)/(10+n))``, so even a run of a few thousand steps saves an average of the last few
hundred updates rather than one dominated by the random initial weights; set ``loop.ema_decay`` to
None to save the raw final weights.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from dalle_zero.config import Config, check_float, check_int
from dalle_zero.data.sources import has_splits, open_image_text_dataset
from dalle_zero.data.transforms import DVAETransform, ResizeTransform
from dalle_zero.models.dvae import DiscreteVAE, DVAEConfig, map_pixels, sample_gumbel, unmap_pixels
from dalle_zero.models.dvae_loss import codebook_stats, dvae_loss, logit_laplace_nll, nats_to_bits_per_dim
from dalle_zero.training import optim
from dalle_zero.training.loop import LoopConfig, TrainTask
from dalle_zero.training.schedules import cosine_schedule, scaled_length

logger = logging.getLogger(__name__)

PAPER_TOTAL_STEPS = 3_000_000


# ---------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True, kw_only=True)
class DVAETrainConfig(Config):
    """Everything a dVAE run needs besides the model shapes: data, loop, schedules, optimizer.

    A schedule length ``*_steps`` of None means ``round(*_fraction · loop.steps)``.
    """

    model: DVAEConfig = field(default_factory=DVAEConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(batch_size=8, ema_decay=0.999))
    # data
    data: str | None = None  # image folder or WebDataset shards (captions are ignored); `--data` on the CLI
    augment: bool = True  # paper crops (random crop, resize, flip) for training; centre crop if False
    eval_images: int = 256  # held-out images scored by evaluate()
    eval_batch_size: int = 32
    grid_images: int = 16  # originals vs reconstructions in the PNG grid
    # schedules (paper App. A.2)
    lr_start: float = 1e-4
    lr_end: float = 1.25e-6
    lr_fraction: float = 1_200_000 / PAPER_TOTAL_STEPS
    lr_steps: int | None = None
    tau_start: float = 1.0
    tau_end: float = 1.0 / 16
    tau_fraction: float = 150_000 / PAPER_TOTAL_STEPS
    tau_steps: int | None = None
    kl_weight_start: float = 0.0
    kl_weight_end: float = 6.6
    kl_weight_fraction: float = 5_000 / PAPER_TOTAL_STEPS
    kl_weight_steps: int | None = None
    # AdamW (paper App. A.2); weight decay on conv weights only, never biases
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if not isinstance(self.model, DVAEConfig):
            raise ValueError(f"DVAETrainConfig.model must be a DVAEConfig, got {type(self.model).__name__}")
        if not isinstance(self.loop, LoopConfig):
            raise ValueError(f"DVAETrainConfig.loop must be a LoopConfig, got {type(self.loop).__name__}")
        if self.data is not None and not isinstance(self.data, str):
            raise ValueError(f"DVAETrainConfig.data must be a path string or null, got {self.data!r}")
        if not isinstance(self.augment, bool):
            raise ValueError(f"DVAETrainConfig.augment must be true or false, got {self.augment!r}")
        check_int(self, "eval_images", min_value=0)
        check_int(self, "eval_batch_size", min_value=1)
        check_int(self, "grid_images", min_value=0)
        for name in ("lr_start", "lr_end", "tau_start", "tau_end"):
            check_float(self, name, min_value=0.0, strict_min=True)
        for name in ("kl_weight_start", "kl_weight_end", "weight_decay", "adam_eps"):
            check_float(self, name, min_value=0.0)
        for name in ("lr_fraction", "tau_fraction", "kl_weight_fraction"):
            check_float(self, name, min_value=0.0, max_value=1.0)
        for name in ("lr_steps", "tau_steps", "kl_weight_steps"):
            if getattr(self, name) is not None:
                check_int(self, name, min_value=0)
        for name in ("adam_beta1", "adam_beta2"):
            check_float(self, name, min_value=0.0)
            if getattr(self, name) >= 1.0:
                raise ValueError(f"DVAETrainConfig.{name} must be < 1, got {getattr(self, name)}")

    # schedule lengths resolved against the run length
    @property
    def lr_length(self) -> int:
        return scaled_length(self.loop.steps, self.lr_fraction, self.lr_steps)

    @property
    def tau_length(self) -> int:
        return scaled_length(self.loop.steps, self.tau_fraction, self.tau_steps)

    @property
    def kl_weight_length(self) -> int:
        return scaled_length(self.loop.steps, self.kl_weight_fraction, self.kl_weight_steps)

    def lr_at(self, step: int) -> float:
        return cosine_schedule(step, start=self.lr_start, end=self.lr_end, length=self.lr_length)

    def tau_at(self, step: int) -> float:
        return cosine_schedule(step, start=self.tau_start, end=self.tau_end, length=self.tau_length)

    def kl_weight_at(self, step: int) -> float:
        return cosine_schedule(step, start=self.kl_weight_start, end=self.kl_weight_end, length=self.kl_weight_length)


# ---------------------------------------------------------------------------------------------
# figures and noise of a training step


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1]: [B, C, H, W] x2 -> [B]."""
    mse = (reference.float() - estimate.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def gumbel_noise(shape: tuple[int, ...], seeds: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Gumbel(0, 1) noise [B, *shape], sample ``i`` drawn from its own generator seeded by ``seeds[i]``.

    Tying the noise to the per-sample seed the loop's sampler hands out makes it independent of
    batch composition and gradient accumulation, and identical after a resume.
    """
    out = []
    for seed in seeds.tolist():
        g = torch.Generator(device=device).manual_seed((int(seed) * 2654435761 + 97) % (2**63))
        out.append(sample_gumbel(shape, generator=g, device=device))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# the task


class _SeededImages(Dataset):
    """Wraps a dataset of ``{"pixels", ...}`` items keyed by ``(index, seed)``; keeps the pixels and the seed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (int(key), int(key))
        item = self.dataset[(index, seed)]
        return {"pixels": item["pixels"], "seed": torch.tensor(seed, dtype=torch.int64)}


class DVAETask(TrainTask):
    """Trains a :class:`DiscreteVAE` with the paper's relaxed ELB, schedules and AdamW.

    ``train_data`` and ``eval_data`` yield dicts with ``"pixels"`` ([3, H, W] float in [0, 1]) for
    keys ``(index, seed)`` (the :mod:`dalle_zero.data` datasets do; see :func:`build_datasets`);
    ``eval_data`` may be None.
    """

    def __init__(self, config: DVAETrainConfig, *, train_data: Dataset, eval_data: Dataset | None = None) -> None:
        self.config = config
        self.train_data = train_data
        self.eval_data = eval_data

    def train_dataset(self) -> Dataset:
        return _SeededImages(self.train_data)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        return optim.adamw(
            model, lr=c.lr_start, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_eps, weight_decay=c.weight_decay
        )

    def lr_at(self, step: int) -> float:
        return self.config.lr_at(step)

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        assert isinstance(model, DiscreteVAE)
        device = next(model.parameters()).device
        pixels = batch["pixels"].to(device)  # (B, C, H, W)
        tau, beta = self.config.tau_at(step), self.config.kl_weight_at(step)
        f = model.config.downsample_factor
        noise = gumbel_noise(
            (model.config.vocab_size, pixels.shape[2] // f, pixels.shape[3] // f), batch["seed"], device
        )
        out = model(pixels, tau=tau, gumbel=noise)  # noise: (B, V, h, w)
        terms = dvae_loss(pixels, out.logits, out.mu, out.log_b, beta)
        with torch.no_grad():
            recon = unmap_pixels(torch.sigmoid(out.mu))
            perplexity, usage, _ = codebook_stats(out.logits.argmax(1), model.config.vocab_size)
            nll = terms.nll.item()
            metrics = {
                "recon_nll": nll,
                "recon_bpd": nats_to_bits_per_dim(nll),
                "kl": terms.kl.item(),
                "tau": tau,
                "kl_weight": beta,
                "psnr": psnr(pixels, recon).mean().item(),
                "perplexity": perplexity,
                "code_usage": usage,
            }
        return terms.loss, metrics

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        """Hard-code round trip on held-out images: PSNR, NLL, codebook perplexity/usage, PNG grid."""
        if self.eval_data is None or self.config.eval_images == 0:
            return {}
        assert isinstance(model, DiscreteVAE)
        return evaluate_reconstruction(
            model,
            self.eval_data,
            n_images=self.config.eval_images,
            batch_size=self.config.eval_batch_size,
            grid_images=self.config.grid_images,
            grid_path=Path(run_dir) / "samples" / f"dvae_recon_step_{step:07d}.png",
        )


def build_model(config: DVAETrainConfig) -> DiscreteVAE:
    """A freshly initialised dVAE, seeded by ``loop.seed`` alone: the same weights in any process,
    whatever torch's global RNG has drawn before (the global stream is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.loop.seed)
        return DiscreteVAE(config.model)


def build_datasets(config: DVAETrainConfig) -> tuple[Dataset, Dataset | None, str]:
    """(train images, held-out images, description) from ``config.data``, an image folder or shards.

    Training images get the paper's crops (:class:`~dalle_zero.data.transforms.DVAETransform`) when
    ``config.augment``, evaluation images a deterministic resize. With ``splits.json`` the dVAE trains on
    "train" and is evaluated on "validation"; without it, it trains on every image and evaluates on the
    first ``eval_images`` of them (not held out).
    """
    if config.data is None:
        raise ValueError("DVAETrainConfig.data: no image folder or shards given")
    data = config.data
    size = config.model.image_size
    train_view = DVAETransform(resolution=size) if config.augment else ResizeTransform(resolution=size)
    eval_view = ResizeTransform(resolution=size)
    if has_splits(data):
        train_data = open_image_text_dataset(data, train_view, split="train")
        eval_data = open_image_text_dataset(data, eval_view, split="validation")
        note = "train split; evaluation on the validation split"
    else:
        train_data = open_image_text_dataset(data, train_view)
        eval_data = train_data.with_transform(eval_view)  # indexed (and every image checked) once
        note = "no splits.json: evaluation images are training images"
        logger.warning("%s has no splits.json: evaluating on training images", data)
    return train_data, eval_data, note


@torch.no_grad()
def evaluate_reconstruction(
    model: DiscreteVAE,
    data: Dataset,
    *,
    n_images: int,
    batch_size: int = 32,
    grid_images: int = 16,
    grid_path: Path | None = None,
) -> dict[str, float]:
    """Encode → argmax codes → decode on the first ``n_images`` of ``data`` (keys ``(i, 0)``).

    Returns psnr (dB, mean over images), recon_bpd (NLL of the pixels under the decoder's
    logit-Laplace given the hard codes, bits/dim), perplexity and code_usage of all codes; writes
    originals (odd rows) above reconstructions (even rows) to ``grid_path``.
    """
    device = next(model.parameters()).device
    n = min(n_images, len(data))  # type: ignore[arg-type]
    psnrs, nlls, codes_all, grid_pairs = [], [], [], []
    for lo in range(0, n, batch_size):
        pixels = torch.stack([data[(i, 0)]["pixels"] for i in range(lo, min(n, lo + batch_size))]).to(device)
        codes = model.encode(pixels)  # (B, h, w)
        mu, log_b = model.decode_codes_distribution(codes)
        recon = unmap_pixels(torch.sigmoid(mu))
        psnrs.append(psnr(pixels, recon))
        nlls.append(logit_laplace_nll(map_pixels(pixels), mu, log_b).flatten(1).mean(1))
        codes_all.append(codes.flatten())
        if sum(len(p[0]) for p in grid_pairs) < grid_images:
            grid_pairs.append((pixels.cpu(), recon.cpu()))
    if n == 0:
        return {}
    perplexity, usage, _ = codebook_stats(torch.cat(codes_all), model.config.vocab_size)
    if grid_path is not None and grid_images > 0:
        originals = torch.cat([p[0] for p in grid_pairs])[:grid_images]
        recons = torch.cat([p[1] for p in grid_pairs])[:grid_images]
        save_comparison_grid(originals, recons, grid_path)
    return {
        "psnr": torch.cat(psnrs).mean().item(),
        "recon_bpd": nats_to_bits_per_dim(torch.cat(nlls).mean().item()),
        "perplexity": perplexity,
        "code_usage": usage,
    }


def save_comparison_grid(
    originals: torch.Tensor, recons: torch.Tensor, path: Path, *, per_row: int = 8, min_cell: int = 64
) -> Path:
    """Write a PNG: rows of originals, each followed by a row of their reconstructions.

    originals, recons: [N, 3, H, W] in [0, 1]. Cells smaller than ``min_cell`` px are enlarged with
    nearest-neighbour so tiny images stay visible; 2 px white gutters between cells.
    """
    n, _, h, w = originals.shape
    scale = max(1, math.ceil(min_cell / max(h, w)))
    ch, cw, gap = h * scale, w * scale, 2
    cols = min(per_row, n)
    row_pairs = math.ceil(n / cols)
    canvas = torch.ones(3, 2 * row_pairs * (ch + gap) + gap, cols * (cw + gap) + gap)
    for i in range(n):
        r, c = divmod(i, cols)
        for k, img in enumerate((originals[i], recons[i])):
            big = img.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
            y, x = gap + (2 * r + k) * (ch + gap), gap + c * (cw + gap)
            canvas[:, y : y + ch, x : x + cw] = big
    array = (canvas.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)
    return path
