"""The in-house evaluator: a small image classifier trained on real images only (docs/evaluation.md).

The paper scores samples with FID and Inception Score computed by an ImageNet Inception-v3 (§6.1).
No Inception weights can be downloaded here, so ``dalle eval`` uses its own frozen network instead:
:class:`EmojiEvaluator`, a residual conv net with one linear head per label of the emoji data
(category, subcategory, skin tone, art style). It is trained on the *train* split of real images
(``dalle train evaluator``) and kept apart from the CLIP reranker, so a sample cannot score well by
fooling the model that chose it. It provides

- :meth:`EmojiEvaluator.features`: pooled activations ``[B, D]``, the feature space of in-house FID/KID;
- :meth:`EmojiEvaluator.forward`: logits per head, whose softmax drives the in-house Inception
  Score and the "does the sample carry the asked tone / style" read-out.

Label vocabularies live in the config (:class:`EvaluatorHead`), so a model folder is self-contained.
Figures computed with it are in-house: comparable between our own runs, not to published FID/IS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dalle_zero.config import Config, check_float, check_int
from dalle_zero.io import PretrainedModel


@dataclass(frozen=True, kw_only=True)
class EvaluatorHead(Config):
    """One classification head: the metadata field it predicts and its label vocabulary (in order)."""

    name: str
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"EvaluatorHead.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.labels, tuple) or len(self.labels) < 2:
            raise ValueError(
                f"EvaluatorHead {self.name!r}: labels must be a tuple of >= 2 strings, got {self.labels!r}"
            )
        if not all(isinstance(x, str) for x in self.labels) or len(set(self.labels)) != len(self.labels):
            raise ValueError(
                f"EvaluatorHead {self.name!r}: labels must be distinct strings, got {self.labels!r}"
            )


@dataclass(frozen=True, kw_only=True)
class EvaluatorConfig(Config):
    """Shapes of an :class:`EmojiEvaluator`. ``heads`` may be empty only until the data fills it in."""

    image_size: int = 32
    widths: tuple[int, ...] = (16, 32, 64, 128)  # channels per stage; each stage after the first halves H, W
    blocks: int = 1  # residual blocks per stage
    dropout: float = 0.1  # before the heads (training only)
    heads: tuple[EvaluatorHead, ...] = ()
    score_head: str | None = None  # head the Inception Score reads (None: the one with most labels)

    def __post_init__(self) -> None:
        check_int(self, "image_size", min_value=8)
        check_int(self, "blocks", min_value=1)
        check_float(self, "dropout", min_value=0.0, max_value=1.0)
        if not self.widths or not all(isinstance(w, int) and w >= 1 for w in self.widths):
            raise ValueError(f"EvaluatorConfig.widths must be positive integers, got {self.widths!r}")
        if self.image_size % 2 ** (len(self.widths) - 1):
            raise ValueError(
                f"EvaluatorConfig.image_size ({self.image_size}) must be divisible by "
                f"2**(len(widths) - 1) = {2 ** (len(self.widths) - 1)}"
            )
        if not all(isinstance(h, EvaluatorHead) for h in self.heads):
            raise ValueError("EvaluatorConfig.heads must be EvaluatorHead entries")
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ValueError(f"EvaluatorConfig.heads must have distinct names, got {names}")
        if self.score_head is not None and self.heads and self.score_head not in names:
            raise ValueError(f"EvaluatorConfig.score_head must be one of {names}, got {self.score_head!r}")

    @property
    def head_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.heads)

    def head(self, name: str) -> EvaluatorHead:
        for h in self.heads:
            if h.name == name:
                return h
        raise ValueError(f"the evaluator has no head {name!r}; heads: {list(self.head_names)}")

    @property
    def resolved_score_head(self) -> str:
        if self.score_head is not None:
            return self.score_head
        return max(self.heads, key=lambda h: len(h.labels)).name


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups of >= 4 channels (one channel per group would erase colour)."""
    groups = 8
    while groups > 1 and (channels % groups or channels // groups < 4):
        groups //= 2
    return nn.GroupNorm(groups, channels)


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class EmojiEvaluator(PretrainedModel):
    """Residual conv classifier with one head per label field; frozen feature extractor for FID/KID/IS."""

    config_class = EvaluatorConfig
    model_type = "evaluator"

    def __init__(self, config: EvaluatorConfig) -> None:
        super().__init__()
        if not config.heads:
            raise ValueError("EvaluatorConfig.heads is empty: an evaluator needs at least one labelled head")
        self.config = config
        w = config.widths
        layers: list[nn.Module] = [nn.Conv2d(3, w[0], 3, padding=1)]
        for i, width in enumerate(w):
            if i > 0:
                layers.append(nn.Conv2d(w[i - 1], width, 3, stride=2, padding=1))  # halve H, W
            layers.extend(_ResBlock(width) for _ in range(config.blocks))
        layers.extend([_norm(w[-1]), nn.SiLU()])
        self.trunk = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.heads = nn.ModuleDict({h.name: nn.Linear(w[-1], len(h.labels)) for h in config.heads})

    @property
    def num_features(self) -> int:
        """D, the width of :meth:`features` (torchmetrics reads this attribute)."""
        return self.config.widths[-1]

    def labels(self, head: str) -> tuple[str, ...]:
        return self.config.head(head).labels

    def _prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        if (
            not isinstance(pixels, torch.Tensor)
            or pixels.dim() != 4
            or pixels.shape[1] != 3
            or len(pixels) == 0
        ):
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(f"pixels must be a float tensor [B, 3, H, W] with B >= 1, got {shape}")
        if not pixels.is_floating_point():
            raise ValueError(f"pixels must be floats in [0, 1], got dtype {pixels.dtype}")
        s = self.config.image_size
        if pixels.shape[-2:] != (s, s):
            pixels = F.interpolate(pixels, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return pixels * 2.0 - 1.0  # centred input

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``float[B, 3, H, W]`` in [0, 1] (resized to ``image_size`` if needed) -> ``float[B, D]``."""
        x = self.trunk(self._prepare(pixels))  # (B, D, h, w)
        return x.mean(dim=(2, 3))  # (B, D)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head: ``{name: float[B, len(labels)]}``."""
        h = self.dropout(self.features(pixels))
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def head_logits(self, pixels: torch.Tensor, *, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Logits per head of ``pixels``, ``float[N, 3, H, W]`` in [0, 1] (``uint8`` in 0..255 is scaled),
        read in batches of ``batch_size`` on the model's device in eval mode (the mode is restored):
        ``{name: float[N, len(labels)]}`` on the CPU."""
        device = next(self.parameters()).device
        out: dict[str, list[torch.Tensor]] = {name: [] for name in self.heads}
        was = self.training
        self.eval()
        try:
            for b in pixels.split(batch_size):
                x = b.to(device)
                x = x.float() / 255.0 if x.dtype == torch.uint8 else x
                for name, z in self(x).items():
                    out[name].append(z.float().cpu())  # (b, L)
        finally:
            self.train(was)
        return {name: torch.cat(zs) for name, zs in out.items()}

    def predict(self, pixels: torch.Tensor, head: str) -> list[str]:
        """The most probable label of ``head`` for each image (the model is put in eval mode meanwhile)."""
        labels = self.labels(head)
        return [labels[i] for i in self.head_logits(pixels)[head].argmax(-1).tolist()]
