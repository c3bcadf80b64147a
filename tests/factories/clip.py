"""Coloured shapes captioned "a red square" etc., drawn in memory, with a tokenizer and a tiny CLIP train
config for them: enough for a CLIP to learn retrieval in seconds."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from dalle_zero.models.clip import CLIPConfig
from dalle_zero.tokenizers.bpe import BPETokenizer
from dalle_zero.training.clip import CLIPTrainConfig
from dalle_zero.training.loop import LoopConfig

COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.1, 0.2, 0.9), "yellow": (0.9, 0.9, 0.1)}
SHAPES = ("square", "circle", "triangle")


def draw_shape(shape: str, colour: tuple[float, float, float], size: int = 16) -> torch.Tensor:
    """A coloured shape on white: float[3, size, size] in [0, 1]."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    if shape == "square":
        inside = (x.abs() < 0.55) & (y.abs() < 0.55)
    elif shape == "circle":
        inside = x**2 + y**2 < 0.6**2
    else:
        inside = (y > -0.6) & (y < 0.7) & (x.abs() < (y + 0.6) / 1.6)
    img = torch.ones(3, size, size)
    for c in range(3):
        img[c][inside] = colour[c]
    return img


class ShapePairs(Dataset):
    """Coloured shapes captioned "a red square" etc.; accepts (index, seed) keys like ImageTextFolder."""

    def __init__(self, size: int = 16) -> None:
        self.items = [
            {"pixels": draw_shape(s, rgb, size), "caption": f"a {c} {s}", "stem": f"{c}_{s}"}
            for c, rgb in COLOURS.items()
            for s in SHAPES
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        return dict(self.items[index])


TINY_MODEL = dict(text_n_layer=2, text_n_head=2, text_n_embd=32, image_size=16, image_widths=(8, 16), embed_dim=32)


def shapes_tokenizer() -> BPETokenizer:
    return BPETokenizer.train([it["caption"] for it in ShapePairs().items], vocab_size=280, text_seq_len=8)


def clip_config(tokenizer, **overrides) -> CLIPTrainConfig:
    model = CLIPConfig(text_vocab_size=tokenizer.vocab_size, text_seq_len=8, **TINY_MODEL)
    loop = LoopConfig(steps=100, batch_size=12, log_every=10, checkpoint_every=100)
    return CLIPTrainConfig(model=model, loop=loop, **{"warmup_steps": 10, "lr": 2e-3, **overrides})
