"""Deterministic zero-shot splits: held-out concepts and held-out compositions (paper §3, in miniature).

DALL-E's claim is zero-shot generation: captions the model never saw, built from parts it did see.
The emoji data test that claim with four splits, assigned by hashing *concepts* (never at random,
never by image), so the same data always splits the same way:

- ``unseen_concepts``: a fixed fraction of concepts, held out in every style and tone.
- ``unseen_compositions``: for some concepts seen in training, one (concept, skin tone) or one
  (concept, style) pair is held out. The model sees the concept and the tone/style elsewhere, never
  together. Only concepts with several tones / styles qualify; a pair whose concept or tone/style
  would vanish from training is released back to training.
- ``validation``: a further fraction of the remaining images (by hash of the stem) for losses;
  images of composition concepts are never moved there, so those concepts stay in training.
- ``train``: the rest.

``splits.json`` stores ``{split name: [stems]}``.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from dalle_zero.config import Config, check_float, check_int

SPLIT_NAMES = ("train", "validation", "unseen_concepts", "unseen_compositions")


@dataclass(frozen=True, kw_only=True)
class SplitConfig(Config):
    """Fractions of the zero-shot splits; ``seed`` salts every hash (change it for a different split)."""

    seed: int = 0
    unseen_concept_fraction: float = 0.05  # of concepts
    tone_composition_fraction: float = 0.20  # of concepts with skin tones: one tone held out each
    style_composition_fraction: float = 0.10  # of concepts in several styles: one style held out each
    validation_fraction: float = 0.05  # of the images left

    def __post_init__(self) -> None:
        check_int(self, "seed", min_value=0)
        for name in (
            "unseen_concept_fraction",
            "tone_composition_fraction",
            "style_composition_fraction",
            "validation_fraction",
        ):
            check_float(self, name, min_value=0.0, max_value=1.0)


@dataclass(frozen=True)
class SplitItem:
    """One image as the splitter sees it. ``tone`` is None for the tone-less base image."""

    stem: str
    concept: str
    style: str
    tone: str | None = None


@dataclass(frozen=True)
class Assignment:
    """Where an image went and why: ``holdout`` is None, "concept", "tone" or "style"."""

    split: str
    holdout: str | None = None


def unit_hash(seed: int, kind: str, key: str) -> float:
    """A deterministic number in [0, 1) for ``key`` (stable across runs, machines and Python versions)."""
    digest = hashlib.sha256(f"{seed}/{kind}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _pick(seed: int, kind: str, key: str, options: Sequence[str]) -> str:
    options = sorted(options)
    return options[min(int(unit_hash(seed, kind, key) * len(options)), len(options) - 1)]


def assign_splits(items: Sequence[SplitItem], config: SplitConfig | None = None) -> dict[str, Assignment]:
    """Assign every item (by stem) to one of :data:`SPLIT_NAMES`. Pure and deterministic."""
    config = config or SplitConfig()
    seed = config.seed
    stems = [it.stem for it in items]
    if len(set(stems)) != len(stems):
        raise ValueError("assign_splits: stems must be unique")

    tones: dict[str, set[str | None]] = defaultdict(set)
    styles: dict[str, set[str]] = defaultdict(set)
    for it in items:
        tones[it.concept].add(it.tone)
        styles[it.concept].add(it.style)
    concepts = sorted(tones)

    unseen = {c for c in concepts if unit_hash(seed, "concept", c) < config.unseen_concept_fraction}
    held_tone: dict[str, str] = {}
    held_style: dict[str, str] = {}
    for c in concepts:
        if c in unseen:
            continue
        named_tones = [t for t in tones[c] if t is not None]
        # The concept must keep another tone value (or the tone-less base) in training.
        if named_tones and len(tones[c]) >= 2:
            if unit_hash(seed, "tone-concept", c) < config.tone_composition_fraction:
                held_tone[c] = _pick(seed, "tone-pick", c, named_tones)
        if len(styles[c]) >= 2 and unit_hash(seed, "style-concept", c) < config.style_composition_fraction:
            held_style[c] = _pick(seed, "style-pick", c, list(styles[c]))

    def composition_reason(it: SplitItem) -> str | None:
        if held_tone.get(it.concept) is not None and it.tone == held_tone[it.concept]:
            return "tone"
        if held_style.get(it.concept) == it.style:
            return "style"
        return None

    composition_concepts = set(held_tone) | set(held_style)
    out: dict[str, Assignment] = {}
    for it in items:
        if it.concept in unseen:
            out[it.stem] = Assignment("unseen_concepts", "concept")
        elif (reason := composition_reason(it)) is not None:
            out[it.stem] = Assignment("unseen_compositions", reason)
        elif (
            it.concept not in composition_concepts
            and unit_hash(seed, "validation", it.stem) < config.validation_fraction
        ):
            out[it.stem] = Assignment("validation")
        else:
            out[it.stem] = Assignment("train")

    # Release any pair whose parts do not both occur in training on their own. Releasing only adds
    # training images, so one pass leaves every remaining pair valid.
    train_items = [it for it in items if out[it.stem].split == "train"]
    train_concepts = {it.concept for it in train_items}
    tone_owners: dict[str, set[str]] = defaultdict(set)
    style_owners: dict[str, set[str]] = defaultdict(set)
    for it in train_items:
        if it.tone is not None:
            tone_owners[it.tone].add(it.concept)
        style_owners[it.style].add(it.concept)
    for c, t in list(held_tone.items()):
        if c not in train_concepts or not (tone_owners[t] - {c}):
            del held_tone[c]
    for c, s in list(held_style.items()):
        if c not in train_concepts or not (style_owners[s] - {c}):
            del held_style[c]
    for it in items:
        if out[it.stem].split == "unseen_compositions":
            reason = composition_reason(it)
            out[it.stem] = Assignment("train") if reason is None else Assignment("unseen_compositions", reason)
    return out


def group_splits(assignment: dict[str, Assignment]) -> dict[str, list[str]]:
    """``{split name: sorted stems}`` for every name in :data:`SPLIT_NAMES` (the ``splits.json`` form)."""
    groups: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for stem, a in assignment.items():
        groups[a.split].append(stem)
    return {name: sorted(stems) for name, stems in groups.items()}
