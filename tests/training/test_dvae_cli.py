"""``dalle train dvae`` end to end on a tiny generated image folder."""

from __future__ import annotations

import json

import pytest
import torch

from dalle_zero.cli.main import main
from dalle_zero.models.dvae import DiscreteVAE
from tests.factories.folders import two_colour_folder


def test_cli_trains_resumes_and_reports(tmp_path, capsys):
    data = two_colour_folder(tmp_path / "data")
    out = tmp_path / "run"
    args = ["train", "dvae", "--data", str(data), "--out", str(out), "--config", "dvae_tiny", "--no-progress"]
    assert main([*args, "--steps", "4", "--batch-size", "4"]) == 0
    text = capsys.readouterr().out
    assert "16 px -> 8x8 codes of 64" in text and "on 9 images" in text
    assert "validation at step 4: PSNR" in text
    assert (out / "samples" / "dvae_recon_step_0000004.png").is_file()
    model = DiscreteVAE.from_pretrained(out / "model")
    assert model.config.image_size == 16
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["data"] == str(data.resolve()) and saved["loop"]["batch_size"] == 4

    # resume from the saved config (no --data, no --config) and extend the run
    assert main(["train", "dvae", "--out", str(out), "--resume", "--steps", "6", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 6


def test_cli_reports_a_missing_data_folder_as_a_user_error(tmp_path, capsys):
    code = main(["train", "dvae", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "data folder not found" in capsys.readouterr().err


def test_cli_rejects_an_unknown_preset(tmp_path, capsys):
    code = main(["train", "dvae", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--config", "nope"])
    assert code == 2
    assert "neither a file nor a preset" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["dvae_tiny", "dvae_emoji32", "dvae_paper"])
def test_presets_are_valid_train_configs(preset):
    from dalle_zero.config import load_config_source
    from dalle_zero.training.dvae import DVAETrainConfig

    config = DVAETrainConfig.from_dict(load_config_source(preset, prefix="dvae_")[0])
    assert config.model.grid_size >= 8


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_run_trains_the_channels_last_dvae(tmp_path, strategy):
    import os
    import subprocess
    import sys

    data = two_colour_folder(tmp_path / "data")
    out = tmp_path / strategy
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dalle_zero.cli.main", "train", "dvae", "--data", str(data), "--out", str(out),
           "--config", "dvae_tiny", "--steps", "4", "--batch-size", "2", "--strategy", strategy, "--no-progress"]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    model = DiscreteVAE.from_pretrained(out / "model")  # FSDP gathered and saved what the ranks trained
    assert model.encode(torch.rand(1, 3, 16, 16)).shape == (1, 8, 8)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 4


def test_training_gives_the_same_weights_whatever_the_global_rng_drew_before(tmp_path):
    # A fresh process starts torch's global stream from its own seed; the weights must depend on
    # --seed alone, so two runs that differ only in what was drawn before the command must agree.
    from safetensors.torch import load_file

    data = two_colour_folder(tmp_path / "data")
    weights = []
    for k in (1, 2):
        torch.manual_seed(1000 + k)
        torch.rand(k * 7)
        out = tmp_path / f"run{k}"
        args = ["train", "dvae", "--data", str(data), "--out", str(out), "--config", "dvae_tiny", "--no-progress"]
        assert main([*args, "--steps", "2", "--batch-size", "4"]) == 0
        weights.append(load_file(str(out / "model" / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
