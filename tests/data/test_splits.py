"""Zero-shot splits: deterministic, by concept, and every held-out composition is made of seen parts."""

from __future__ import annotations

from collections import defaultdict

import pytest

from dalle_zero.data.splits import SPLIT_NAMES, SplitConfig, SplitItem, assign_splits, group_splits

TONES = ("light", "medium-light", "medium", "medium-dark", "dark")


def make_items(n_concepts: int = 400, styles: tuple[str, ...] = ("google", "twitter")) -> list[SplitItem]:
    """Every third concept has five skin tones besides its base image, in every style."""
    items = []
    for k in range(n_concepts):
        concept = f"concept {k}"
        tones = (None, *TONES) if k % 3 == 0 else (None,)
        for style in styles:
            for tone in tones:
                stem = f"{style}_{k}" + (f"_{tone}" if tone else "")
                items.append(SplitItem(stem=stem, concept=concept, style=style, tone=tone))
    return items


def check_zero_shot_invariants(items: list[SplitItem], assignment) -> None:
    by_stem = {it.stem: it for it in items}
    train = [by_stem[s] for s, a in assignment.items() if a.split == "train"]
    train_concepts = {it.concept for it in train}
    tone_concepts, style_concepts = defaultdict(set), defaultdict(set)
    train_pairs = {(it.concept, it.tone) for it in train} | {(it.concept, it.style) for it in train}
    for it in train:
        tone_concepts[it.tone].add(it.concept)
        style_concepts[it.style].add(it.concept)
    held_concepts = {by_stem[s].concept for s, a in assignment.items() if a.split == "unseen_concepts"}
    assert held_concepts and not (held_concepts & train_concepts)
    # Held-out concept names never appear as the concept of any training caption.
    assert not any(
        it.concept in held_concepts
        for s, a in assignment.items()
        if a.split != "unseen_concepts"
        for it in [by_stem[s]]
    )
    comps = [(by_stem[s], a.holdout) for s, a in assignment.items() if a.split == "unseen_compositions"]
    assert comps
    for it, kind in comps:
        assert it.concept in train_concepts  # the concept is seen...
        if kind == "tone":
            assert tone_concepts[it.tone] - {it.concept}  # ...and the tone elsewhere...
            assert (it.concept, it.tone) not in train_pairs  # ...never together
        else:
            assert kind == "style"
            assert style_concepts[it.style] - {it.concept}
            assert (it.concept, it.style) not in train_pairs


def test_splits_are_deterministic_and_cover_every_item_once():
    items = make_items()
    a, b = assign_splits(items), assign_splits(list(reversed(items)))
    assert a == b
    groups = group_splits(a)
    assert set(groups) == set(SPLIT_NAMES)
    assert sorted(sum(groups.values(), [])) == sorted(it.stem for it in items)


def test_a_different_seed_gives_a_different_split():
    items = make_items()
    assert group_splits(assign_splits(items)) != group_splits(assign_splits(items, SplitConfig(seed=1)))


def test_unseen_concepts_are_held_out_in_every_style_and_tone():
    items = make_items()
    assignment = assign_splits(items)
    held = {it.concept for it in items if assignment[it.stem].split == "unseen_concepts"}
    assert 0.02 < len(held) / 400 < 0.09  # ~5% of concepts
    assert all(assignment[it.stem].split == "unseen_concepts" for it in items if it.concept in held)


@pytest.mark.parametrize("styles", [("google", "twitter"), ("google",)])
def test_unseen_compositions_pair_a_seen_concept_with_a_seen_tone_or_style(styles):
    items = make_items(styles=styles)
    assignment = assign_splits(items)
    check_zero_shot_invariants(items, assignment)
    kinds = {a.holdout for a in assignment.values() if a.split == "unseen_compositions"}
    assert kinds == ({"tone", "style"} if len(styles) > 1 else {"tone"})  # one style: still tone pairs


def test_validation_is_about_five_percent_of_the_rest():
    items = make_items()
    groups = group_splits(assign_splits(items))
    rest = len(groups["train"]) + len(groups["validation"])
    assert 0.02 < len(groups["validation"]) / rest < 0.08


def test_a_tone_seen_with_no_other_concept_is_never_held_out():
    # Only one concept has tones: holding a tone out would leave that tone unseen in training.
    items = [SplitItem(f"s{k}", f"c{k}", "google") for k in range(50)]
    items += [SplitItem(f"t_{t}", "toned", "google", t) for t in TONES] + [SplitItem("t_base", "toned", "google")]
    config = SplitConfig(unseen_concept_fraction=0.0, tone_composition_fraction=1.0)
    assignment = assign_splits(items, config)
    assert all(a.split != "unseen_compositions" for a in assignment.values())


def test_split_fractions_are_validated():
    with pytest.raises(ValueError, match="validation_fraction"):
        SplitConfig(validation_fraction=1.5)
