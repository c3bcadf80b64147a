"""CSV / JSONL manifests of image,caption rows: the folder's items, bad rows skipped and counted, splits by key."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from dalle_zero.cli.main import main
from dalle_zero.data.folder import ImageTextFolder
from dalle_zero.data.manifest import ImageTextManifest
from dalle_zero.data.sources import data_folder, open_image_text_dataset, read_captions
from dalle_zero.data.tokens import TokenDataset
from dalle_zero.data.transforms import ResizeTransform
from dalle_zero.errors import DataError
from tests.factories.folders import good_folder, noise_folder, write_image


def write_csv(path: Path, rows: list[dict[str, str]], fields=("image", "caption")) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_csv_manifest_gives_exactly_the_items_of_the_image_folder(tmp_path):
    root = noise_folder(tmp_path / "images", n=6)
    folder = ImageTextFolder(root, ResizeTransform(resolution=8), seed=3)
    rows = [{"image": f"images/{p.name}", "caption": p.with_suffix(".txt").read_text(), "extra": "x"}
            for p, _ in folder.items]  # fmt: skip
    manifest = write_csv(tmp_path / "pairs.csv", rows, fields=("image", "caption", "extra"))
    pairs = open_image_text_dataset(manifest, ResizeTransform(resolution=8), seed=3)
    assert isinstance(pairs, ImageTextManifest) and len(pairs) == len(folder) and pairs.stems == folder.stems
    for key in (0, 3, (2, 17)):
        a, b = folder[key], pairs[key]
        assert a["caption"] == b["caption"] and a["stem"] == b["stem"] and torch.equal(a["pixels"], b["pixels"])
    assert data_folder(manifest) == tmp_path


def test_jsonl_rows_take_caption_lists_keys_and_absolute_paths_and_bad_rows_are_skipped_and_counted(tmp_path):
    good_folder(tmp_path / "img", n=3)
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    lines = [
        json.dumps({"image": "img/img0.png", "caption": ["a red thing", "a crimson thing"], "key": "first"}),
        json.dumps({"image": str((tmp_path / "img" / "img1.png").resolve()), "caption": "picture one"}),
        json.dumps({"image": "img/img2.png", "caption": "  \n "}),  # empty caption
        json.dumps({"image": "img/nope.png", "caption": "gone"}),  # missing image file
        json.dumps({"image": "img/corrupt.png", "caption": "broken"}),
        json.dumps({"image": "img/empty.png", "caption": "nothing"}),
        json.dumps({"caption": "no image field"}),
        json.dumps(["not", "an", "object"]),
        "{not json",
        "",
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    pairs = ImageTextManifest(tmp_path / "pairs.jsonl")
    assert pairs.stems == ["first", "img1"]
    assert pairs.captions(0) == ["a red thing", "a crimson thing"]
    assert dict(pairs.skipped) == {"empty caption": 1, "missing image file": 1, "unreadable image": 1,
                                   "zero-byte image": 1, "bad row": 3}  # fmt: skip
    report = pairs.report_skipped()
    assert "2 pairs" in report and "3 bad row" in report and "\n" not in report
    assert {pairs[(0, s)]["caption"] for s in range(20)} == {"a red thing", "a crimson thing"}


def test_a_caption_list_that_is_empty_or_holds_a_non_string_is_skipped_and_counted(tmp_path):
    good_folder(tmp_path / "img", n=4)
    rows = [
        {"image": "img/img0.png", "caption": ["a red thing", "a crimson thing"]},
        {"image": "img/img1.png", "caption": []},  # empty caption
        {"image": "img/img2.png", "caption": ["", "   "]},  # empty caption
        {"image": "img/img3.png", "caption": ["a blue thing", 7]},  # bad row
        {"image": "img/img3.png", "caption": [None]},  # bad row
        {"image": "img/img3.png", "caption": [["nested"]]},  # bad row
        {"image": "img/img3.png", "caption": ["one caption only"], "key": "single"},
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = ImageTextManifest(tmp_path / "pairs.jsonl")
    assert pairs.stems == ["img0", "single"]
    assert pairs.captions(1) == ["one caption only"]
    assert pairs.skipped == {"empty caption": 2, "bad row": 3}
    report = pairs.report_skipped()
    assert "2 pairs" in report and "2 empty caption" in report and "3 bad row" in report and "\n" not in report
    assert {pairs[(1, s)]["caption"] for s in range(10)} == {"one caption only"}


def test_a_manifest_without_its_columns_or_file_is_a_one_line_error(tmp_path):
    write_csv(tmp_path / "bad.csv", [{"path": "a.png", "text": "x"}], fields=("path", "text"))
    with pytest.raises(DataError, match=r"bad\.csv: no 'image' or 'caption' column"):
        ImageTextManifest(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        open_image_text_dataset(tmp_path / "missing.jsonl")
    write_csv(tmp_path / "none.csv", [{"image": "nope.png", "caption": "x"}])
    with pytest.raises(ValueError, match="no usable image-caption pairs.*1 missing image file"):
        ImageTextManifest(tmp_path / "none.csv")


def test_splits_json_beside_the_manifest_splits_it_by_key(tmp_path):
    good_folder(tmp_path / "img", n=4)
    rows = [{"image": f"img/img{i}.png", "caption": f"picture {i}"} for i in range(4)]
    manifest = write_csv(tmp_path / "pairs.csv", rows)
    with pytest.raises(FileNotFoundError, match="no splits.json"):
        ImageTextManifest(manifest, split="train")
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["img0", "img1", "img3"], "validation": ["img2"]}))
    assert ImageTextManifest(manifest, split="train").stems == ["img0", "img1", "img3"]
    assert ImageTextManifest(manifest, split="validation").stems == ["img2"]
    assert read_captions(manifest, "validation")[0] == ["picture 2"]


def test_cli_trains_the_tokenizer_and_the_dvae_and_encodes_from_a_manifest(tmp_path, capsys):
    rows = []
    for i in range(10):
        write_image(tmp_path / "pics" / f"p{i}.png", size=(24, 24), colour=(20 * i, 90, 200 - 15 * i))
        rows.append({"image": f"pics/p{i}.png", "caption": f"a square of colour number {i}"})
    manifest = write_csv(tmp_path / "pairs.csv", rows)
    (tmp_path / "splits.json").write_text(json.dumps({"train": [f"p{i}" for i in range(8)],
                                                      "validation": ["p8", "p9"]}))  # fmt: skip
    assert main(["train", "tokenizer", "--data", str(manifest), "--out", str(tmp_path / "tok"),
                 "--vocab-size", "280", "--text-seq-len", "16"]) == 0  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", "dvae", "--data", str(manifest), "--out", str(run), "--config", "dvae_tiny", "--steps", "2",
                 "--batch-size", "4", "--no-progress"]) == 0  # fmt: skip
    assert "on 8 images" in capsys.readouterr().out
    tokens = tmp_path / "tokens"
    assert main(["encode", "--dvae", str(run), "--data", str(manifest), "--out", str(tokens), "--no-progress"]) == 0
    assert sorted(TokenDataset(tokens, split="validation").stems) == ["p8", "p9"]
