"""The emoji dataset builder on a tiny synthetic ``emoji-datasource`` tarball (offline), and once for real."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalle_zero.cli.main import main
from dalle_zero.data.emoji import (
    EmojiDatasetConfig,
    build_emoji_dataset,
    build_emoji_dataset_from_tarballs,
    concept_names,
    make_caption,
)
from dalle_zero.data.folder import ImageTextFolder
from dalle_zero.data.npm import PINNED_INTEGRITY, fetch_npm_tarball, sha512_integrity
from dalle_zero.errors import DataError
from tests.demo_data import SIZE, make_emoji_tarball


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    return make_emoji_tarball(tmp_path_factory.mktemp("npm") / "emoji-datasource-16.0.0.tgz")


def build(tarball: Path, out: Path, **kw) -> object:
    config = EmojiDatasetConfig(size=SIZE, **kw)
    return build_emoji_dataset_from_tarballs(config, out, {"emoji-datasource": tarball}, progress=False)


def read_metadata(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]


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
        assert (root / "images" / f"{m['stem']}.txt").read_text().strip() == m["caption"]
        assert m["caption"] == m["caption"].lower() and m["style"] in ("google", "twitter")
        assert set(m) >= {"stem", "caption", "concept", "tone", "style", "category", "subcategory", "split"}
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


def test_built_folder_loads_as_image_text_folder_by_split(tarball, tmp_path):
    build(tarball, tmp_path / "out", styles=("google", "twitter"))
    splits = json.loads((tmp_path / "out" / "splits.json").read_text())
    train = ImageTextFolder(tmp_path / "out", split="train")
    assert sorted(train.stems) == sorted(splits["train"]) and not train.skipped
    assert train[0]["pixels"].shape == (3, SIZE, SIZE)


def test_cached_tarball_with_matching_sha512_is_used_without_npm(tarball, tmp_path, monkeypatch):
    # Pin the synthetic tarball's hash, then hide npm: the cache must be enough.
    monkeypatch.setitem(PINNED_INTEGRITY, ("emoji-datasource", "16.0.0"), sha512_integrity(tarball))
    monkeypatch.setenv("PATH", "")
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(tarball, cache / tarball.name)
    assert fetch_npm_tarball("emoji-datasource", "16.0.0", cache) == cache / tarball.name
    s = build_emoji_dataset(EmojiDatasetConfig(size=SIZE), tmp_path / "out", cache_dir=cache, progress=False)
    assert s.images == 30


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
    assert (cache / "emoji-datasource-16.0.0.tgz").is_file()
    meta = read_metadata(tmp_path / "emoji32")
    snow = [m for m in meta if m["concept"] == "snowboarder" and m["tone"] == "light"]
    assert snow[0]["caption"] == "snowboarder, light skin tone, noto style (people & body, person sport)"
    assert len({m["caption"] for m in meta}) == len(meta)
    again = build_emoji_dataset(EmojiDatasetConfig(), tmp_path / "emoji32", cache_dir=cache, progress=False)
    assert again.reused and again.seconds < time.perf_counter() - t0
