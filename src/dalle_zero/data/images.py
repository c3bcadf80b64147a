"""Image tensors shared by training and evaluation: reading a file, uint8 to float, Gaussian blur.

- :func:`load_image`: an image file as ``uint8[3, H, W]`` (RGB), the form the evaluator and the
  evaluation keep real images in.
- :func:`load_square_image` and :func:`square_pixels`: a file or a PIL image as one model input
  ``float[1, 3, size, size]``, centre-cropped and resized (the pipeline's priming image).
- :func:`to_float_images`: ``uint8`` in 0..255 or float batches as ``float[N, 3, H, W]`` in [0, 1].
- :func:`resize_pixels`: float batches to a square size, as every model that reads pixels takes them.
- :func:`blur` and :func:`random_blur`: a Gaussian blur, and the training augmentation that blurs a
  share of the images. Generated images come out of the dVAE softer than the real ones, so the
  evaluator and the reranker, trained on real images, also see blurred ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from dalle_zero.data.pairs import MAX_PIXELS, open_image, oversized
from dalle_zero.data.transforms import ResizeTransform


def resize_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """``float[N, 3, H, W]`` -> ``float[N, 3, size, size]`` (bilinear with antialiasing; unchanged if equal)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def load_image(path: str | Path) -> torch.Tensor:
    """``uint8[3, H, W]`` from an image file (RGB)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (3, H, W)


def square_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """A PIL image (any mode; transparent pixels go onto white, as in training) -> ``float[1, 3, size, size]``
    in [0, 1]: the centre square, resized with Lanczos."""
    return ResizeTransform(resolution=size, resample="lanczos")(image)[None]


def load_square_image(path: str | Path, size: int) -> torch.Tensor:
    """An image file -> ``float[1, 3, size, size]`` in [0, 1] (:func:`square_pixels`).

    An image of more than :data:`~dalle_zero.data.pairs.MAX_PIXELS` pixels is refused from its header,
    before it is decoded; an unreadable file is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with open_image(path) as im:
            if oversized(im, MAX_PIXELS):
                w, h = im.size
                raise ValueError(f"{path}: {w}x{h} pixels, over the cap of {MAX_PIXELS:,}; use a smaller image")
            im.load()  # read before the file closes
            return square_pixels(im, size)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


def image_pixels(image: str | Path | Image.Image | torch.Tensor, size: int, *, name: str = "image") -> torch.Tensor:
    """An image path (:func:`load_square_image`), a PIL image (:func:`square_pixels`), or a tensor
    ``float[3, H, W]`` / ``[1, 3, H, W]`` in [0, 1] (resized bilinearly) -> ``float[1, 3, size, size]``.
    ``name``: what the caller calls the image, for the error message."""
    if isinstance(image, (str, Path)):
        return load_square_image(image, size)
    if not isinstance(image, torch.Tensor):
        return square_pixels(image, size)
    pixels = image.unsqueeze(0) if image.dim() == 3 else image
    if pixels.dim() != 4 or pixels.shape[:2] != (1, 3) or not pixels.is_floating_point():
        raise ValueError(f"{name} tensor must be float [3, H, W] in [0, 1], got {tuple(image.shape)}")
    return resize_pixels(pixels.float(), size)


def to_float_images(imgs: torch.Tensor) -> torch.Tensor:
    """uint8 in 0..255 -> float in [0, 1]; float stays float (float32). ``[N, 3, H, W]``."""
    if not isinstance(imgs, torch.Tensor) or imgs.dim() != 4 or imgs.shape[1] != 3:
        shape = tuple(imgs.shape) if isinstance(imgs, torch.Tensor) else type(imgs).__name__
        raise ValueError(f"images must be a tensor [N, 3, H, W], got {shape}")
    if imgs.dtype == torch.uint8:
        return imgs.float() / 255.0
    if not imgs.is_floating_point():
        raise ValueError(f"images must be uint8 or float, got dtype {imgs.dtype}")
    return imgs.float()


def blur(images: torch.Tensor, radius: float) -> torch.Tensor:
    """Gaussian blur with σ = ``radius`` pixels (reflect padding) of ``[N, 3, H, W]`` images, as applied to
    both reference and generated images in the paper's FID-at-blur-radius protocol (§6.1); radius 0
    returns the input."""
    if radius < 0:
        raise ValueError(f"blur radius must be >= 0, got {radius}")
    x = to_float_images(images)
    if radius == 0:
        return x
    half = max(1, math.ceil(3 * radius))
    half = min(half, x.shape[-1] - 1, x.shape[-2] - 1)  # reflect padding needs pad < size
    t = torch.arange(-half, half + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / radius) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (half, half, half, half), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H
    return x.clamp(0, 1)


def random_blur(image: torch.Tensor, prob: float, max_radius: float, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation: with probability ``prob``, :func:`blur` one ``float[3, H, W]`` image by a
    radius drawn uniformly from ``(0, max_radius]``; both draws come from ``generator`` (none when
    ``max_radius`` is 0)."""
    if max_radius > 0 and bool(torch.rand((), generator=generator) < prob):
        radius = max_radius * (1.0 - float(torch.rand((), generator=generator)))  # in (0, max_radius]
        return blur(image[None], radius)[0]
    return image
