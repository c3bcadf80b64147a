"""Specification of ``dalle train clip`` end to end on a tiny image-caption folder."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from dalle_zero.cli.main import main
from dalle_zero.models.clip import DalleCLIP
from tests.factories.clip import COLOURS, SHAPES, draw_shape

# `dalle train clip` reads folders through the data package's ImageTextFolder
pytest.importorskip("dalle_zero.data.folder")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """images/<stem>.png + .txt for 12 shapes at two sizes; splits.json holds out 4 as validation."""
    root = tmp_path_factory.mktemp("shapes")
    (root / "images").mkdir()
    stems = []
    for c, rgb in COLOURS.items():
        for s in SHAPES:
            stem = f"{c}_{s}"
            pixels = (draw_shape(s, rgb, 20) * 255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(root / "images" / f"{stem}.png")
            (root / "images" / f"{stem}.txt").write_text(f"a {c} {s}")
            stems.append(stem)
    splits = {"train": stems[:-4], "validation": stems[-4:], "unseen_concepts": [], "unseen_compositions": []}
    (root / "splits.json").write_text(json.dumps(splits))
    tok = root.parent / (root.name + "_tok")
    assert main(["train", "tokenizer", "--data", str(root), "--out", str(tok), "--vocab-size", "280",
                 "--text-seq-len", "8"]) == 0  # fmt: skip
    return root, tok


def test_cli_trains_resumes_refuses_overwrite_and_reports_retrieval(folder, tmp_path, capsys):
    data, tok = folder
    run = tmp_path / "run"
    args = ["train", "clip", "--data", str(data), "--tokenizer", str(tok), "--out", str(run), "--config", "clip_tiny"]
    assert main([*args, "--steps", "6", "--batch-size", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "retrieval at step 6" in out and "validation_i2t_top1=" in out
    config = json.loads((run / "train_config.json").read_text())
    assert config["model"]["text_seq_len"] == 8 and config["data"] == str(data.resolve())
    clip = DalleCLIP.from_pretrained(run / "model")
    assert clip.config.image_size == 16
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val/validation_pairs"] == 4

    assert main([*args, "--steps", "6", "--no-progress"]) == 2  # an existing run is never overwritten
    assert "already holds a training run" in capsys.readouterr().err
    assert main(["train", "clip", "--out", str(run), "--resume", "--steps", "8", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8


def test_cli_reports_missing_inputs_in_one_line(folder, tmp_path, capsys):
    data, tok = folder
    code = main(["train", "clip", "--data", str(data), "--tokenizer", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "r"), "--config", "clip_tiny"])  # fmt: skip
    assert code == 2 and "dalle: error: model folder not found" in capsys.readouterr().err
    code = main(["train", "clip", "--data", str(data), "--tokenizer", str(tok), "--out", str(tmp_path / "r"),
                 "--config", "no_such_preset"])  # fmt: skip
    assert code == 2 and "neither a file nor a preset" in capsys.readouterr().err
    code = main(["train", "clip", "--out", str(tmp_path / "r")])
    assert code == 2 and "--data is required" in capsys.readouterr().err


def test_cli_dvae_shows_half_the_images_as_the_dvae_decodes_them(folder, tmp_path, capsys):
    from dalle_zero.models.dvae import DiscreteVAE, DVAEConfig

    data, tok = folder
    dvae = DiscreteVAE(DVAEConfig(image_size=16, group_count=2, n_blk_per_group=1, n_hid=8, n_init=8, vocab_size=16))
    dvae.save_pretrained(tmp_path / "dvae" / "model")  # a run folder's layout
    run = tmp_path / "run"
    args = ["train", "clip", "--data", str(data), "--tokenizer", str(tok), "--out", str(run), "--config", "clip_tiny"]
    assert main([*args, "--dvae", str(tmp_path / "dvae"), "--steps", "3", "--batch-size", "4", "--no-progress"]) == 0
    config = json.loads((run / "train_config.json").read_text())
    assert config["dvae"] == str((tmp_path / "dvae" / "model").resolve()) and config["recon_prob"] == 0.5
    code = main([*args[:-4], "--out", str(tmp_path / "r2"), "--dvae", str(tmp_path / "nope"), "--config", "clip_tiny"])
    assert code == 2 and "dalle: error: model or run folder not found" in capsys.readouterr().err
