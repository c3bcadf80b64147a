"""Specification of ``dalle train tokenizer``."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from dalle_zero.cli.main import main
from dalle_zero.data.shard_writer import write_shards
from dalle_zero.data.sources import read_captions
from dalle_zero.tokenizers.bpe import BPETokenizer
from tests.factories.folders import caption_folder, write_jsonl_manifest


def _folder(root, captions: dict[str, str], splits: dict | None = None):
    (root / "images").mkdir(parents=True)
    for stem, caption in captions.items():
        Image.new("RGB", (4, 4)).save(root / "images" / f"{stem}.png")
        (root / "images" / f"{stem}.txt").write_text(caption)
    (root / "README.txt").write_text("not a caption: zebra zebra zebra")
    if splits is not None:
        (root / "splits.json").write_text(json.dumps(splits))
    return root


def test_cli_trains_on_the_train_split_only_and_reports_statistics(tmp_path, capsys):
    train = {f"t{i}": f"a {c} square number {i}" for i, c in enumerate(["red", "green", "blue"] * 4)}
    held_out = {"v0": "a secret validation caption xylophone"}
    data = _folder(tmp_path / "data", {**train, **held_out}, {"train": list(train), "validation": ["v0"]})
    code = main(
        [
            "train",
            "tokenizer",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "tok"),
            "--vocab-size",
            "300",
            "--text-seq-len",
            "6",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "read 12 captions" in out and "vocab size:" in out
    assert "tokens per caption: mean" in out and "truncated at text_seq_len=6:" in out
    tok = BPETokenizer.from_pretrained(tmp_path / "tok")
    assert tok.text_seq_len == 6
    vocab = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["vocab"]
    assert not any("xylo" in t or "zebra" in t for t in vocab)  # neither held-out nor README text leaked


def test_every_line_of_a_caption_file_is_a_caption_of_its_own(tmp_path, capsys):
    train = {f"t{i}": f"a {c} square\n{c} square, noto style\n\n  square number {i}  \n" for i, c in
             enumerate(["red", "green", "blue"] * 2)}  # fmt: skip
    held_out = {"v0": "a validation caption\nxylophone zebra unseen phrasing\n"}
    data = _folder(tmp_path / "data", {**train, **held_out}, {"train": list(train), "validation": ["v0"]})
    captions, _ = read_captions(data, "train")
    assert len(captions) == 18 and "a red square" in captions and "square number 4" in captions
    assert not [c for c in captions if "xylophone" in c or "\n" in c]
    assert read_captions(data, "validation")[0] == ["a validation caption", "xylophone zebra unseen phrasing"]
    code = main(["train", "tokenizer", "--data", str(data), "--out", str(tmp_path / "tok"), "--vocab-size", "300"])
    assert code == 0 and "read 18 captions" in capsys.readouterr().out


def test_shards_and_a_manifest_give_every_caption_line_as_a_caption(tmp_path):
    lines = {"a": ["round circle", "circle emoji, noto style"], "b": ["plain square"], "c": ["x", "y", "z"]}
    folder = caption_folder(tmp_path / "folder", lines)
    expected = sorted(line for stem_lines in lines.values() for line in stem_lines)
    write_shards(folder, tmp_path / "shards")
    manifest = write_jsonl_manifest(folder, tmp_path / "pairs.jsonl")
    for source in (folder, tmp_path / "shards", manifest):
        assert sorted(read_captions(source, "train")[0]) == expected, source


def test_cli_reports_a_missing_folder_in_one_line(tmp_path, capsys):
    code = main(
        [
            "train",
            "tokenizer",
            "--data",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "t"),
            "--vocab-size",
            "300",
        ]
    )
    assert code == 2
    assert "dalle: error: data folder not found" in capsys.readouterr().err


@pytest.mark.parametrize("vocab", ["10"])
def test_cli_rejects_a_too_small_vocabulary(tmp_path, capsys, vocab):
    data = _folder(tmp_path / "data", {"a": "red square", "b": "blue circle"})
    code = main(["train", "tokenizer", "--data", str(data), "--out", str(tmp_path / "t"), "--vocab-size", vocab])
    assert code == 2
    assert "vocab_size must be an integer >= 257" in capsys.readouterr().err
