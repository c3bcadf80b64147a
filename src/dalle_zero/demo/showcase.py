"""The demo's picture gallery: reranked samples for seen and held-out captions, and image-to-image.

- :func:`showcase_captions` picks captions evenly from the training split (seen), the unseen
  compositions and the unseen concepts (``docs/data.md``);
- :func:`render_showcase` draws ``candidates`` samples per caption, keeps the reranker's best ``n``
  (paper §2.6) and writes them as PNGs beside the real image of that caption; the caption is the
  one a person would write (name, tone and style in plain words), not the dataset's template;
- :func:`render_plain_words` does the same for a few captions in plain words ("red heart"), the same
  for every run, so runs of different budgets can be compared side by side;
- :func:`render_image_to_image` keeps the top token rows of a held-out image and samples the rest
  for its own caption and for the same concept in another tone or style (paper §3.3, Fig. 14).

PNGs are enlarged with nearest-neighbour (32 px emoji are too small to see otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from dalle_zero.evaluation.samples import load_real_images, pick_evenly

SHOWCASE_SPLITS = ("train", "unseen_compositions", "unseen_concepts")
PNG_SCALE = 4


def save_png(image: Tensor, path: Path, scale: int = PNG_SCALE) -> Path:
    """``float[3, H, W]`` in [0, 1] -> a PNG enlarged ``scale`` times (nearest)."""
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def showcase_captions(
    meta: dict[str, dict[str, Any]], splits: dict[str, list[str]], k: int
) -> dict[str, list[dict[str, Any]]]:
    """Up to ``k`` metadata rows per showcase split, evenly spread (one per concept)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for split in SHOWCASE_SPLITS:
        stems = splits.get(split) or []
        seen_concepts: set[str] = set()
        unique = []
        for s in stems:  # one image per concept, so the grid shows k different things
            c = meta[s].get("concept", s)
            if c not in seen_concepts:
                seen_concepts.add(c)
                unique.append(s)
        if split == "unseen_compositions":  # half held-out tones, half held-out styles (when both exist)
            tone = [s for s in unique if meta[s].get("holdout") == "tone"]
            style = [s for s in unique if meta[s].get("holdout") == "style"]
            if tone and style:
                n_tone = min(len(tone), max(1, k // 2))
                out[split] = [meta[s] for s in pick_evenly(tone, n_tone) + pick_evenly(style, k - n_tone)]
                continue
        out[split] = [meta[s] for s in pick_evenly(unique, k)] if unique else []
    return out


def render_showcase(
    pipeline: Any,
    data_dir: Path,
    picks: dict[str, list[dict[str, Any]]],
    out_dir: Path,
    *,
    n: int,
    candidates: int,
    seed: int,
    guidance_scale: float = 1.0,
    progress: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Generate and save the gallery.

    Returns ``{split: [{caption, real, images, scores, ...}]}`` with paths relative to ``out_dir``.
    """
    size = pipeline.dvae.config.image_size
    result: dict[str, list[dict[str, Any]]] = {}
    total = sum(len(v) for v in picks.values())
    bar = tqdm(total=total, desc="showcase", unit="caption", disable=not progress, dynamic_ncols=True)
    try:
        for split, rows in picks.items():
            entries = []
            for i, row in enumerate(rows):
                caption = str(row.get("plain_caption") or row["caption"])
                folder = out_dir / "images" / split
                paths, scores = _sample_and_save(
                    pipeline,
                    caption,
                    folder,
                    f"{i:02d}",
                    out_dir,
                    n=n,
                    candidates=candidates,
                    seed=seed + i,
                    guidance_scale=guidance_scale,
                )
                real = load_real_images(data_dir, [row["stem"]], size)[0]
                real_path = save_png(real, folder / f"{i:02d}_real.png")
                entries.append(
                    {
                        "caption": caption,
                        "stem": row["stem"],
                        "holdout": row.get("holdout"),
                        "real": str(real_path.relative_to(out_dir)),
                        "images": paths,
                        "scores": scores,
                        "seed": seed + i,
                    }
                )
                bar.update(1)
            result[split] = entries
    finally:
        bar.close()
    return result


def render_plain_words(
    pipeline: Any,
    captions: Sequence[str],
    out_dir: Path,
    *,
    n: int,
    candidates: int,
    seed: int,
    guidance_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """The reranker's best ``n`` of ``candidates`` images for each caption, saved under
    ``images/plain_words``: ``[{caption, images, scores, seed}]`` with paths relative to ``out_dir``."""
    entries = []
    for i, caption in enumerate(captions):
        paths, scores = _sample_and_save(
            pipeline, caption, out_dir / "images" / "plain_words", f"{i:02d}", out_dir,
            n=n, candidates=candidates, seed=seed + i, guidance_scale=guidance_scale,
        )  # fmt: skip
        entries.append({"caption": caption, "images": paths, "scores": scores, "seed": seed + i})
    return entries


def sibling_caption(meta: dict[str, dict[str, Any]], row: dict[str, Any]) -> str | None:
    """The caption of another image of the same concept with a different tone or style, if any."""
    others = sorted(
        (r for r in meta.values() if r.get("concept") == row.get("concept") and r["stem"] != row["stem"]),
        key=lambda r: r["stem"],
    )
    for r in others:
        if (r.get("tone"), r.get("style")) != (row.get("tone"), row.get("style")):
            return str(r["caption"])
    return None


def pick_prime_image(meta: dict[str, dict[str, Any]], splits: dict[str, list[str]]) -> dict[str, Any] | None:
    """A held-out image for image-to-image: an unseen (concept, tone) pair if any, else any held-out
    one; preferably one whose concept also appears in another tone or style."""
    for split, holdout in (("unseen_compositions", "tone"), ("unseen_compositions", None), ("validation", None)):
        stems = [s for s in splits.get(split) or [] if holdout is None or meta[s].get("holdout") == holdout]
        if not stems:
            continue
        middle_first = sorted(range(len(stems)), key=lambda i: abs(i - len(stems) // 2))
        for i in middle_first[:50]:
            if sibling_caption(meta, meta[stems[i]]) is not None:
                return meta[stems[i]]
        return meta[stems[len(stems) // 2]]
    return None


def render_image_to_image(
    pipeline: Any,
    data_dir: Path,
    meta: dict[str, dict[str, Any]],
    row: dict[str, Any],
    out_dir: Path,
    *,
    n: int,
    candidates: int,
    prime_rows: int | None,
    seed: int,
    guidance_scale: float = 1.0,
) -> dict[str, Any]:
    """Prime the top rows of ``row``'s image and complete it for two captions; save the PNGs."""
    size = pipeline.dvae.config.image_size
    grid = pipeline.dvae.config.grid_size
    rows = grid // 2 if prime_rows is None else min(prime_rows, grid)
    real = load_real_images(data_dir, [row["stem"]], size)  # (1, 3, S, S)
    folder = out_dir / "images" / "image_to_image"
    with torch.no_grad():
        codes = pipeline.dvae.encode(real)  # (1, h, w)
        recon = pipeline.dvae.decode(codes)[0].float().clamp(0, 1)  # (3, S, S)
    kept = recon.clone()
    cut = rows * size // grid
    kept[:, cut:] = 0.5  # the part the prior has to fill in, greyed out
    captions: Sequence[str] = [str(row["caption"])]
    other = sibling_caption(meta, row)
    if other is not None:
        captions = [*captions, other]
    result: dict[str, Any] = {
        "stem": row["stem"],
        "prime_rows": rows,
        "grid": grid,
        "original": str(save_png(real[0], folder / "original.png").relative_to(out_dir)),
        "primed": str(save_png(kept, folder / "primed.png").relative_to(out_dir)),
        "completions": [],
    }
    for k, caption in enumerate(captions):
        paths, scores = _sample_and_save(
            pipeline,
            caption,
            folder,
            str(k),
            out_dir,
            n=n,
            candidates=candidates,
            seed=seed + k,
            guidance_scale=guidance_scale,
            prime_image=real,
            prime_rows=rows,
        )
        result["completions"].append({"caption": caption, "images": paths, "scores": scores})
    return result


def _sample_and_save(
    pipeline: Any,
    caption: str,
    folder: Path,
    prefix: str,
    out_dir: Path,
    *,
    n: int,
    candidates: int,
    seed: int,
    guidance_scale: float,
    **prime: Any,
) -> tuple[list[str], list[float] | None]:
    """The reranker's best ``n`` of ``candidates`` images for ``caption`` (``prime`` as the pipeline takes
    it), saved as ``folder/<prefix>_<j>.png``: their paths relative to ``out_dir`` and rounded scores."""
    out = pipeline(
        caption,
        n=n,
        candidates=candidates,
        seed=seed,
        guidance_scale=guidance_scale,
        batch_size=min(candidates, 32),
        **prime,
    )
    paths = [
        str(save_png(img, folder / f"{prefix}_{j}.png").relative_to(out_dir)) for j, img in enumerate(out.images[0])
    ]
    scores = out.scores[0]
    return paths, None if scores is None else [round(float(s), 4) for s in scores]
