"""ImageTextFolder: corrupt samples are skipped and counted, never fatal; keys with seeds are reproducible."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_zero.data.folder import ImageTextFolder
from dalle_zero.data.transforms import DVAETransform
from tests.factories.folders import good_folder, write_image


def test_corrupt_files_are_skipped_and_counted(tmp_path, caplog):
    root = good_folder(tmp_path / "d")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "truncated.txt").write_text("cut short")
    (root / "zero.png").write_bytes(b"")
    (root / "zero.txt").write_text("nothing here")
    (root / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(300))
    (root / "noise.txt").write_text("random bytes")
    write_image(root / "silent.png")
    (root / "silent.txt").write_text("  \n\n")
    write_image(root / "orphan.png")
    with caplog.at_level(logging.WARNING):
        ds = ImageTextFolder(root)
    assert len(ds) == 4 and sorted(ds.stems) == [f"img{i}" for i in range(4)]
    assert ds.skipped == {"unreadable image": 2, "zero-byte image": 1, "empty caption": 1, "no caption file": 1}
    line = ds.report_skipped()
    assert "4 pairs" in line and "2 unreadable image" in line and "\n" not in line
    assert "skipped" in caplog.text
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    assert next(iter(loader))["pixels"].shape == (4, 3, 16, 20)


def test_an_image_broken_after_indexing_is_replaced_not_fatal(tmp_path):
    root = good_folder(tmp_path / "d", n=3)
    ds = ImageTextFolder(root)
    (root / "img1.png").write_bytes(b"garbage")
    item = ds[1]
    assert item["stem"] == "img2" and ds.skipped["load error"] == 1


def test_items_are_rgb_floats_in_unit_range_with_alpha_on_white(tmp_path):
    root = tmp_path / "d"
    write_image(root / "a.png", mode="RGBA", colour=(255, 0, 0, 0))  # fully transparent red
    (root / "a.txt").write_text("a transparent square")
    item = ImageTextFolder(root)[0]
    assert item["pixels"].dtype == torch.float32 and item["pixels"].shape == (3, 16, 20)
    assert torch.allclose(item["pixels"], torch.ones_like(item["pixels"]))  # white, not red
    assert item["caption"] == "a transparent square" and item["stem"] == "a"


def test_split_restricts_to_the_stems_of_splits_json(tmp_path):
    root = good_folder(tmp_path / "d")
    (root / "splits.json").write_text(json.dumps({"train": ["img0", "img2"], "validation": ["img1"]}))
    assert sorted(ImageTextFolder(root, split="train").stems) == ["img0", "img2"]
    assert ImageTextFolder(root, split="validation").stems == ["img1"]
    other = tmp_path / "other_splits.json"
    other.write_text(json.dumps({"mine": ["img3"]}))
    assert ImageTextFolder(root, split="mine", splits_file=other).stems == ["img3"]
    with pytest.raises(ValueError, match="no split 'test'"):
        ImageTextFolder(root, split="test")


def test_split_without_splits_json_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no splits.json"):
        ImageTextFolder(good_folder(tmp_path / "d"), split="train")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"train": ["img0"]', "not valid JSON"),
        ('["img0", "img1"]', "expected an object mapping split names to lists of stems"),
        ('{"train": "img0"}', "expected an object mapping split names to lists of stems"),
        ('{"validation": ["img1"]}', "no split 'train'"),
    ],
)
def test_every_splits_json_reader_gives_the_same_one_line_error(tmp_path, content, message):
    from dalle_zero.data.metadata import read_dataset_split, read_dataset_splits
    from dalle_zero.data.sources import read_captions
    from dalle_zero.errors import DataError

    root = good_folder(tmp_path / "d")
    (root / "splits.json").write_text(content)
    readers = [
        lambda: ImageTextFolder(root, split="train"),
        lambda: read_captions(root, "train"),
        lambda: read_dataset_split(root, "train"),
    ]
    if "no split" not in message:  # read_dataset_splits reads every split and asks for none
        readers.append(lambda: read_dataset_splits(root))
    for read in readers:
        with pytest.raises(ValueError, match=message) as caught:
            read()
        assert str(root / "splits.json") in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(DataError):
        read_dataset_split(root, "train")  # the evaluator's data errors stay DataErrors


def test_images_are_found_recursively_in_several_formats(tmp_path):
    root = tmp_path / "d"
    for i, fmt in enumerate(("png", "jpeg", "webp")):
        write_image(root / f"sub{i}" / f"x{i}.{'jpg' if fmt == 'jpeg' else fmt}", fmt=fmt.upper())
        (root / f"sub{i}" / f"x{i}.txt").write_text(f"a {fmt} file")
    assert sorted(ImageTextFolder(root).stems) == ["x0", "x1", "x2"]


def test_one_of_several_caption_lines_is_chosen_by_the_sample_seed(tmp_path):
    root = tmp_path / "d"
    write_image(root / "a.png")
    (root / "a.txt").write_text("first\nsecond\nthird\n")
    ds = ImageTextFolder(root)
    chosen = {ds[(0, seed)]["caption"] for seed in range(30)}
    assert chosen == {"first", "second", "third"}
    assert all(ds[(0, 7)]["caption"] == ds[(0, 7)]["caption"] for _ in range(3))


def test_caption_files_are_read_as_utf8_whatever_the_locale(tmp_path):
    # The emoji builder writes Korean captions as UTF-8; under a C (ASCII) or cp1252 locale the
    # locale's encoding would turn them into replacement characters.
    root = tmp_path / "d"
    write_image(root / "a.png")
    (root / "a.txt").write_text("둥근 원\nround circle\n", encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    script = (
        "import sys; from dalle_zero.data.folder import ImageTextFolder; "
        "print(ascii(ImageTextFolder(sys.argv[1]).captions(0)))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(root)], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ascii(["둥근 원", "round circle"])


def test_random_transform_is_reproducible_from_the_key(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root.mkdir() or root / "a.png")
    (root / "a.txt").write_text("noise")
    ds = ImageTextFolder(root, DVAETransform(resolution=32))
    assert torch.equal(ds[(0, 5)]["pixels"], ds[(0, 5)]["pixels"])
    assert any(not torch.equal(ds[(0, 5)]["pixels"], ds[(0, s)]["pixels"]) for s in range(6, 12))


def test_aspect_ratio_filter_skips_panoramas(tmp_path):
    root = good_folder(tmp_path / "d", n=2)
    write_image(root / "wide.png", size=(50, 10))
    (root / "wide.txt").write_text("a panorama")
    assert len(ImageTextFolder(root)) == 3
    ds = ImageTextFolder(root, filter_aspect=True)
    assert len(ds) == 2 and ds.skipped == {"aspect ratio outside [1/2, 2]": 1}


def test_folder_with_nothing_usable_is_an_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no usable image-caption pairs"):
        ImageTextFolder(tmp_path / "d")


def test_another_view_of_the_pairs_shares_the_index_and_changes_only_the_transform(tmp_path):
    from dalle_zero.data.transforms import ResizeTransform
    from dalle_zero.training.dvae import DVAETrainConfig, build_datasets

    root = good_folder(tmp_path / "d")
    pairs = ImageTextFolder(root, ResizeTransform(resolution=16))
    view = pairs.with_transform(ResizeTransform(resolution=8))
    assert view.items is pairs.items and len(view) == len(pairs) and pairs.transform.resolution == 16
    assert view[0]["pixels"].shape == (3, 8, 8) and pairs[0]["pixels"].shape == (3, 16, 16)
    assert view[0]["caption"] == pairs[0]["caption"] and view[0]["stem"] == pairs[0]["stem"]

    # a dVAE on a folder without splits.json evaluates on its training images, indexed once
    config = DVAETrainConfig.from_dict({"data": str(root), "model": {"image_size": 16}})
    train, held_out, _ = build_datasets(config)
    assert held_out.items is train.items
