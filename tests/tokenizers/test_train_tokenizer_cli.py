"""Specification of ``dalle train tokenizer``."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from dalle_zero.cli.main import main
from dalle_zero.tokenizers.bpe import BPETokenizer


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
