"""Stage 2 training: the transformer prior on pre-encoded tokens (paper §2.2, App. B.2).

The prior reads token shards written once by ``dalle encode`` (image codes + captions) and never
runs the dVAE. Each training example is ``(text_ids [Tt], image_ids [Ti])``:

- the caption is tokenised with BPE dropout (p = 0.1 in the paper, §2.2 fn 5), seeded from the
  sampler's per-sample seed so that a resumed run draws the same tokens as an uninterrupted one;
- with tokens of K views per image (``dalle encode --augment K``: the plain resize and K - 1 of the
  paper's Listing 2 crops), the image is one of them, drawn from the same seed
  (:class:`~dalle_zero.data.tokens.TokenDataset`); validation reads the plain one;
- with probability ``null_caption_prob`` the caption is replaced by the empty caption (all pads).
  The paper does not do this; it lets the same model serve as the unconditional model of
  classifier-free guidance at sampling time (Ho & Salimans 2022). Set it to 0 for the paper's recipe.

Loss (§3.4): ``1/8 · CE_text + 7/8 · CE_image`` (the transformer's ``loss``), both parts logged.
Optimisation (§3.5): AdamW (0.9, 0.96, 1e-8), weight decay 4.5e-2 on matrices only, gradient
clipping at norm 4, EMA of the weights (decay 0.99 every 25 updates), and a learning rate that warms
up linearly and then halves on plateaus of the smoothed training loss (:class:`PlateauHalving`, whose
state is saved in every checkpoint) or, as an option, follows a cosine. On a dataset read many times
over, ``plateau_on="validation"`` halves on plateaus of the held-out loss instead: the training loss
goes on falling there while the model memorises its captions. bf16 autocast, activation checkpointing
and gradient accumulation are the shared loop's options (``LoopConfig``).
``evaluate`` scores the held-out split: the text and image losses and bits per image token.
The data (token shards as training pairs, their splits and checks) is :mod:`~dalle_zero.training.prior_data`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from dalle_zero.config import Config, check_choice, check_float, check_int
from dalle_zero.data.tokens import TokenDataset
from dalle_zero.models.transformer import DalleTransformer, TransformerConfig
from dalle_zero.tokenizers.bpe import BPETokenizer
from dalle_zero.training import optim
from dalle_zero.training.loop import LoopConfig, TrainTask
from dalle_zero.training.prior_data import (  # data_model_fields and PriorDataset are imported from here too
    PriorDataset,
    check_compatible,
    data_model_fields,
    spared_words,
    split_indices,
    token_shape,
)
from dalle_zero.training.schedules import PlateauHalving, warmup_cosine

__all__ = [
    "PriorDataset", "PriorTask", "PriorTrainConfig", "build_model", "check_compatible", "data_model_fields",
    "evaluate_prior", "make_optimizer", "split_indices", "token_shape",
]

logger = logging.getLogger(__name__)

PAPER_WARMUP_STEPS = 5_000


@dataclass(frozen=True, kw_only=True)
class PriorTrainConfig(Config):
    """Everything a prior run needs besides the model shapes. Paper values are the defaults."""

    model: TransformerConfig
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(batch_size=8, clip_grad_norm=4.0, ema_decay=0.99, ema_every=25)
    )
    tokens: str | None = None  # token shard folder written by `dalle encode`
    tokenizer: str | None = None  # BPE tokenizer folder
    train_split: str | None = "train"  # None: every item of the shards
    val_split: str | None = "validation"  # None or missing in the shards: no validation
    # AdamW (paper App. B.2)
    lr: float = 4.5e-4
    betas: tuple[float, float] = (0.9, 0.96)
    eps: float = 1e-8
    weight_decay: float = 4.5e-2  # matrices only (training/optim.py)
    # learning-rate schedule
    warmup_steps: int | None = None  # None: min(5000 (paper), 5% of loop.steps)
    lr_schedule: str = "plateau"  # "plateau" (paper) | "cosine"
    plateau_on: str = "train"  # the loss watched for plateaus: "train" (paper) | "validation" (at evaluations)
    plateau_patience: int = 250  # updates without improvement of the watched loss before halving
    plateau_threshold: float = 1e-3  # relative improvement that counts
    plateau_smoothing: float = 0.98  # EMA factor of the training loss
    max_halvings: int = 5  # paper: five halvings, final lr = peak / 32
    cosine_final_fraction: float = 1 / 32  # cosine ends where the paper's halvings end
    # text conditioning
    bpe_dropout: float = 0.1
    # a field of the token folder's metadata.jsonl (e.g. "name") whose words BPE dropout leaves whole,
    # and words it always leaves whole
    bpe_dropout_spares: str | None = None
    bpe_dropout_spared_words: tuple[str, ...] = ()
    null_caption_prob: float = 0.1  # not in the paper: trains the unconditional model for guidance
    # validation
    eval_samples: int = 512  # at most this many held-out items per evaluation
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.model, TransformerConfig):
            raise ValueError(
                f"PriorTrainConfig.model must be a TransformerConfig, got {type(self.model).__name__}"
            )
        if not isinstance(self.loop, LoopConfig):
            raise ValueError(f"PriorTrainConfig.loop must be a LoopConfig, got {type(self.loop).__name__}")
        for name in ("tokens", "tokenizer", "train_split", "val_split", "bpe_dropout_spares"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"PriorTrainConfig.{name} must be a string or null, got {value!r}")
        check_float(self, "lr", min_value=0.0, strict_min=True)
        check_float(self, "eps", min_value=0.0)
        check_float(self, "weight_decay", min_value=0.0)
        if (
            not isinstance(self.betas, tuple)
            or len(self.betas) != 2
            or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas)
        ):
            raise ValueError(f"PriorTrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.warmup_steps is not None:
            check_int(self, "warmup_steps", min_value=0)
        if not isinstance(self.bpe_dropout_spared_words, tuple) or not all(
            isinstance(w, str) and w.strip() for w in self.bpe_dropout_spared_words
        ):
            words = self.bpe_dropout_spared_words
            raise ValueError(f"PriorTrainConfig.bpe_dropout_spared_words must be a list of words, got {words!r}")
        check_choice(self, "lr_schedule", ("plateau", "cosine"))
        check_choice(self, "plateau_on", ("train", "validation"))
        if self.lr_schedule == "plateau" and self.plateau_on == "validation" and not self.loop.eval_every:
            raise ValueError(
                "PriorTrainConfig.plateau_on 'validation' needs loop.eval_every > 0: the held-out loss is "
                "read at evaluations"
            )
        check_int(self, "plateau_patience", min_value=1)
        check_int(self, "max_halvings", min_value=0)
        for name in ("plateau_threshold", "plateau_smoothing", "bpe_dropout", "null_caption_prob"):
            check_float(self, name, min_value=0.0, max_value=1.0)
            if getattr(self, name) >= 1.0:
                raise ValueError(f"PriorTrainConfig.{name} must be < 1, got {getattr(self, name)}")
        check_float(self, "cosine_final_fraction", min_value=0.0, max_value=1.0)
        check_int(self, "eval_samples", min_value=0)
        check_int(self, "eval_batch_size", min_value=1)

    @property
    def resolved_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(PAPER_WARMUP_STEPS, round(0.05 * self.loop.steps))


class PriorTask(TrainTask):
    """Stage 2 for the shared loop. ``tokens`` and ``tokenizer`` are loaded once and reused."""

    def __init__(
        self,
        cfg: PriorTrainConfig,
        *,
        tokens_dir: str | Path | None = None,
        tokenizer: BPETokenizer | None = None,
    ) -> None:
        self.cfg = cfg
        tokens_dir = tokens_dir if tokens_dir is not None else cfg.tokens
        if tokens_dir is None:
            raise ValueError("PriorTrainConfig.tokens is not set: pass the token shard folder (--tokens)")
        if tokenizer is None:
            if cfg.tokenizer is None:
                raise ValueError(
                    "PriorTrainConfig.tokenizer is not set: pass the tokenizer folder (--tokenizer)"
                )
            tokenizer = BPETokenizer.from_pretrained(cfg.tokenizer)
        self.tokens_dir = Path(tokens_dir)
        self.tokenizer = tokenizer
        self.tokens = TokenDataset(self.tokens_dir)  # every split, loaded once
        grid, vocab = token_shape(self.tokens)
        check_compatible(
            cfg.model,
            tokenizer,
            grid,
            vocab,
            tokens=str(self.tokens_dir),
            tokenizer_name=cfg.tokenizer or "the tokenizer",
        )
        self.train_indices, self.val_indices = split_indices(
            self.tokens, cfg.train_split, cfg.val_split, source=str(self.tokens_dir)
        )
        self.spared_words = spared_words(self.tokens_dir, self.tokens.stems, cfg.bpe_dropout_spares)
        self.on_validation = cfg.lr_schedule == "plateau" and cfg.plateau_on == "validation"
        if self.on_validation and (not self.val_indices or cfg.eval_samples == 0):
            raise ValueError(
                f"{self.tokens_dir}: plateau_on 'validation' needs held-out items to evaluate, but split "
                f"{cfg.val_split!r} holds none (or eval_samples is 0); use plateau_on 'train'"
            )
        # the held-out loss is read once per evaluation and is already a mean: patience in evaluations
        patience = -(-cfg.plateau_patience // cfg.loop.eval_every) if self.on_validation else cfg.plateau_patience
        self.schedule = (
            PlateauHalving(
                cfg.lr,
                warmup_steps=cfg.resolved_warmup_steps,
                patience=patience,
                threshold=cfg.plateau_threshold,
                smoothing=0.0 if self.on_validation else cfg.plateau_smoothing,
                max_halvings=cfg.max_halvings,
            )
            if cfg.lr_schedule == "plateau"
            else None
        )

    # ---- TrainTask ----

    def train_dataset(self) -> Dataset:
        return PriorDataset(
            self.tokens,
            self.tokenizer,
            bpe_dropout=self.cfg.bpe_dropout,
            null_caption_prob=self.cfg.null_caption_prob,
            indices=self.train_indices,
            spared_words=self.spared_words,
            always_whole=self.cfg.bpe_dropout_spared_words,
        )

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.cfg
        return make_optimizer(model, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)

    def lr_at(self, step: int) -> float:
        c = self.cfg
        if self.schedule is not None:
            return self.schedule.lr_at(step)
        return warmup_cosine(
            step,
            peak=c.lr,
            end=c.lr * c.cosine_final_fraction,
            warmup_steps=c.resolved_warmup_steps,
            total_steps=c.loop.steps,
        )

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict]:
        loss, parts = model.loss(batch["text"], batch["image"])
        return loss, {"loss_text": float(parts["text"]), "loss_image": float(parts["image"])}

    def on_step_end(self, model: nn.Module, step: int, metrics: dict[str, float]) -> None:
        if self.schedule is None:
            return
        if not self.on_validation and self.schedule.observe(step, _mean_over_ranks(metrics["loss"])):
            logger.info("training loss plateaued: learning rate halved after step %d", step)
        metrics["lr_halvings"] = float(self.schedule.halvings)

    def on_evaluate(self, step: int, row: dict[str, float]) -> None:
        # every rank gets rank 0's figures, so all halve together
        if self.on_validation and self.schedule is not None and "loss" in row:
            if self.schedule.observe(step, row["loss"]):
                logger.info("validation loss plateaued: learning rate halved after step %d", step)

    def evaluate(self, model: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        if not self.val_indices or self.cfg.eval_samples == 0:
            return {}
        # plain indices: every held-out image's plain view (grid 0), not a crop drawn at random
        val = torch.utils.data.Subset(self.tokens, self.val_indices)
        return evaluate_prior(
            model, val, self.tokenizer, max_samples=self.cfg.eval_samples, batch_size=self.cfg.eval_batch_size
        )

    def state_dict(self) -> dict[str, Any]:
        return {"plateau": self.schedule.state_dict()} if self.schedule is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.schedule is not None and "plateau" in state:
            self.schedule.load_state_dict(state["plateau"])


def make_optimizer(
    model: nn.Module, *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float
) -> torch.optim.AdamW:
    """The paper's AdamW (App. B.2): decay on matrices only, fused (training/optim.py)."""
    return optim.adamw(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _mean_over_ranks(value: float) -> float:
    """All processes must halve together, so they decide on the mean loss over ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


@torch.no_grad()
def evaluate_prior(
    model: nn.Module, tokens: Dataset, tokenizer: BPETokenizer, *, max_samples: int, batch_size: int
) -> dict[str, float]:
    """Held-out loss without BPE dropout or null captions: weighted loss, text and image CE (nats),
    and bits per image token (image CE / ln 2), averaged over the first ``max_samples`` items."""
    device = next(model.parameters()).device
    n = min(len(tokens), max_samples)
    sums = {"loss": 0.0, "loss_text": 0.0, "loss_image": 0.0}
    for lo in range(0, n, batch_size):
        items = [tokens[i] for i in range(lo, min(lo + batch_size, n))]
        text = tokenizer.encode([it["caption"] for it in items]).to(device)  # (B, Tt)
        image = torch.stack([it["image_codes"].long() for it in items]).to(device)  # (B, Ti)
        loss, parts = model.loss(text, image)
        for k, v in (("loss", loss), ("loss_text", parts["text"]), ("loss_image", parts["image"])):
            sums[k] += float(v) * len(items)
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out["bits_per_image_token"] = out["loss_image"] / math.log(2.0)
    return out


def build_model(cfg: PriorTrainConfig, *, seed: int | None = None) -> DalleTransformer:
    """A freshly initialised transformer for ``cfg`` (seeded from ``cfg.loop.seed`` unless given)."""
    torch.manual_seed(cfg.loop.seed if seed is None else seed)
    return DalleTransformer(cfg.model)
