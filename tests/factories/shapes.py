"""A tiny labelled image set in the emoji dataset's layout: coloured shapes on two backgrounds.

``category`` is the shape, ``tone`` the fill colour (None = yellow, as a base emoji; "light/dark" is a
two-tone pair with no single label), ``style`` the background. Written as ``images/<stem>.png``,
``metadata.jsonl`` and ``splits.json`` so the evaluator's real loading code runs on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SHAPES = ("circle", "square", "bar")
TONES = {None: (0.98, 0.82, 0.15), "light": (0.98, 0.80, 0.65), "dark": (0.40, 0.24, 0.12)}
STYLES = {"google": (1.0, 1.0, 1.0), "twitter": (0.80, 0.90, 1.0)}


def shape_image(shape: str, tone: str | None, style: str, size: int, g: torch.Generator) -> torch.Tensor:
    """``float[3, size, size]`` in [0, 1]: one shape at a random offset and scale."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    cy, cx = (size / 2 + torch.randint(-2, 3, (2,), generator=g).float()).tolist()
    r = size * (0.25 + 0.1 * float(torch.rand((), generator=g)))
    if shape == "circle":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    elif shape == "square":
        mask = ((yy - cy).abs() <= r * 0.85) & ((xx - cx).abs() <= r * 0.85)
    else:  # a wide horizontal bar
        mask = ((yy - cy).abs() <= r * 0.35) & ((xx - cx).abs() <= r * 1.4)
    if tone == "light/dark":
        left = torch.tensor(TONES["light"]).view(3, 1, 1)
        right = torch.tensor(TONES["dark"]).view(3, 1, 1)
        fill = torch.where(xx < cx, left, right)
    else:
        fill = torch.tensor(TONES[tone]).view(3, 1, 1).expand(3, size, size)
    bg = torch.tensor(STYLES[style]).view(3, 1, 1).expand(3, size, size)
    img = torch.where(mask, fill, bg)
    return (img + 0.02 * torch.randn(img.shape, generator=g)).clamp(0, 1)


def make_shapes_dataset(root: Path, *, per_combo: int = 6, size: int = 16, seed: int = 0) -> Path:
    """Write the dataset; every 5th image goes to ``validation``, the light/dark bars to
    ``unseen_compositions``; returns ``root``."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    (root / "images").mkdir(parents=True)
    rows, splits = [], {"train": [], "validation": [], "unseen_concepts": [], "unseen_compositions": []}
    n = 0
    for shape in SHAPES:
        for tone in (None, "light", "dark", "light/dark"):
            for style in STYLES:
                for k in range(per_combo):
                    stem = f"{style}_{shape}_{tone or 'none'}_{k}".replace("/", "-")
                    img = shape_image(shape, tone, style, size, g)
                    arr = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                    Image.fromarray(arr).save(root / "images" / f"{stem}.png")
                    caption = f"{shape}, {tone or 'no'} tone, {style} style"
                    (root / "images" / f"{stem}.txt").write_text(caption + "\n")
                    rows.append(
                        {
                            "stem": stem,
                            "caption": caption,
                            "concept": shape,
                            "tone": tone,
                            "style": style,
                            "category": shape,
                            "subcategory": f"{shape} shapes",
                        }
                    )
                    if tone == "light/dark" and shape == "bar":
                        splits["unseen_compositions"].append(stem)
                    elif n % 5 == 0:
                        splits["validation"].append(stem)
                    else:
                        splits["train"].append(stem)
                    n += 1
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "splits.json").write_text(json.dumps(splits))
    return root


def shape_batch(n: int, *, size: int = 16, seed: int = 0) -> torch.Tensor:
    """``float[n, 3, size, size]``: random shapes/tones/styles drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        shape = SHAPES[int(torch.randint(len(SHAPES), (), generator=g))]
        tone = (None, "light", "dark")[int(torch.randint(3, (), generator=g))]
        style = ("google", "twitter")[int(torch.randint(2, (), generator=g))]
        out.append(shape_image(shape, tone, style, size, g))
    return torch.stack(out)
