"""The emoji dataset builder on tiny synthetic ``emoji-datasource`` and ``emojibase-data`` tarballs
(offline), and once for real: layout, CLDR names, several captions per image, unseen phrasings."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalle_zero.cli.main import main
from dalle_zero.data.emoji import (
    EMOJIBASE,
    EmojiDatasetConfig,
    build_emoji_dataset,
    build_emoji_dataset_from_tarballs,
    cldr_index,
    concept_names,
    emoji_records,
    make_caption,
)
from dalle_zero.data.folder import ImageTextFolder
from dalle_zero.data.npm import PINNED_INTEGRITY, fetch_npm_tarball, sha512_integrity
from dalle_zero.data.sources import read_captions
from dalle_zero.errors import DataError
from tests.factories.emoji import CLDR, SHAPES, SIZE, make_emoji_tarball, make_emojibase_tarball

HANGUL = re.compile("[\uac00-\ud7a3]")


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    return make_emoji_tarball(tmp_path_factory.mktemp("npm") / "emoji-datasource-16.0.0.tgz")


@pytest.fixture(scope="module")
def emojibase(tmp_path_factory) -> Path:
    return make_emojibase_tarball(tmp_path_factory.mktemp("npm") / f"{'-'.join(EMOJIBASE)}.tgz")


@pytest.fixture(scope="module")
def cldr_built(tarball, emojibase, tmp_path_factory) -> Path:
    """Both styles with CLDR names and the default captions per image, built once for reading."""
    out = tmp_path_factory.mktemp("cldr") / "emoji"
    build(tarball, out, emojibase=emojibase, styles=("google", "twitter"))
    return out


def build(tarball: Path, out: Path, *, emojibase: Path | None = None, **kw) -> object:
    config = EmojiDatasetConfig(size=SIZE, **kw)
    tarballs = {"emoji-datasource": tarball, **({EMOJIBASE[0]: emojibase} if emojibase is not None else {})}
    return build_emoji_dataset_from_tarballs(config, out, tarballs, progress=False)


def read_metadata(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


def caption_file(root: Path, stem: str) -> list[str]:
    """The lines of an image's caption file."""
    return (root / "images" / f"{stem}.txt").read_text(encoding="utf-8").splitlines()


def shape_of(meta: dict) -> str:
    """The synthetic shape of a metadata row ("circle" for the datasource name "circle emoji")."""
    return meta["concept"].removesuffix(" emoji")


def test_caption_template_names_concept_tone_style_and_category():
    caption = make_caption("snowboarder", "light", "google", "people & body", "person sport")
    assert caption == "snowboarder, light skin tone, noto style (people & body, person sport)"
    two = make_caption("kiss", "light/dark", "twitter", "people & body", "family")
    assert two == "kiss, light skin tone, dark skin tone, twemoji style (people & body, family)"
    assert make_caption("Cat", None, "google", "animals", "mammal") == "cat, noto style (animals, mammal)"


def test_shared_names_are_disambiguated_by_short_name():
    entries = [
        {"name": "MAN IN TUXEDO", "short_name": "man_in_tuxedo", "unified": "1F935-200D-2642-FE0F"},
        {"name": "MAN IN TUXEDO", "short_name": "person_in_tuxedo", "unified": "1F935"},
        {"name": "CAT", "short_name": "cat", "unified": "1F408"},
    ]
    assert concept_names(entries) == ["man in tuxedo", "person in tuxedo", "cat"]


def test_builder_writes_img2dataset_layout_with_metadata_and_splits(tarball, tmp_path):
    s = build(tarball, tmp_path / "out", styles=("google", "twitter"))
    root = tmp_path / "out"
    meta = read_metadata(root)
    # 12 concepts, 6 of them with 3 tones: 12 + 18 = 30 images per style.
    assert s.images == len(meta) == 60 and s.style_counts == {"google": 30, "twitter": 30}
    splits = json.loads((root / "splits.json").read_text())
    assert sorted(sum(splits.values(), [])) == sorted(m["stem"] for m in meta)
    for m in meta:
        img = Image.open(root / "images" / f"{m['stem']}.png")
        assert img.mode == "RGB" and img.size == (SIZE, SIZE)
        lines = caption_file(root, m["stem"])
        assert lines[0] == m["caption"] and lines == m["captions"]  # one caption a line, the canonical first
        assert m["caption"] == m["caption"].lower() and m["style"] in ("google", "twitter")
        assert set(m) >= {"stem", "caption", "captions", "name", "plain_caption", "unseen_captions", "concept",
                          "tone", "style", "category", "subcategory", "split"}  # fmt: skip
    toned = [m for m in meta if m["tone"] is not None]
    assert {m["tone"] for m in toned} == {"light", "medium", "dark"}
    assert all(f"{m['tone']} skin tone" in m["caption"] for m in toned)
    assert (root / "NOTICE.md").read_text().count("Apache-2.0") == 1


def test_builder_composites_transparent_pixels_onto_white(tarball, tmp_path):
    build(tarball, tmp_path / "out")
    img = np.asarray(Image.open(tmp_path / "out" / "images" / "google_e000.png"))
    assert (img[0, 0] == 255).all()  # the sheet's corner is transparent: white after compositing
    assert (img[SIZE // 2, SIZE // 2] != 255).any()  # the shape itself is coloured


def test_no_skin_tones_keeps_only_base_emoji(tarball, tmp_path):
    s = build(tarball, tmp_path / "out", skin_tones=False)
    assert s.images == 12 and all(m["tone"] is None for m in read_metadata(tmp_path / "out"))


def test_second_build_with_same_options_reuses_the_folder(tarball, tmp_path):
    first = build(tarball, tmp_path / "out")
    stamp = (tmp_path / "out" / "metadata.jsonl").stat().st_mtime_ns
    again = build(tarball, tmp_path / "out")
    assert again.reused and not first.reused and again.split_counts == first.split_counts
    assert (tmp_path / "out" / "metadata.jsonl").stat().st_mtime_ns == stamp
    other = build(tarball, tmp_path / "out", skin_tones=False)  # other options: rebuilt in place
    assert not other.reused and other.images == 12


def test_builder_refuses_to_overwrite_a_foreign_folder(tarball, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not built by"):
        build(tarball, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_built_folder_loads_as_image_text_folder_by_split_with_every_caption(cldr_built):
    splits = json.loads((cldr_built / "splits.json").read_text())
    train = ImageTextFolder(cldr_built, split="train")
    assert sorted(train.stems) == sorted(splits["train"]) and not train.skipped
    assert train[0]["pixels"].shape == (3, SIZE, SIZE)
    meta = {m["stem"]: m for m in read_metadata(cldr_built)}
    assert all(train.captions(i) == meta[stem]["captions"] for i, stem in enumerate(train.stems))
    assert {train[(0, seed)]["caption"] for seed in range(200)} == set(train.captions(0))


def test_cldr_label_is_the_name_in_the_captions_when_emojibase_data_is_given(cldr_built):
    meta = read_metadata(cldr_built)
    for m in meta:
        label = CLDR[shape_of(m)][0]  # "round circle" where emoji-datasource says "circle emoji"
        assert m["name"] == label and m["caption"].startswith(f"{label}, ")
        assert m["captions"][1] == label and m["plain_caption"].startswith(label)
        assert all(label in c for c in m["unseen_captions"])
    assert all(m["concept"] == f"{shape_of(m)} emoji" for m in meta)  # the concept id (splits hash it) is kept
    assert "emojibase-data@17.0.0" in json.loads((cldr_built / "build.json").read_text())["packages"]


def test_without_emojibase_data_the_datasource_name_is_the_name(tarball, tmp_path):
    build(tarball, tmp_path / "out", captions_per_image=4)
    for m in read_metadata(tmp_path / "out"):
        assert m["name"] == m["concept"] == f"{shape_of(m)} emoji"
        assert m["caption"].startswith(f"{m['concept']}, ") and m["captions"][1] == m["concept"]
        assert not any(CLDR[shape_of(m)][0] in c for c in m["captions"])


def test_an_emoji_emojibase_lacks_keeps_its_datasource_name(tarball, tmp_path):
    partial = make_emojibase_tarball(tmp_path / "emojibase-data-17.0.0.tgz", n_concepts=3)
    build(tarball, tmp_path / "out", emojibase=partial, captions_per_image=2)
    names = {shape_of(m): m["name"] for m in read_metadata(tmp_path / "out")}
    assert names == {s: CLDR[s][0] if k < 3 else f"{s} emoji" for k, s in enumerate(SHAPES)}


@pytest.mark.parametrize("count", [1, 2, 5, 16])
def test_each_image_has_captions_per_image_distinct_lines_canonical_first_then_plain_name(
    tarball, emojibase, tmp_path, count
):
    build(tarball, tmp_path / "out", emojibase=emojibase, captions_per_image=count)
    for m in read_metadata(tmp_path / "out"):
        lines = caption_file(tmp_path / "out", m["stem"])
        assert len(lines) == len(set(lines)) == count and lines == m["captions"]
        assert lines[0] == m["caption"] == make_caption(m["name"], m["tone"], m["style"], m["category"],
                                                        m["subcategory"])  # fmt: skip
        assert lines[1:2] == ([m["name"]] if count > 1 else [])
        assert all(line == line.strip() and line for line in lines)


def test_captions_are_the_same_on_every_build(tarball, emojibase, tmp_path):
    build(tarball, tmp_path / "a", emojibase=emojibase, captions_per_image=6)
    build(tarball, tmp_path / "b", emojibase=emojibase, captions_per_image=6)
    assert read_metadata(tmp_path / "a") == read_metadata(tmp_path / "b")


def test_unseen_phrasings_are_never_training_captions(cldr_built):
    meta = read_metadata(cldr_built)
    unseen = {c for m in meta for c in m["unseen_captions"]}
    assert len(unseen) == 3 * len(meta)  # three phrasings of each image, none shared
    lines = {line for m in meta for line in caption_file(cldr_built, m["stem"])}
    assert not unseen & lines  # no image trains on any image's unseen phrasing
    captions, _ = read_captions(cldr_built, "train")
    train = json.loads((cldr_built / "splits.json").read_text())["train"]
    assert len(captions) == sum(len(caption_file(cldr_built, s)) for s in train)  # every line a caption
    assert not unseen & set(captions)


def test_languages_en_ko_adds_korean_captions(tarball, emojibase, tmp_path):
    build(tarball, tmp_path / "ko", emojibase=emojibase, languages=("en", "ko"))
    for m in read_metadata(tmp_path / "ko"):
        korean = [c for c in m["captions"] if HANGUL.search(c)]
        assert CLDR[shape_of(m)][2] in korean and m["caption"] == caption_file(tmp_path / "ko", m["stem"])[0]
        assert not HANGUL.search(m["caption"])  # the canonical caption stays English
    build(tarball, tmp_path / "en", emojibase=emojibase)
    assert not any(HANGUL.search(c) for m in read_metadata(tmp_path / "en") for c in m["captions"])


@pytest.mark.parametrize(
    "kw", [{"captions_per_image": 0}, {"captions_per_image": -1}, {"languages": ("fr",)},
           {"languages": ("en", "fr")}, {"languages": ("ko", "en")}, {"languages": ()}],
)  # fmt: skip
def test_config_rejects_no_captions_and_unknown_languages(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        EmojiDatasetConfig(**kw)


def test_emojibase_hexcodes_match_without_variation_selectors():
    # emoji-datasource writes "2764-FE0F" where emojibase writes "2764"
    entries = [{"name": "HEAVY BLACK HEART", "unified": "2764-FE0F", "image": "2764-fe0f.png", "category": "Smileys",
                "subcategory": "heart", "sheet_x": 0, "sheet_y": 0, "has_img_google": True}]  # fmt: skip
    cldr = cldr_index([{"label": "red heart", "hexcode": "2764", "tags": ["love", "red heart"]}])
    (record,) = emoji_records(entries, "google", cldr=cldr, captions_per_image=3)
    assert record.parts.name == "red heart" and record.caption == "red heart, noto style (smileys, heart)"
    assert record.parts.keywords == ("love",) and "heavy black heart" in record.parts.aliases


def test_adding_emojibase_data_rebuilds_the_folder(tarball, emojibase, tmp_path):
    build(tarball, tmp_path / "out", captions_per_image=2)
    again = build(tarball, tmp_path / "out", emojibase=emojibase, captions_per_image=2)
    assert not again.reused and read_metadata(tmp_path / "out")[0]["name"] == "round circle"


def test_cached_tarballs_with_matching_sha512_are_used_without_npm(tarball, emojibase, tmp_path, monkeypatch):
    # Pin the synthetic tarballs' hashes, then hide npm: the cache must be enough.
    monkeypatch.setitem(PINNED_INTEGRITY, ("emoji-datasource", "16.0.0"), sha512_integrity(tarball))
    monkeypatch.setitem(PINNED_INTEGRITY, EMOJIBASE, sha512_integrity(emojibase))
    monkeypatch.setenv("PATH", "")
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(tarball, cache / tarball.name)
    shutil.copy(emojibase, cache / emojibase.name)
    assert fetch_npm_tarball("emoji-datasource", "16.0.0", cache) == cache / tarball.name
    s = build_emoji_dataset(EmojiDatasetConfig(size=SIZE), tmp_path / "out", cache_dir=cache, progress=False)
    assert s.images == 30 and read_metadata(tmp_path / "out")[0]["name"] == "round circle"


def test_missing_npm_is_a_one_line_error_saying_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "")
    code = main(["data", "emoji", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "npm not found" in err and "install" in err


def test_corrupt_cached_tarball_is_not_trusted(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "emoji-datasource-16.0.0.tgz").write_bytes(b"not the package")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(DataError, match="npm not found"):
        fetch_npm_tarball("emoji-datasource", "16.0.0", cache)


def test_tarball_without_emoji_json_names_the_file(tmp_path):
    bad = tmp_path / "emoji-datasource-16.0.0.tgz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("package/README.md")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DataError, match="package/emoji.json"):
        build(bad, tmp_path / "out")


@pytest.mark.slow
def test_real_npm_package_builds_32px_google(tmp_path):
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH")
    cache = tmp_path / "npm"
    t0 = time.perf_counter()
    s = build_emoji_dataset(EmojiDatasetConfig(), tmp_path / "emoji32", cache_dir=cache, progress=False)
    assert s.images == 3786 and s.concepts == 1911, s
    assert (cache / "emoji-datasource-16.0.0.tgz").is_file() and (cache / "emojibase-data-17.0.0.tgz").is_file()
    meta = read_metadata(tmp_path / "emoji32")
    snow = [m for m in meta if m["concept"] == "snowboarder" and m["tone"] == "light"]
    assert snow[0]["caption"] == "snowboarder, light skin tone, noto style (people & body, person sport)"
    heart = [m for m in meta if m["unified"] == "2764-FE0F"]
    assert heart[0]["name"] == "red heart" and heart[0]["concept"] == "heavy black heart"  # CLDR over datasource
    assert all(len(m["captions"]) == 16 for m in meta)
    assert len({m["caption"] for m in meta}) == len(meta)
    again = build_emoji_dataset(EmojiDatasetConfig(), tmp_path / "emoji32", cache_dir=cache, progress=False)
    assert again.reused and again.seconds < time.perf_counter() - t0
