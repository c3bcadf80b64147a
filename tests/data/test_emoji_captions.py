"""The phrasings of an emoji's captions: canonical first, distinct, seeded, and never an unseen phrasing."""

from __future__ import annotations

import re

import pytest

from dalle_zero.data.emoji_captions import (
    KO_STYLE,
    CaptionParts,
    _lead_in,
    canonical_caption,
    korean_captions,
    names_attributes,
    plain_caption,
    training_captions,
    unseen_captions,
)

HEART = CaptionParts(
    name="red heart", style="google", category="smileys & emotion", subcategory="heart",
    aliases=("heavy black heart", "heart"), keywords=("love", "emotion"),
)  # fmt: skip
KISS = CaptionParts(name="kiss", style="twitter", tone="light/dark", category="people & body", subcategory="family")
THUMBS = CaptionParts(
    name="thumbs up", style="twitter", tone="dark", category="people & body", subcategory="hand",
    aliases=("+1",), keywords=("hand", "up"), ko_name="엄지 척",
)  # fmt: skip
BARE = CaptionParts(name="cat", style="google")  # no tone, aliases, keywords or category
ALL_PARTS = [HEART, KISS, THUMBS, BARE]


def test_canonical_and_plain_captions_name_every_tone_and_the_style_word():
    assert canonical_caption(KISS) == "kiss, light skin tone, dark skin tone, twemoji style (people & body, family)"
    assert plain_caption(KISS) == "kiss, light skin tone, dark skin tone, twemoji style"
    assert plain_caption(HEART) == "red heart, noto style"


@pytest.mark.parametrize("parts", ALL_PARTS, ids=lambda p: p.name)
def test_training_captions_start_with_the_canonical_caption_then_the_plain_name(parts):
    captions = training_captions(parts, 12)
    assert captions[:3] == [canonical_caption(parts), parts.name, plain_caption(parts)]
    assert training_captions(parts, 1) == [canonical_caption(parts)]
    assert training_captions(parts, 5) == captions[:5]  # more captions only add to the list


@pytest.mark.parametrize("parts", ALL_PARTS, ids=lambda p: p.name)
def test_training_captions_are_distinct_and_the_same_for_the_same_parts_and_seed(parts):
    captions = training_captions(parts, 64)
    assert len(captions) == len(set(captions)) and all(c and c == c.strip() for c in captions)
    assert training_captions(parts, 64) == captions
    assert training_captions(parts, 64, seed=1) != captions  # the variants follow the seed


@pytest.mark.parametrize("parts", ALL_PARTS, ids=lambda p: p.name)
def test_no_training_caption_is_an_unseen_phrasing(parts):
    unseen = unseen_captions(parts)
    assert len(unseen) == len(set(unseen)) == 3 and all(parts.name in c for c in unseen)
    for seed in range(5):
        training = training_captions(parts, 64, seed=seed)
        assert not set(unseen) & set(training)
        # the unseen connectives are not used by any training caption
        assert not [c for c in training if " in " in c or c.startswith("a picture of") or " as a " in c]


@pytest.mark.parametrize("parts", ALL_PARTS, ids=lambda p: p.name)
def test_some_training_captions_put_words_before_the_name(parts):
    # the prior must learn to find the name anywhere, not only at the caption's start
    captions = training_captions(parts, 64)
    led = [c for c in captions if c.split(" ", 1)[0] in {"a", "an", "the", "emoji"}]
    assert len(led) >= 4, captions
    for c in led:  # "a" before a consonant, "an" before a vowel, also after "of" ("a sketch of an apple")
        words = c.split(" ")
        for i, w in enumerate(words[:-1]):
            if i == 0 or words[i - 1] == "of":
                assert w != "a" or words[i + 1][0] not in "aeiou", c
                assert w != "an" or words[i + 1][0] in "aeiou", c


def test_some_lead_ins_take_an_article_as_people_write_them():
    captions = [c for p in ALL_PARTS for seed in range(3) for c in training_captions(p, 64, seed=seed)]
    with_article = [c for c in captions if re.match(r"^(a|an|emoji) [a-z ]*?of (a|an) ", c)]
    without = [c for c in captions if re.match(r"^(a|an|emoji) [a-z ]*?of (?!a |an )", c)]
    assert with_article and without
    assert {c.split(" of ", 1)[0] for c in with_article} >= {"a photo", "an image", "a sketch"}


def test_a_lead_in_article_follows_the_next_word():
    assert _lead_in("a", "apple, noto style") == "an apple, noto style"
    assert _lead_in("a", "red heart") == "a red heart"
    assert _lead_in("the", "apple") == "the apple"


def test_korean_captions_need_a_korean_name():
    assert korean_captions(HEART) == [] and not any("하트" in c for c in training_captions(HEART, 64))
    ko = korean_captions(THUMBS)
    assert ko == ["엄지 척", f"엄지 척, 어두운 피부색, {KO_STYLE['twitter']}"]
    assert set(ko) <= set(training_captions(THUMBS, 16))


def test_a_count_below_one_is_refused():
    with pytest.raises(ValueError, match="count must be >= 1"):
        training_captions(HEART, 0)


@pytest.mark.parametrize("parts", ALL_PARTS, ids=lambda p: p.name)
def test_a_caption_names_the_attributes_when_it_says_the_style_and_every_tone(parts):
    says = lambda c: names_attributes(c, parts.style, parts.tone)  # noqa: E731
    assert says(canonical_caption(parts)) and says(plain_caption(parts))
    assert all(says(c) for c in unseen_captions(parts))
    assert not says(parts.name)  # the plain name leaves the style out
    captions = training_captions(parts, 40)
    style_words = {"google": ("noto", "google"), "twitter": ("twemoji", "twitter")}[parts.style]
    style_words += (KO_STYLE[parts.style],)
    for c in captions:
        expected = any(w in c for w in style_words) and (parts.tone is None or "skin" in c or "피부색" in c)
        assert says(c) == expected, c
    assert 0 < sum(map(says, captions)) < len(captions)


def test_a_caption_of_two_tones_names_both_and_korean_captions_count():
    assert names_attributes("kiss with light and dark skin, twemoji", "twitter", "light/dark")
    assert not names_attributes("kiss, twemoji style", "twitter", "light/dark")
    assert not names_attributes("thumbs up, dark skin tone", "twitter", "dark")  # no style
    ko_name, ko_full = korean_captions(THUMBS)
    assert not names_attributes(ko_name, "twitter", "dark") and names_attributes(ko_full, "twitter", "dark")
    assert names_attributes("anything at all", None, None)  # no style or tone to name
