"""The dVAE's encoder and decoder networks, laid out as OpenAI's released model (paper App. A.1).

``dall_e/encoder.py`` and ``dall_e/decoder.py``: pre-activation bottleneck residual blocks without
normalisation, every residual branch scaled by ``post_gain``, max-pool down / nearest up sampling and
1×1 convolutions next to the tokens, kept in float32. Module names match the released weights
(``blocks.group_1.block_1.res_path.conv_1``). :class:`~dalle_zero.models.dvae.DiscreteVAE` puts the
two together.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # the config lives with the model; these blocks only read its fields
    from dalle_zero.models.dvae import DVAEConfig




def _conv(n_in: int, n_out: int, k: int) -> nn.Conv2d:
    """'Same'-padded conv with the released model's init: N(0, 1/sqrt(n_in·k²)) weights, zero bias."""
    conv = nn.Conv2d(n_in, n_out, k, padding=(k - 1) // 2)
    nn.init.normal_(conv.weight, std=1.0 / math.sqrt(n_in * k * k))
    nn.init.zeros_(conv.bias)
    return conv


def _conv_fp32(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Run ``conv`` in float32 even under autocast (the released model keeps the convs next to
    the tokens in fp32: ``use_float16=False``)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return conv(x.float())


class ResBlock(nn.Module):
    """``id_path(x) + post_gain · res_path(x)``; a pre-activation bottleneck with hidden n_out/4.

    Encoder blocks use kernels (3, 3, 3, 1); decoder blocks (1, 3, 3, 3) (paper App. A.1; openai/DALL-E's
    ``dall_e`` package).
    """

    def __init__(self, n_in: int, n_out: int, post_gain: float, kernels: tuple[int, int, int, int]) -> None:
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = post_gain
        self.id_path = _conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [n_in, n_hid, n_hid, n_hid, n_out]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, k in enumerate(kernels):
            layers[f"relu_{i + 1}"] = nn.ReLU()
            layers[f"conv_{i + 1}"] = _conv(widths[i], widths[i + 1], k)
        self.res_path = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DVAEEncoder(nn.Module):
    """Pixels (already mapped) [B, C, H, W] -> logits [B, V, H/f, W/f], f = 2**(group_count-1)."""

    def __init__(self, config: DVAEConfig) -> None:
        super().__init__()
        c = config
        widths = [c.n_hid * 2**g for g in range(c.group_count)]
        blocks: OrderedDict[str, nn.Module] = OrderedDict(input=_conv(c.input_channels, c.n_hid, c.input_kernel))
        n_in = c.n_hid
        for g, width in enumerate(widths, start=1):
            group: OrderedDict[str, nn.Module] = OrderedDict()
            for i in range(c.n_blk_per_group):
                group[f"block_{i + 1}"] = ResBlock(n_in, width, c.post_gain, (3, 3, 3, 1))
                n_in = width
            if g < c.group_count:
                group["pool"] = nn.MaxPool2d(2) if c.downsample == "max" else nn.AvgPool2d(2)
            blocks[f"group_{g}"] = nn.Sequential(group)
        blocks["output"] = nn.Sequential(
            OrderedDict(relu=nn.ReLU(), conv=_conv(widths[-1], c.vocab_size, c.token_kernel))
        )
        self.blocks = nn.Sequential(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks[:-1](x)
        out = self.blocks.output
        return _conv_fp32(out.conv, out.relu(h))  # (B, V, h, w) float32


class DVAEDecoder(nn.Module):
    """Token probabilities [B, V, h, w] -> logit-Laplace parameters [B, 2C, h·f, w·f] (mu, ln b)."""

    def __init__(self, config: DVAEConfig) -> None:
        super().__init__()
        c = config
        widths = [c.n_hid * 2 ** (c.group_count - g) for g in range(1, c.group_count + 1)]
        blocks: OrderedDict[str, nn.Module] = OrderedDict(input=_conv(c.vocab_size, c.n_init, c.token_kernel))
        n_in = c.n_init
        for g, width in enumerate(widths, start=1):
            group: OrderedDict[str, nn.Module] = OrderedDict()
            for i in range(c.n_blk_per_group):
                group[f"block_{i + 1}"] = ResBlock(n_in, width, c.post_gain, (1, 3, 3, 3))
                n_in = width
            if g < c.group_count:
                group["upsample"] = nn.Upsample(scale_factor=2, mode=c.upsample)
            blocks[f"group_{g}"] = nn.Sequential(group)
        blocks["output"] = nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=_conv(widths[-1], 2 * c.output_channels, 1)))
        self.blocks = nn.Sequential(blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward_features(_conv_fp32(self.blocks.input, z))

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Same as ``blocks.input(one_hot(codes))`` for a 1×1 input conv, as a lookup. -> [B, n_init, h, w]."""
        conv = self.blocks.input
        table = conv.weight.flatten(1).t()  # (V, n_init)
        h = F.embedding(codes, table) + conv.bias  # (B, h, w, n_init)
        return h.permute(0, 3, 1, 2)

    def forward_features(self, h: torch.Tensor) -> torch.Tensor:
        return self.blocks[1:](h)
