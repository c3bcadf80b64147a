"""The emoji image–caption dataset: pinned npm tarballs -> ``images/<stem>.png`` + ``.txt`` + splits.

The offline stand-in for the paper's web data (§5; see ``docs/data.md``). Metadata comes from
``emoji.json`` of the ``emoji-datasource`` packages (1,911 emoji, 1,875 skin-tone variants); the
images come from

- 32 px: the sprite sheets ``img/{style}/sheets/32.png`` of ``emoji-datasource@16.0.0``
  (every cell has a 1 px transparent border: origin ``(x*(S+2)+1, y*(S+2)+1)``);
- 64 px: the PNGs ``img/{style}/64/*.png`` of ``emoji-datasource-{style}@16.0.0``.

Names and keywords come from Unicode CLDR through ``emojibase-data@17.0.0`` ("red heart", where
emoji-datasource says "heavy black heart"). Images are composited onto a fixed background before
alpha is dropped (Twemoji keeps stray colours under alpha = 0). Every image gets several lower-case
captions (:mod:`dalle_zero.data.emoji_captions`), the canonical one first::

    "{name}[, {tone} skin tone[, {tone} skin tone]], {style word} style ({category}, {subcategory})"
    e.g. "snowboarder, light skin tone, noto style (people & body, person sport)"

then the plain name ("snowboarder"), the name with its attributes and variants in other phrasings;
a reader draws one of them per sample and epoch. Phrasings kept out of training entirely (the
unseen phrasings) are stored in ``metadata.jsonl`` only, for evaluation.

The output folder uses the img2dataset layout (``images/<stem>.png`` + ``images/<stem>.txt``, one
caption a line) plus ``metadata.jsonl`` (stem, caption, captions, name, plain_caption,
unseen_captions, concept, tone, style, category, subcategory, split, holdout, ...),
``splits.json`` (see :mod:`dalle_zero.data.splits`), ``NOTICE.md`` and ``build.json`` (the options
and tarball hashes; a second build with the same options reuses the folder).

Longer than most files (about 490 lines) because it is one pipeline read top to bottom: the
tarballs' records, their art and names, then the build; the caption wording
(:mod:`~dalle_zero.data.emoji_captions`), the downloads (:mod:`~dalle_zero.data.npm`) and the splits
(:mod:`~dalle_zero.data.splits`) already live apart.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from dalle_zero.config import Config, check_choice, check_int
from dalle_zero.data.emoji_captions import (
    STYLE_WORDS,
    CaptionParts,
    canonical_caption,
    plain_caption,
    training_captions,
    unseen_captions,
)
from dalle_zero.data.npm import fetch_npm_tarball, sha512_integrity
from dalle_zero.data.splits import SPLIT_NAMES, SplitConfig, SplitItem, assign_splits, group_splits
from dalle_zero.errors import DataError
from dalle_zero.io import atomic_directory

logger = logging.getLogger(__name__)

BUILD_FORMAT_VERSION = 5  # 3: CLDR names and several captions per image; 4: words before the name; 5: more of them
DATASOURCE_VERSION = "16.0.0"
EMOJIBASE = ("emojibase-data", "17.0.0")  # CLDR names and keywords (en, ko), MIT
LANGUAGES = ("en", "ko")
SIZES = (32, 64)


@dataclass(frozen=True)
class EmojiStyle:
    word: str  # the word used in captions
    art: str
    license: str
    copyright: str


STYLES: dict[str, EmojiStyle] = {
    "google": EmojiStyle(STYLE_WORDS["google"], "Noto Emoji", "Apache-2.0", "Copyright Google Inc."),
    "twitter": EmojiStyle(
        STYLE_WORDS["twitter"], "Twemoji", "CC-BY-4.0", "Copyright Twitter, Inc and other contributors"
    ),
}

# Fitzpatrick modifiers, as named in Unicode CLDR.
TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}


@dataclass(frozen=True, kw_only=True)
class EmojiDatasetConfig(Config):
    """What to build: which art styles, at what size, with or without skin-tone variants."""

    styles: tuple[str, ...] = ("google",)
    size: int = 32
    skin_tones: bool = True
    background: tuple[int, int, int] = (255, 255, 255)
    splits: SplitConfig = field(default_factory=SplitConfig)
    captions_per_image: int = 16  # training captions per image: canonical, plain name, variants
    languages: tuple[str, ...] = ("en",)  # "ko" adds captions from CLDR's Korean names

    def __post_init__(self) -> None:
        if not self.styles or len(set(self.styles)) != len(self.styles):
            raise ValueError(f"EmojiDatasetConfig.styles must be distinct and non-empty, got {self.styles!r}")
        for s in self.styles:
            if s not in STYLES:
                raise ValueError(f"EmojiDatasetConfig.styles: unknown style {s!r}; choose from {sorted(STYLES)}")
        check_choice(self, "size", SIZES)
        check_int(self, "captions_per_image", min_value=1, max_value=64)
        if not self.languages or self.languages[0] != "en" or not set(self.languages) <= set(LANGUAGES):
            raise ValueError(
                f"EmojiDatasetConfig.languages must start with 'en' and be among {list(LANGUAGES)}, "
                f"got {self.languages!r}"
            )
        if len(self.background) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in self.background):
            raise ValueError(f"EmojiDatasetConfig.background must be 3 ints in [0, 255], got {self.background!r}")


@dataclass(frozen=True)
class EmojiRecord:
    """One image of the dataset, before its pixels are read."""

    stem: str
    captions: tuple[str, ...]  # training captions, the canonical one first
    parts: CaptionParts  # what the captions say (name, aliases, keywords, tone, style, category)
    concept: str  # unique id of the emoji (emoji-datasource's name, disambiguated); splits hash it
    tone: str | None  # "light", ..., "light/dark" for two-person emoji; None for the base image
    style: str
    category: str
    subcategory: str
    unified: str
    image: str  # PNG file name in the package
    sheet_x: int
    sheet_y: int

    @property
    def caption(self) -> str:
        """The canonical caption."""
        return self.captions[0]


@dataclass(frozen=True)
class EmojiBuildSummary:
    out_dir: Path
    images: int
    concepts: int
    split_counts: dict[str, int]
    style_counts: dict[str, int]
    skipped: int
    seconds: float
    reused: bool


def packages_for(config: EmojiDatasetConfig) -> dict[str, str]:
    """``{style: npm package name}`` holding that style's images at ``config.size``."""
    if config.size == 32:
        return {s: "emoji-datasource" for s in config.styles}
    return {s: f"emoji-datasource-{s}" for s in config.styles}


def make_caption(concept: str, tone: str | None, style: str, category: str, subcategory: str) -> str:
    """The canonical caption (lower-case): name, skin tone(s), style word, category and subcategory."""
    parts = CaptionParts(name=concept.lower(), style=style, tone=tone, category=category, subcategory=subcategory)
    return canonical_caption(parts).lower()


def _hex_key(code: str) -> str:
    """A code point sequence without variation selectors: emoji-datasource writes "2764-FE0F" where
    emojibase writes "2764"."""
    return "-".join(c for c in code.upper().split("-") if c != "FE0F")


def cldr_index(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{code points: emojibase entry}`` over the entries of emojibase's ``data.json`` and their skins."""
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        if isinstance(e, dict) and isinstance(e.get("hexcode"), str):
            out[_hex_key(e["hexcode"])] = e
    return out


def concept_names(entries: list[dict[str, Any]]) -> list[str]:
    """Lower-case names, one per entry; names shared by several entries fall back to the short name."""
    names = [str(e["name"]).lower() for e in entries]
    counts = Counter(names)
    out = []
    for e, n in zip(entries, names):
        short = str(e.get("short_name") or "").replace("_", " ").lower()
        out.append(short if counts[n] > 1 and short else n)
    again = Counter(out)
    out = [f"{n} {str(e['unified']).lower()}" if again[n] > 1 else n for e, n in zip(entries, out)]
    if len(set(out)) != len(out):
        raise DataError("emoji.json: concept names are not unique after disambiguation")
    return out


def _tone_label(key: str) -> str:
    tones = [TONES[code] for code in key.split("-")]
    if len(set(tones)) == 1:  # "1F3FB-1F3FB": both people share one tone
        tones = tones[:1]
    return "/".join(tones)


def emoji_records(
    entries: list[dict[str, Any]],
    style: str,
    *,
    skin_tones: bool = True,
    cldr: dict[str, dict[str, Any]] | None = None,
    cldr_ko: dict[str, dict[str, Any]] | None = None,
    captions_per_image: int = 1,
) -> list[EmojiRecord]:
    """The records of one style from the entries of ``emoji.json`` (in the file's sort order).

    ``cldr`` (:func:`cldr_index` of emojibase's English data) gives each emoji its CLDR name and
    keywords; without it, or for an emoji it lacks, the emoji-datasource name is the name.
    ``cldr_ko`` adds captions from the Korean names.
    """
    has_img = f"has_img_{style}"
    records: list[EmojiRecord] = []
    order = sorted(range(len(entries)), key=lambda i: (entries[i].get("sort_order", i), i))
    names = concept_names(entries)
    for i in order:
        e = entries[i]
        category = str(e["category"]).lower()
        subcategory = str(e["subcategory"]).replace("-", " ").lower()
        key = _hex_key(str(e["unified"]))
        base = (cldr or {}).get(key) or {}
        name = str(base.get("label") or names[i]).lower()
        aliases = [names[i]] + [str(n).replace("_", " ").lower() for n in e.get("short_names") or []]
        aliases = list(dict.fromkeys(a for a in aliases if a and a != name))
        keywords = tuple(dict.fromkeys(str(k).lower() for k in base.get("tags") or [] if str(k).lower() != name))
        ko = (cldr_ko or {}).get(key) or {}
        variants: list[tuple[str | None, dict[str, Any]]] = [(None, e)]
        if skin_tones:
            variants += [(_tone_label(k), v) for k, v in sorted((e.get("skin_variations") or {}).items())]
        for tone, v in variants:
            if not v.get(has_img, False):
                continue
            image = str(v["image"])
            parts = CaptionParts(
                name=name, style=style, tone=tone, category=category, subcategory=subcategory,
                aliases=tuple(aliases), keywords=keywords, ko_name=str(ko["label"]) if ko.get("label") else None,
            )  # fmt: skip
            records.append(
                EmojiRecord(
                    stem=f"{style}_{Path(image).stem}",
                    captions=tuple(training_captions(parts, captions_per_image)),
                    parts=parts,
                    concept=names[i],
                    tone=tone,
                    style=style,
                    category=category,
                    subcategory=subcategory,
                    unified=str(v["unified"]),
                    image=image,
                    sheet_x=int(v["sheet_x"]),
                    sheet_y=int(v["sheet_y"]),
                )
            )
    return records


def _read_member(tar: tarfile.TarFile, name: str, source: Path) -> bytes:
    try:
        f = tar.extractfile(name)
    except KeyError:
        f = None
    if f is None:
        raise DataError(f"{source}: no {name} in the tarball (is this the right package?)")
    return f.read()


def _flatten(img: Image.Image, size: int, background: tuple[int, int, int]) -> Image.Image:
    """Composite RGBA onto the background, then drop alpha; resize if the art is not ``size`` px."""
    img = img.convert("RGBA")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", img.size, (*background, 255))
    return Image.alpha_composite(canvas, img).convert("RGB")


def read_images(
    tar_path: Path, style: str, size: int, records: list[EmojiRecord], background: tuple[int, int, int]
) -> dict[str, Image.Image]:
    """``{stem: RGB image}`` for the records that have art in the tarball (sheet at 32 px, PNGs at 64)."""
    out: dict[str, Image.Image] = {}
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            if size == 32:
                sheet_name = f"package/img/{style}/sheets/{size}.png"
                sheet = Image.open(io.BytesIO(_read_member(tar, sheet_name, tar_path)))
                sheet.load()
                for r in records:
                    x0, y0 = r.sheet_x * (size + 2) + 1, r.sheet_y * (size + 2) + 1
                    if x0 + size > sheet.width or y0 + size > sheet.height:
                        continue
                    out[r.stem] = _flatten(sheet.crop((x0, y0, x0 + size, y0 + size)), size, background)
            else:
                wanted: dict[str, list[EmojiRecord]] = {}
                for r in records:
                    wanted.setdefault(f"package/img/{style}/{size}/{r.image}", []).append(r)
                for member in tar:  # sequential: random access into a .tgz re-decompresses
                    if member.name in wanted and (f := tar.extractfile(member)) is not None:
                        img = _flatten(Image.open(io.BytesIO(f.read())), size, background)
                        for r in wanted[member.name]:
                            out[r.stem] = img
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{tar_path}: cannot read the tarball ({e}); delete it to download it again") from None
    return out


def read_emoji_json(tar_path: Path) -> list[dict[str, Any]]:
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            data = json.loads(_read_member(tar, "package/emoji.json", tar_path))
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError) as e:
        raise DataError(f"{tar_path}: cannot read package/emoji.json ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{tar_path}: package/emoji.json is not a list of emoji")
    return data


def read_cldr(tar_path: Path, language: str) -> dict[str, dict[str, Any]]:
    """:func:`cldr_index` of ``package/<language>/data.json`` in an emojibase-data tarball."""
    member = f"package/{language}/data.json"
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            data = json.loads(_read_member(tar, member, tar_path))
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError) as e:
        raise DataError(f"{tar_path}: cannot read {member} ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{tar_path}: {member} is not a list of emoji")
    out = cldr_index(data)
    for e in data:  # skin-tone variants carry their own labels; the base entry's keywords are kept
        for skin in (e.get("skins") or []) if isinstance(e, dict) else []:
            if isinstance(skin, dict) and isinstance(skin.get("hexcode"), str):
                out.setdefault(_hex_key(skin["hexcode"]), skin)
    return out


def build_emoji_dataset(
    config: EmojiDatasetConfig,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> EmojiBuildSummary:
    """Download (or reuse) the pinned tarballs and build the dataset in ``out_dir``."""
    names = sorted(set(packages_for(config).values()))
    tarballs = {n: fetch_npm_tarball(n, DATASOURCE_VERSION, cache_dir) for n in names}
    tarballs[EMOJIBASE[0]] = fetch_npm_tarball(*EMOJIBASE, cache_dir)
    return build_emoji_dataset_from_tarballs(config, out_dir, tarballs, progress=progress)


def build_emoji_dataset_from_tarballs(
    config: EmojiDatasetConfig,
    out_dir: str | Path,
    tarballs: dict[str, Path],
    *,
    progress: bool = True,
) -> EmojiBuildSummary:
    """Build from local tarballs ``{package name: path}`` laid out like the npm packages.

    Without an ``emojibase-data`` tarball the names are emoji-datasource's (no CLDR names, keywords
    or Korean captions)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    style_pkgs = packages_for(config)
    missing = sorted(set(style_pkgs.values()) - set(tarballs))
    if missing:
        raise DataError(f"no tarball given for package(s) {missing}")
    build_info = {
        "builder": "dalle_zero.data.emoji",
        "format_version": BUILD_FORMAT_VERSION,
        "config": config.to_dict(),
        "packages": {
            f"{n}@{DATASOURCE_VERSION}": sha512_integrity(tarballs[n]) for n in sorted(set(style_pkgs.values()))
        },
    }
    if EMOJIBASE[0] in tarballs:
        build_info["packages"]["@".join(EMOJIBASE)] = sha512_integrity(tarballs[EMOJIBASE[0]])
    cldr = read_cldr(tarballs[EMOJIBASE[0]], "en") if EMOJIBASE[0] in tarballs else None
    cldr_ko = read_cldr(tarballs[EMOJIBASE[0]], "ko") if cldr is not None and "ko" in config.languages else None
    reused = _reuse_existing(out_dir, build_info)
    if reused is not None:
        return EmojiBuildSummary(**{**reused, "seconds": time.perf_counter() - t0, "reused": True})

    records: list[EmojiRecord] = []
    images: dict[str, Image.Image] = {}
    entries_by_pkg: dict[str, list[dict[str, Any]]] = {}
    for style in config.styles:
        pkg = style_pkgs[style]
        if pkg not in entries_by_pkg:
            entries_by_pkg[pkg] = read_emoji_json(tarballs[pkg])
        style_records = emoji_records(
            entries_by_pkg[pkg], style, skin_tones=config.skin_tones, cldr=cldr, cldr_ko=cldr_ko,
            captions_per_image=config.captions_per_image,
        )  # fmt: skip
        logger.info("reading %d %s images from %s", len(style_records), style, tarballs[pkg].name)
        images.update(read_images(tarballs[pkg], style, config.size, style_records, config.background))
        records += style_records
    skipped = sum(1 for r in records if r.stem not in images)
    if skipped:
        logger.warning("%d emoji have no image in the tarball and are skipped", skipped)
    records = [r for r in records if r.stem in images]
    if not records:
        raise DataError("the tarballs hold no emoji images for the chosen styles and size")

    items = [SplitItem(stem=r.stem, concept=r.concept, style=r.style, tone=r.tone) for r in records]
    assignment = assign_splits(items, config.splits)
    splits = group_splits(assignment)

    summary = {
        "out_dir": out_dir,
        "images": len(records),
        "concepts": len({r.concept for r in records}),
        "split_counts": {name: len(splits[name]) for name in SPLIT_NAMES},
        "style_counts": dict(Counter(r.style for r in records)),
        "skipped": skipped,
    }
    with atomic_directory(out_dir) as tmp:
        (tmp / "images").mkdir()
        lines = []
        for r in tqdm(records, desc="writing images", unit="img", disable=not progress):
            images[r.stem].save(tmp / "images" / f"{r.stem}.png", optimize=False)
            (tmp / "images" / f"{r.stem}.txt").write_text("\n".join(r.captions) + "\n", encoding="utf-8")
            a = assignment[r.stem]
            meta = {
                "stem": r.stem,
                "caption": r.caption,
                "captions": list(r.captions),
                "name": r.parts.name,
                "plain_caption": plain_caption(r.parts),
                "unseen_captions": unseen_captions(r.parts),
                "concept": r.concept,
                "tone": r.tone,
                "style": r.style,
                "category": r.category,
                "subcategory": r.subcategory,
                "split": a.split,
                "holdout": a.holdout,
                "unified": r.unified,
            }
            lines.append(json.dumps(meta, ensure_ascii=False))
        (tmp / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
        (tmp / "NOTICE.md").write_text(notice_text(config.styles))
        counts = {k: v for k, v in summary.items() if k != "out_dir"}
        (tmp / "build.json").write_text(json.dumps({**build_info, "summary": counts}, indent=2) + "\n")
        tmp.chmod(0o755)  # a temporary directory is private; a dataset is not
    return EmojiBuildSummary(**summary, seconds=time.perf_counter() - t0, reused=False)


def _reuse_existing(out_dir: Path, build_info: dict[str, Any]) -> dict[str, Any] | None:
    """The stored summary if ``out_dir`` was built with the same options and tarballs, else None.

    Refuses to overwrite a non-empty folder that this builder did not write.
    """
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise DataError(f"{out_dir} exists and is not a folder")
    build_file = out_dir / "build.json"
    if not build_file.is_file():
        if any(out_dir.iterdir()):
            raise DataError(f"{out_dir} is not empty and was not built by `dalle data emoji`; choose a new folder")
        return None
    try:
        old = json.loads(build_file.read_text())
    except json.JSONDecodeError:
        return None
    same = all(old.get(k) == v for k, v in build_info.items())
    if not same or not (out_dir / "splits.json").is_file() or not (out_dir / "metadata.jsonl").is_file():
        logger.info("%s was built with other options; rebuilding", out_dir)
        return None
    s = old["summary"]
    return {**s, "out_dir": out_dir}


def notice_text(styles: tuple[str, ...]) -> str:
    """Attribution for the art in a built dataset (see ``NOTICE_EMOJI.md`` beside this module)."""
    lines = [
        "# Emoji art in this dataset",
        "",
        f"Metadata: emoji-datasource@{DATASOURCE_VERSION} (iamcal/emoji-data), MIT, Copyright (c) 2013 Cal Henderson;",
        f"names and keywords: {'@'.join(EMOJIBASE)} (Unicode CLDR annotations), MIT, Copyright (c) Miles Johnson.",
        "Images were cropped/resized and composited onto a plain background; captions were derived from the metadata.",
        "",
    ]
    for s in styles:
        st = STYLES[s]
        lines.append(f"- {s}: {st.art}, {st.license}, {st.copyright.rstrip('.')}.")
    lines.append("")
    return "\n".join(lines)
