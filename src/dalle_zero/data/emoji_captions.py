"""Captions of an emoji image in many phrasings, and the phrasings kept out of training.

A person asks for "red heart", "thumbs up, dark skin" or "a dog face in twitter style", not for the
one sentence a dataset template writes. So every image of the emoji dataset gets several captions,
all derived from metadata (paper §2.2 trains on whatever text the web pairs with an image; here the
variety has to be made):

- the **name**: the CLDR name ("red heart"), the emoji-datasource name ("heavy black heart") and
  its short names ("heart"); optionally a few CLDR keywords ("love, emotion");
- the **skin tone** phrased several ways ("dark skin tone", "dark skin", "with dark skin");
- the **style** phrased several ways ("noto style", "google style", "noto emoji"; "twemoji",
  "twitter style", "twemoji style");
- the **category** optional, and the clauses in varied order;
- sometimes words before the name ("an image of red heart", "a sketch of a red heart", "the red
  heart"). Without them every training caption starts with the name or a style word, and the prior
  learns to find the concept only there: "a picture of red heart" then tells it no more than the
  empty caption. With a handful of words between "a" and "of" it learns the one slot; with many
  ("photo", "sketch", "sticker", ...) it learns that any word there names the medium, not the thing.

:func:`training_captions` gives the canonical caption first, then the plain name, then the plain
name with the image's attributes, then seeded variants. :func:`unseen_captions` gives the
**unseen phrasings**: templates that no training caption uses (other connectives and word orders),
for measuring whether the model generalises to new ways of asking.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

STYLE_WORDS = {"google": "noto", "twitter": "twemoji"}  # the word of the canonical caption
STYLE_PHRASES = {
    "google": ("noto style", "google style", "noto emoji"),
    "twitter": ("twemoji style", "twitter style", "twemoji"),
}
# Words a caption may start with, and words after the name. None is an unseen phrasing's ("a picture of").
LEAD_INS = (
    "a", "the", "an image of", "an icon of", "a drawing of", "emoji of", "a photo of", "an illustration of",
    "a sketch of", "a cartoon of", "a sticker of", "a symbol of",
)  # fmt: skip
NAME_SUFFIXES = ("emoji", "icon")
# Korean captions (``languages`` with "ko"): the CLDR Korean name, with these for style and tone.
KO_STYLE = {"google": "노토 스타일", "twitter": "트위터 스타일"}
KO_TONES = {
    "light": "밝은", "medium-light": "약간 밝은", "medium": "중간", "medium-dark": "약간 어두운", "dark": "어두운",
}  # fmt: skip


@dataclass(frozen=True)
class CaptionParts:
    """What a caption can say about one image (all lower-case)."""

    name: str  # the CLDR name, e.g. "red heart"
    style: str  # "google" or "twitter"
    tone: str | None = None  # "dark", "light/dark" for two people, None for the base image
    category: str = ""
    subcategory: str = ""
    aliases: tuple[str, ...] = ()  # other names of the concept ("heavy black heart", "heart")
    keywords: tuple[str, ...] = ()  # CLDR keywords ("love", "emotion")
    ko_name: str | None = None  # the CLDR Korean name, when Korean captions are asked for

    @property
    def tones(self) -> list[str]:
        return [] if self.tone is None else self.tone.split("/")


def canonical_caption(p: CaptionParts) -> str:
    """The dataset's one template: name, skin tone(s), style word, category and subcategory."""
    parts = [p.name, *(f"{t} skin tone" for t in p.tones)]
    parts.append(f"{STYLE_WORDS[p.style]} style ({p.category}, {p.subcategory})")
    return ", ".join(parts)


def plain_caption(p: CaptionParts) -> str:
    """What a person would write: the name, then the tone and style in plain words."""
    return ", ".join([p.name, *(f"{t} skin tone" for t in p.tones), f"{STYLE_WORDS[p.style]} style"])


def _tone_phrases(tones: list[str]) -> list[str]:
    if not tones:
        return [""]
    if len(tones) == 1:
        t = tones[0]
        return [f"{t} skin tone", f"{t} skin", f"with {t} skin"]
    both = " and ".join(tones)
    return [", ".join(f"{t} skin tone" for t in tones), f"{both} skin", f"with {both} skin"]


def _join(*clauses: str) -> str:
    """Comma-join the non-empty clauses; a clause starting with "with" attaches without a comma."""
    out = ""
    for c in clauses:
        if not c:
            continue
        out = c if not out else (f"{out} {c}" if c.startswith("with ") else f"{out}, {c}")
    return out


def _lead_in(words: str, caption: str) -> str:
    """``words`` before ``caption``, with "a" turned into "an" before a vowel."""
    if words == "a" and caption[:1] in "aeiou":
        words = "an"
    return f"{words} {caption}"


def _variant(p: CaptionParts, rng: random.Random) -> str:
    """One caption drawn from the training phrasings."""
    names = [p.name, p.name, *p.aliases]  # the CLDR name twice as likely as each alias
    name = rng.choice(names)
    if rng.random() < 0.15:
        name = f"{name} {rng.choice(NAME_SUFFIXES)}"
    tone = rng.choice(_tone_phrases(p.tones)) if p.tones and rng.random() < 0.85 else ""
    style = rng.choice(STYLE_PHRASES[p.style]) if rng.random() < 0.85 else ""
    category = rng.choice(["", "", f"({p.category}, {p.subcategory})", p.subcategory])
    keywords = ""
    if p.keywords and rng.random() < 0.3:
        keywords = ", ".join(rng.sample(p.keywords, k=min(len(p.keywords), rng.randint(1, 3))))
    order = rng.randrange(3)
    if order == 0:  # name, tone, style
        caption = _join(name, tone, keywords, style)
    elif order == 1:  # name, style, tone
        caption = _join(name, keywords, style, tone)
    else:  # style first: "twemoji thumbs up, dark skin"
        caption = _join(f"{style} {name}" if style else name, tone, keywords)
    if category:
        caption = f"{caption} {category}" if category.startswith("(") else _join(caption, category)
    if rng.random() < 0.35:
        words = rng.choice(LEAD_INS)
        if words.endswith(" of") and rng.random() < 0.4:
            caption = _lead_in("a", caption)  # "an image of a cat face", as people write it
        caption = _lead_in(words, caption)
    return caption


def unseen_captions(p: CaptionParts) -> list[str]:
    """Phrasings no training caption uses: "X in noto style", "a picture of X", "X as a noto emoji"."""
    word = STYLE_WORDS[p.style]
    tones = " and ".join(p.tones)
    with_tone = f" with {tones} skin" if tones else ""
    comma_tone = f", {tones} skin tone" if tones else ""
    return [
        f"{p.name} in {word} style{with_tone}",
        f"a picture of {p.name}{comma_tone}, {STYLE_PHRASES[p.style][1]}",
        f"{p.name}{with_tone} as a {word} emoji",
    ]


def names_attributes(caption: str, style: str | None, tone: str | None) -> bool:
    """Whether ``caption``, one of an image's own captions, names the image's style and skin tone (if it
    has one): what tells it from the other images of its concept. The plain name ("waving hand") and
    about 15 % of the variants leave one out, and are then as true of a sibling as of the image."""
    text = caption.lower()
    if style in STYLE_PHRASES and not any(w in text for w in (*STYLE_PHRASES[style], KO_STYLE[style])):
        return False
    if tone:
        tones = tone.split("/")
        phrases = _tone_phrases(tones) + [", ".join(f"{KO_TONES.get(t, t)} 피부색" for t in tones)]
        return any(phrase in text for phrase in phrases)
    return True


def korean_captions(p: CaptionParts) -> list[str]:
    """Captions from the CLDR Korean name (none without one)."""
    if not p.ko_name:
        return []
    tone = ", ".join(f"{KO_TONES.get(t, t)} 피부색" for t in p.tones)
    return [p.ko_name, _join(p.ko_name, tone, KO_STYLE[p.style])]


def training_captions(p: CaptionParts, count: int, *, seed: int = 0) -> list[str]:
    """``count`` distinct training captions (fewer if the phrasings run out), canonical first, then
    the plain name and the plain name with attributes; the rest drawn from a stream seeded by the
    caption parts and ``seed``. None of them is an unseen phrasing."""
    if count < 1:
        raise ValueError(f"training_captions: count must be >= 1, got {count}")
    unseen = set(unseen_captions(p))
    out: list[str] = []
    for c in [canonical_caption(p), p.name, plain_caption(p), *korean_captions(p)]:
        if c not in out and c not in unseen:
            out.append(c)
    key = f"{seed}|{p.name}|{p.style}|{p.tone}".encode()
    rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
    for _ in range(20 * count):
        if len(out) >= count:
            break
        c = _variant(p, rng)
        if c not in out and c not in unseen:
            out.append(c)
    return out[:count]
