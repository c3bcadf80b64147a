"""Image transforms: the paper's dVAE and prior crops (§1.7 Listing 1, §3.5 Listing 2), a plain resize.

Every transform is a frozen dataclass called as ``transform(image, generator) -> pixels`` with
``image`` a PIL image (any mode; alpha is composited onto white) and ``pixels`` a float tensor
``[3, res, res]`` in [0, 1]. All randomness comes from the ``torch.Generator`` argument, so a dataset
that seeds one generator per sample is reproducible (see :class:`dalle_zero.data.folder.ImageTextFolder`).

Resizing down uses PIL's BOX filter, which averages whole source pixels like TF's AREA; when an image
is smaller than the target it is scaled up with BICUBIC instead (the paper never needs this).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from dalle_zero.config import check_choice, check_float, check_int

BACKGROUND = (255, 255, 255)
RESAMPLE = {"box": Image.Resampling.BOX, "lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}


def to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """RGB copy of ``image``; transparent pixels are composited onto ``background`` first."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> float tensor [3, H, W] in [0, 1]."""
    arr = np.asarray(to_rgb(image), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def aspect_ratio_ok(w: int, h: int, max_ratio: float = 2.0) -> bool:
    """The paper's image filter (§5): keep images whose aspect ratio is within [1/max_ratio, max_ratio]."""
    return w > 0 and h > 0 and max(w, h) <= max_ratio * min(w, h)


def _randint(lo: int, hi: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    if hi <= lo:
        return lo
    return int(torch.randint(lo, hi + 1, (1,), generator=generator))


def _resize_square(image: Image.Image, side: int) -> Image.Image:
    if image.size == (side, side):
        return image
    resample = Image.Resampling.BOX if side <= min(image.size) else Image.Resampling.BICUBIC
    return image.resize((side, side), resample)


def _random_crop(image: Image.Image, side: int, generator: torch.Generator | None) -> Image.Image:
    x0 = _randint(0, image.width - side, generator)
    y0 = _randint(0, image.height - side, generator)
    return image.crop((x0, y0, x0 + side, y0 + side))


@dataclass(frozen=True, kw_only=True)
class DVAETransform:
    """Paper Listing 1: random full square crop, resize to t in [9/8, 12/8]·res (<= side), random crop, flip."""

    resolution: int
    min_scale: float = 9 / 8
    max_scale: float = 12 / 8
    flip: bool = True

    def __post_init__(self) -> None:
        check_int(self, "resolution", min_value=1)
        check_float(self, "min_scale", min_value=1.0)
        check_float(self, "max_scale", min_value=self.min_scale)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        image = to_rgb(image)
        w, h = image.size
        s = min(w, h)
        image = _random_crop(image, s, generator)  # square of side s_min at a random offset
        lo = min(s, round(self.min_scale * self.resolution))
        hi = min(s, round(self.max_scale * self.resolution))
        t = max(_randint(lo, hi, generator), self.resolution)
        image = _random_crop(_resize_square(image, t), self.resolution, generator)
        if self.flip and bool(torch.rand((), generator=generator) < 0.5):
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return pil_to_tensor(image)


@dataclass(frozen=True, kw_only=True)
class PriorTransform:
    """Paper Listing 2: near-centre square crop, resize to t in [res, min(side, 9/8·res)], random crop, no flip."""

    resolution: int
    max_scale: float = 9 / 8

    def __post_init__(self) -> None:
        check_int(self, "resolution", min_value=1)
        check_float(self, "max_scale", min_value=1.0)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        image = to_rgb(image)
        w, h = image.size
        s = min(w, h)
        # Offsets uniform in [3·(h−s)//8, max(3·(h−s)//8 + 1, 5·(h−s)//8)), the same for w.
        y0 = _randint(3 * (h - s) // 8, max(3 * (h - s) // 8 + 1, 5 * (h - s) // 8) - 1, generator)
        x0 = _randint(3 * (w - s) // 8, max(3 * (w - s) // 8 + 1, 5 * (w - s) // 8) - 1, generator)
        image = image.crop((x0, y0, x0 + s, y0 + s))
        t = _randint(self.resolution, max(self.resolution, min(s, round(self.max_scale * self.resolution))), generator)
        image = _random_crop(_resize_square(image, t), self.resolution, generator)
        return pil_to_tensor(image)  # no flip: "the image may contain text"


@dataclass(frozen=True, kw_only=True)
class ResizeTransform:
    """Deterministic: centre square crop (a no-op for square icons), then resize to res×res."""

    resolution: int
    resample: str = "box"

    def __post_init__(self) -> None:
        check_int(self, "resolution", min_value=1)
        check_choice(self, "resample", tuple(RESAMPLE))

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        image = to_rgb(image)
        w, h = image.size
        s = min(w, h)
        x0, y0 = (w - s) // 2, (h - s) // 2
        image = image.crop((x0, y0, x0 + s, y0 + s))
        if image.size != (self.resolution, self.resolution):
            image = image.resize((self.resolution, self.resolution), RESAMPLE[self.resample])
        return pil_to_tensor(image)


TRANSFORMS = {"dvae": DVAETransform, "prior": PriorTransform, "resize": ResizeTransform}


def make_transform(name: str, resolution: int) -> DVAETransform | PriorTransform | ResizeTransform:
    """``"dvae"`` (paper Listing 1), ``"prior"`` (Listing 2) or ``"resize"`` (deterministic) at ``resolution``."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; choose from {sorted(TRANSFORMS)}")
    return TRANSFORMS[name](resolution=resolution)
