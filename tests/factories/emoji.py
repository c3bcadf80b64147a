"""Tiny synthetic ``emoji-datasource`` and ``emojibase-data`` tarballs, so the real dataset builder
runs offline in tests.

The ``emoji-datasource`` tarball has the package's layout: ``package/emoji.json`` (entries with
``name``, ``category``, ``subcategory``, ``sheet_x``/``sheet_y``, ``has_img_<style>`` and
``skin_variations``) and 32 px sprite sheets ``package/img/{google,twitter}/sheets/32.png`` (cells
with a 1 px transparent border). Each concept is a shape, its skin tone the fill colour and the art
style the outline, so a tiny model can learn all three.

The ``emojibase-data`` tarball has ``package/{en,ko}/data.json``: for each shape a CLDR-like
``label`` that differs from the datasource name ("circle emoji" is "round circle"), a few ``tags``
and, for toned shapes, ``skins`` whose hexcodes are the datasource's ``unified`` codes
(``E000-1F3FB``). Both tarballs are byte-for-byte the same on every call.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from dalle_zero.data.emoji import EMOJIBASE, EmojiDatasetConfig, build_emoji_dataset_from_tarballs
from dalle_zero.data.splits import SplitConfig

SIZE = 32
SHAPES = ("circle", "square", "bar", "cross", "ring", "triangle", "diamond", "dot", "frame", "plus", "stripe", "wedge")
TONE_CODES = ("1F3FB", "1F3FD", "1F3FF")  # light, medium, dark
TONE_RGB = {None: (250, 205, 40), "1F3FB": (250, 205, 165), "1F3FD": (200, 140, 90), "1F3FF": (100, 60, 30)}
STYLE_OUTLINE = {"google": (0, 0, 0, 255), "twitter": (40, 90, 220, 255)}
CATEGORIES = ("people & body", "objects")
TONE_NAMES = {"1F3FB": "light skin tone", "1F3FD": "medium skin tone", "1F3FF": "dark skin tone"}
# CLDR-like names and keywords of the shapes: (English label, tags, Korean label, Korean tags).
CLDR = {
    "circle": ("round circle", ("round", "circle"), "둥근 원", ("원",)),
    "square": ("plain square", ("square", "box"), "정사각형", ("사각형",)),
    "bar": ("flat bar", ("bar", "line"), "납작한 막대", ("막대",)),
    "cross": ("heavy cross", ("cross", "x"), "굵은 십자", ("십자",)),
    "ring": ("hollow ring", ("ring", "loop"), "빈 고리", ("고리",)),
    "triangle": ("pointed triangle", ("triangle", "peak"), "뾰족한 삼각형", ("삼각형",)),
    "diamond": ("tilted diamond", ("diamond", "rhombus"), "기울어진 마름모", ("마름모",)),
    "dot": ("small dot", ("dot", "point"), "작은 점", ("점",)),
    "frame": ("empty frame", ("frame", "border"), "빈 액자", ("액자",)),
    "plus": ("thin plus", ("plus", "add"), "가는 더하기", ("더하기",)),
    "stripe": ("diagonal stripe", ("stripe", "slash"), "대각선 줄무늬", ("줄무늬",)),
    "wedge": ("half wedge", ("wedge", "half"), "반쪽 쐐기", ("쐐기",)),
}
KO_TONE_NAMES = {"1F3FB": "밝은 피부톤", "1F3FD": "중간 피부톤", "1F3FF": "어두운 피부톤"}


def _mask(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    c, r = size / 2 - 0.5, size * 0.36
    d = np.hypot(yy - c, xx - c)
    ax, ay = np.abs(xx - c), np.abs(yy - c)
    return {
        "circle": d <= r,
        "square": (ax <= r * 0.85) & (ay <= r * 0.85),
        "bar": (ay <= r * 0.35) & (ax <= r),
        "cross": ((ax <= r * 0.3) | (ay <= r * 0.3)) & (d <= r),
        "ring": (d <= r) & (d >= r * 0.55),
        "triangle": (yy >= c - r) & (yy <= c + r) & (ax <= (yy - (c - r)) / 2),
        "diamond": ax + ay <= r,
        "dot": d <= r * 0.45,
        "frame": (ax <= r) & (ay <= r) & ((ax >= r * 0.6) | (ay >= r * 0.6)),
        "plus": ((ax <= r * 0.2) | (ay <= r * 0.2)) & (ax <= r) & (ay <= r),
        "stripe": (np.abs(xx - yy) <= r * 0.4) & (d <= r),
        "wedge": (xx >= c) & (d <= r),
    }[shape]


def _cell(shape: str, tone: str | None, style: str) -> np.ndarray:
    """``uint8[S, S, 4]`` RGBA: transparent background, outlined shape filled with the tone colour."""
    inner = _mask(shape, SIZE)
    grown = inner.copy()
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        grown |= np.roll(np.roll(inner, dy, 0), dx, 1)
    cell = np.zeros((SIZE, SIZE, 4), np.uint8)
    cell[grown] = STYLE_OUTLINE[style]
    cell[inner] = (*TONE_RGB[tone], 255)
    return cell


def make_emoji_tarball(path: Path, n_concepts: int = 12) -> Path:
    """Write ``emoji-datasource-16.0.0.tgz``: ``n_concepts`` shapes, half with three skin tones, two styles."""
    entries = []
    cells: list[tuple[int, int, str, str | None]] = []  # (x, y, shape, tone code)
    slot = 0
    for k, shape in enumerate(SHAPES[:n_concepts]):
        toned = k % 2 == 0
        base = {
            "name": f"{shape} emoji",
            "short_name": shape,
            "unified": f"E{k:03d}",
            "image": f"e{k:03d}.png",
            "category": CATEGORIES[0] if toned else CATEGORIES[1],
            "subcategory": f"{shape}-shapes",
            "sort_order": k,
            "sheet_x": slot % 8,
            "sheet_y": slot // 8,
            "has_img_google": True,
            "has_img_twitter": True,
        }
        cells.append((slot % 8, slot // 8, shape, None))
        slot += 1
        if toned:
            variations = {}
            for code in TONE_CODES:
                variations[code] = {
                    "unified": f"E{k:03d}-{code}",
                    "image": f"e{k:03d}-{code.lower()}.png",
                    "sheet_x": slot % 8,
                    "sheet_y": slot // 8,
                    "has_img_google": True,
                    "has_img_twitter": True,
                }
                cells.append((slot % 8, slot // 8, shape, code))
                slot += 1
            base["skin_variations"] = variations
        entries.append(base)
    rows = slot // 8 + 1
    files: dict[str, bytes] = {"package/emoji.json": json.dumps(entries).encode()}
    for style in STYLE_OUTLINE:
        sheet = np.zeros((rows * (SIZE + 2), 8 * (SIZE + 2), 4), np.uint8)
        for x, y, shape, code in cells:
            x0, y0 = x * (SIZE + 2) + 1, y * (SIZE + 2) + 1
            sheet[y0 : y0 + SIZE, x0 : x0 + SIZE] = _cell(shape, code, style)
        buf = io.BytesIO()
        Image.fromarray(sheet, "RGBA").save(buf, format="PNG")
        files[f"package/img/{style}/sheets/{SIZE}.png"] = buf.getvalue()
    return _write_tgz(path, files)


def _cldr_entries(language: str, n_concepts: int) -> list[dict]:
    """emojibase's ``data.json`` for the first ``n_concepts`` shapes, in ``language`` ("en" or "ko")."""
    entries = []
    for k, shape in enumerate(SHAPES[:n_concepts]):
        en_label, en_tags, ko_label, ko_tags = CLDR[shape]
        label, tags = (en_label, en_tags) if language == "en" else (ko_label, ko_tags)
        tone_names = TONE_NAMES if language == "en" else KO_TONE_NAMES
        entry = {"label": label, "hexcode": f"E{k:03d}", "tags": list(tags), "group": 1, "order": k}
        if k % 2 == 0:  # the toned shapes of make_emoji_tarball
            entry["skins"] = [
                {"label": f"{label}: {tone_names[code]}", "hexcode": f"E{k:03d}-{code}", "tone": t + 1}
                for t, code in enumerate(TONE_CODES)
            ]
        entries.append(entry)
    return entries


def make_emojibase_tarball(path: Path, n_concepts: int = 12) -> Path:
    """Write ``emojibase-data-17.0.0.tgz``: English and Korean CLDR-like names and tags of the first
    ``n_concepts`` shapes of :func:`make_emoji_tarball`; with fewer shapes than it has, the others keep
    their datasource names."""
    files = {
        f"package/{lang}/data.json": json.dumps(_cldr_entries(lang, n_concepts), ensure_ascii=False).encode()
        for lang in ("en", "ko")
    }
    return _write_tgz(path, files)


def _write_tgz(path: Path, files: dict[str, bytes]) -> Path:
    """A gzipped tar of ``files`` with fixed times, so the same files give the same bytes (and hash)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(raw.getvalue())
    return path


def make_emoji_dataset(root: Path) -> Path:
    """Build the synthetic dataset with the real builder into ``root/emoji`` (both styles, with tones,
    CLDR names and several captions per image).

    Split fractions are raised so that a dozen concepts still give every split a few images.
    """
    tarball = make_emoji_tarball(root / "npm" / "emoji-datasource-16.0.0.tgz")
    emojibase = make_emojibase_tarball(root / "npm" / f"{'-'.join(EMOJIBASE)}.tgz")
    splits = SplitConfig(
        seed=0,
        unseen_concept_fraction=0.1,
        tone_composition_fraction=0.6,
        style_composition_fraction=0.4,
        validation_fraction=0.15,
    )
    config = EmojiDatasetConfig(styles=("google", "twitter"), size=SIZE, splits=splits)
    tarballs = {"emoji-datasource": tarball, EMOJIBASE[0]: emojibase}
    build_emoji_dataset_from_tarballs(config, root / "emoji", tarballs, progress=False)
    return root / "emoji"
