"""The discrete VAE of DALL-E stage 1 (paper §2.1, App. A.1 and A.3).

``DiscreteVAE`` turns an RGB image into a grid of discrete codes and back:

    codes = dvae.encode(pixels)      # [B, 3, H, W] float in [0, 1] -> [B, h, w] int64
    pixels = dvae.decode(codes)      # [B, h, w] int64 -> [B, 3, H, W] float in [0, 1]

The architecture is OpenAI's released one (``dall_e/encoder.py``, ``dall_e/decoder.py``): a
fully convolutional pre-activation bottleneck ResNet without normalisation layers, a 7×7 input
convolution, max-pool down / nearest up sampling, 1×1 convolutions next to the tokens, and every
residual branch scaled by ``post_gain = 1 / n_layers²``. Module names follow the released model
(``encoder.blocks.group_1.block_1.res_path.conv_1``) so its weights map one to one
(:mod:`dalle_zero.models.convert`). There is no codebook tensor: the decoder's first 1×1
convolution (``vocab_size -> n_init``) plays that part, and for hard codes it is applied as an
embedding lookup with the same weights.

The decoder predicts a logit-Laplace distribution per sub-pixel (channels ``[mu, ln b]``); a
reconstruction is ``unmap_pixels(sigmoid(mu))``. Pixels enter the encoder through
``map_pixels`` (ε = 0.1), which keeps likelihood targets inside [0.1, 0.9]. The encoder and decoder
networks live in :mod:`dalle_zero.models.dvae_blocks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dalle_zero.config import Config, check_choice, check_int
from dalle_zero.io import PretrainedModel
from dalle_zero.models.dvae_blocks import DVAEDecoder, DVAEEncoder, ResBlock

__all__ = ["DVAEConfig", "DVAEDecoder", "DVAEEncoder", "DVAEOutput", "DiscreteVAE", "ResBlock", "gumbel_softmax",
           "map_pixels", "round_trip", "sample_gumbel", "unmap_pixels", "LOGIT_LAPLACE_EPS"]

LOGIT_LAPLACE_EPS = 0.1  # paper App. A.3: pixels are mapped into (ε, 1 - ε)


# ---------------------------------------------------------------------------------------------
# pixel mapping (paper App. A.3, Eq. 3; dall_e/utils.py)


def _check_float_4d(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor [B, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def map_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """Map pixels from [0, 1] into [ε, 1 - ε]: ``(1 - 2ε)·x + ε``. ``x``: [B, C, H, W] float."""
    _check_float_4d(x, "map_pixels")
    return (1 - 2 * eps) * x + eps


def unmap_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """Inverse of :func:`map_pixels`, clamped to [0, 1]. ``x``: [B, C, H, W] float."""
    _check_float_4d(x, "unmap_pixels")
    return torch.clamp((x - eps) / (1 - 2 * eps), 0, 1)


# ---------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True, kw_only=True)
class DVAEConfig(Config):
    """Shapes of a :class:`DiscreteVAE`. Defaults are the paper's 256 px → 32×32 × 8192 model.

    Encoder group ``g`` (1-based) has width ``n_hid · 2**(g-1)``; every group but the last halves
    the resolution, so the token grid is ``image_size / 2**(group_count-1)``. The decoder mirrors
    it, starting from ``n_init`` channels (the effective codebook dimension).
    """

    image_size: int = 256  # training/nominal resolution; the network itself is fully convolutional
    group_count: int = 4
    n_blk_per_group: int = 2
    n_hid: int = 256
    n_init: int = 128
    vocab_size: int = 8192
    input_channels: int = 3
    input_kernel: int = 7  # first encoder conv (paper: 7×7)
    token_kernel: int = 1  # encoder output conv and decoder input conv (paper: 1×1, §2.1 stability)
    downsample: str = "max"  # "max" (paper: better ELB than average pooling) | "avg"
    upsample: str = "nearest"  # "nearest" (paper) | "bilinear"

    def __post_init__(self) -> None:
        check_int(self, "image_size", min_value=1)
        check_int(self, "group_count", min_value=1, max_value=8)
        check_int(self, "n_blk_per_group", min_value=1)
        check_int(self, "n_hid", min_value=4)
        check_int(self, "n_init", min_value=1)
        check_int(self, "vocab_size", min_value=2)
        check_int(self, "input_channels", min_value=1)
        check_int(self, "input_kernel", min_value=1)
        check_int(self, "token_kernel", min_value=1)
        check_choice(self, "downsample", ("max", "avg"))
        check_choice(self, "upsample", ("nearest", "bilinear"))
        if self.n_hid % 4:
            raise ValueError(
                f"DVAEConfig.n_hid must be divisible by 4 (blocks use n_out/4 hidden channels), got {self.n_hid}"
            )
        for name in ("input_kernel", "token_kernel"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"DVAEConfig.{name} must be odd ('same' padding), got {getattr(self, name)}")
        if self.image_size % self.downsample_factor:
            raise ValueError(
                f"DVAEConfig.image_size must be divisible by 2**(group_count-1) = {self.downsample_factor}, "
                f"got image_size={self.image_size} with group_count={self.group_count}"
            )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.group_count - 1)

    @property
    def grid_size(self) -> int:
        """Side of the token grid: ``image_size / 2**(group_count-1)`` (paper: 256 / 8 = 32)."""
        return self.image_size // self.downsample_factor

    @property
    def n_layers(self) -> int:
        return self.group_count * self.n_blk_per_group

    @property
    def post_gain(self) -> float:
        """Residual branch scale ``1 / n_layers²`` (paper §2.1: 1/64 for 8 blocks)."""
        return 1.0 / self.n_layers**2

    @property
    def output_channels(self) -> int:
        return self.input_channels


# ---------------------------------------------------------------------------------------------
# the model


class DVAEOutput(NamedTuple):
    """What one training forward returns (all float32)."""

    logits: torch.Tensor  # (B, V, h, w) encoder logits, clean (no noise)
    mu: torch.Tensor  # (B, C, H, W) logit-Laplace location, in logit space
    log_b: torch.Tensor  # (B, C, H, W) logit-Laplace log scale


class DiscreteVAE(PretrainedModel):
    """DALL-E's dVAE: ``encode`` pixels to a code grid, ``decode`` codes to pixels (paper §2.1)."""

    config_class = DVAEConfig
    model_type = "dvae"

    def __init__(self, config: DVAEConfig) -> None:
        super().__init__()
        if not isinstance(config, DVAEConfig):
            raise ValueError(f"DiscreteVAE expects a DVAEConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = DVAEEncoder(config)
        self.decoder = DVAEDecoder(config)
        # Conv weights in channels-last (NHWC) order: the convolutions then run on NHWC activations,
        # which oneDNN computes faster than NCHW on CPU (benchmarks/bench_dvae.py --memory-format).
        # Saved weights are contiguous copies as ever; loading copies into these tensors.
        self.to(memory_format=torch.channels_last)

    # -- shapes and input checks --------------------------------------------------------------

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        _check_float_4d(pixels, "pixels")
        c, f = self.config.input_channels, self.config.downsample_factor
        if pixels.shape[1] != c:
            raise ValueError(f"pixels: expected {c} channels [B, {c}, H, W], got shape {tuple(pixels.shape)}")
        if pixels.shape[2] % f or pixels.shape[3] % f or pixels.shape[2] == 0 or pixels.shape[3] == 0:
            raise ValueError(
                f"pixels: height and width must be positive multiples of {f} (2**(group_count-1)), "
                f"got {tuple(pixels.shape[2:])}"
            )
        if pixels.numel():
            lo, hi = torch.aminmax(pixels.detach())
            if lo < 0 or hi > 1:
                raise ValueError(f"pixels: expected values in [0, 1], got min {lo.item():.4g}, max {hi.item():.4g}")

    def _check_probs(self, probs: torch.Tensor) -> None:
        _check_float_4d(probs, "probs")
        v = self.config.vocab_size
        if probs.shape[1] != v:
            raise ValueError(f"probs: expected [B, {v}, h, w] (vocab_size channels), got {tuple(probs.shape)}")

    def _check_codes(self, codes: torch.Tensor) -> None:
        if not isinstance(codes, torch.Tensor):
            raise ValueError(f"codes: expected a torch.Tensor, got {type(codes).__name__}")
        if codes.dim() != 3:
            raise ValueError(f"codes: expected a 3-D tensor [B, h, w], got shape {tuple(codes.shape)}")
        if codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"codes: expected an integer tensor (int64), got dtype {codes.dtype}")
        if codes.numel():
            lo, hi = torch.aminmax(codes)
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(
                    f"codes: expected values in [0, {self.config.vocab_size - 1}], got min {lo.item()}, max {hi.item()}"
                )

    # -- encoder ------------------------------------------------------------------------------

    def encoder_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, C, H, W] float in [0, 1] -> logits [B, V, H/f, W/f] float32 (differentiable)."""
        self._check_pixels(pixels)
        return self.encoder(map_pixels(pixels))

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, C, H, W] float in [0, 1] -> codes [B, h, w] int64: argmax, no noise (§2.2)."""
        return self.encoder_logits(pixels).argmax(dim=1)

    # -- decoder ------------------------------------------------------------------------------

    def decode_distribution(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """probs [B, V, h, w] (one-hot or relaxed) -> (mu, ln b), each [B, C, H, W] float32."""
        self._check_probs(probs)
        return self._split(self.decoder(probs))

    def decode_soft(self, probs: torch.Tensor) -> torch.Tensor:
        """probs [B, V, h, w] -> pixels [B, C, H, W] in [0, 1]: ``unmap_pixels(sigmoid(mu))``."""
        mu, _ = self.decode_distribution(probs)
        return unmap_pixels(torch.sigmoid(mu))

    def decode_codes_distribution(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """codes [B, h, w] int -> (mu, ln b), each [B, C, H, W] float32 (differentiable in weights)."""
        self._check_codes(codes)
        codes = codes.long()
        if self.config.token_kernel == 1:
            h = self.decoder.embed_codes(codes)  # one-hot · 1×1 conv as a lookup
            out = self.decoder.forward_features(h)
        else:
            one_hot = F.one_hot(codes, self.config.vocab_size).permute(0, 3, 1, 2).float()
            out = self.decoder(one_hot)
        return self._split(out)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] int in [0, V) -> pixels [B, C, H, W] float32 in [0, 1]."""
        mu, _ = self.decode_codes_distribution(codes)
        return unmap_pixels(torch.sigmoid(mu))

    @torch.no_grad()
    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        """``decode(encode(pixels))``: the round trip through hard codes."""
        return self.decode(self.encode(pixels))

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config.output_channels
        out = out.float()
        return out[:, :c], out[:, c:]  # (B, C, H, W) mu, (B, C, H, W) ln b

    # -- training forward ---------------------------------------------------------------------

    def forward(
        self,
        pixels: torch.Tensor,
        *,
        tau: float,
        gumbel: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DVAEOutput:
        """Relaxed forward (paper §2.1): clean encoder logits, then the decoder reads the soft sample
        ``softmax((logits + g)/τ)``. ``g`` is ``gumbel`` ([B, V, h, w] Gumbel(0, 1) noise) if given,
        else drawn from ``generator``. Returns the clean logits and the decoder's (mu, ln b)."""
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        logits = self.encoder_logits(pixels)  # (B, V, h, w)
        if gumbel is None:
            probs = gumbel_softmax(logits, tau, generator=generator)
        else:
            if gumbel.shape != logits.shape:
                raise ValueError(f"gumbel: expected shape {tuple(logits.shape)}, got {tuple(gumbel.shape)}")
            probs = torch.softmax((logits.float() + gumbel) / tau, dim=1)
        mu, log_b = self._split(self.decoder(probs))
        return DVAEOutput(logits=logits, mu=mu, log_b=log_b)


def gumbel_softmax(
    logits: torch.Tensor, tau: float, *, dim: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Soft Gumbel-softmax sample ``softmax((logits + g)/τ)``, g ~ Gumbel(0, 1) i.i.d. (no straight-through)."""
    shape = tuple(logits.shape)
    g = sample_gumbel(shape, generator=generator, device=logits.device)
    return torch.softmax((logits.float() + g) / tau, dim=dim)


def sample_gumbel(
    shape: tuple[int, ...], *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Gumbel(0, 1) noise ``-ln(-ln u)``, u ~ U(0, 1) (float32; faster on CPU than ``exponential_``)."""
    u = torch.rand(shape, generator=generator, device=device).clamp_min_(torch.finfo(torch.float32).tiny)
    return -torch.log(-torch.log(u))


@torch.no_grad()
def round_trip(dvae: DiscreteVAE, real: torch.Tensor, *, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes long[N, h, w], reconstructions float[N, 3, S, S] in [0, 1])``, both on the CPU: real
    images ``float[N, 3, S, S]`` through the dVAE's hard codes and back, what a prior that drew exactly
    those codes would produce. The evaluation scores them; the reranker trains on some of them."""
    device = next(dvae.parameters()).device
    codes, recons = [], []
    for b in real.split(batch_size):
        c = dvae.encode(b.to(device))  # (b, h, w)
        codes.append(c.cpu())
        recons.append(dvae.decode(c).float().clamp(0, 1).cpu())
    return torch.cat(codes), torch.cat(recons)
