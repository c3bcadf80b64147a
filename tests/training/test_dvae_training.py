"""Training a dVAE with the shared loop: it learns, evaluation writes a grid, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from dalle_zero.models.dvae import DiscreteVAE, DVAEConfig
from dalle_zero.training.dvae import DVAETask, DVAETrainConfig, evaluate_reconstruction
from dalle_zero.training.loop import LoopConfig, train

MODEL = DVAEConfig(image_size=16, group_count=2, n_blk_per_group=1, n_hid=16, n_init=16, vocab_size=64)


class BlockImages(Dataset):
    """A handful of 16×16 images of flat 4×4 blocks painted from a palette of 6 colours."""

    def __init__(self, n: int = 8, colors: int = 6, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        palette = torch.rand(colors, 3, generator=g)
        blocks = palette[torch.randint(0, colors, (n, 4, 4), generator=g)].permute(0, 3, 1, 2)  # (n, 3, 4, 4)
        self.images = blocks.repeat_interleave(4, 2).repeat_interleave(4, 3).contiguous()  # (n, 3, 16, 16)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        index, _seed = key
        return {"pixels": self.images[index], "caption": "", "stem": str(index)}


def _config(steps: int, **loop_kw) -> DVAETrainConfig:
    loop = LoopConfig(
        **{"steps": steps, "batch_size": 4, "log_every": 5, "checkpoint_every": 1000, "ema_decay": None, **loop_kw}
    )
    return DVAETrainConfig(
        model=MODEL,
        loop=loop,
        lr_start=3e-3,
        lr_end=1e-3,
        lr_fraction=1.0,
        tau_fraction=0.66,
        kl_weight_end=0.5,
        kl_weight_fraction=0.1,
        eval_images=8,
        grid_images=8,
    )


def _train(run_dir: Path, config: DVAETrainConfig, **kw) -> DiscreteVAE:
    torch.manual_seed(0)
    model = DiscreteVAE(config.model)
    data = BlockImages()
    task = DVAETask(config, train_data=data, eval_data=data)
    train(model, task, config.loop, run_dir, train_config=config, progress=False, **kw)
    return model


@pytest.mark.slow
def test_tiny_dvae_overfits_a_handful_of_images(tmp_path):
    data = BlockImages()
    torch.manual_seed(0)
    before = evaluate_reconstruction(DiscreteVAE(MODEL).eval(), data, n_images=8)["psnr"]
    model = _train(tmp_path, _config(steps=300))
    after = evaluate_reconstruction(model.eval(), data, n_images=8)["psnr"]
    assert after > before + 5.0, (before, after)


def test_short_run_logs_the_paper_metrics_evaluates_and_saves_the_model(tmp_path):
    _train(tmp_path, _config(steps=30))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    expected = {"recon_nll", "recon_bpd", "kl", "tau", "kl_weight", "lr", "psnr", "perplexity", "code_usage"}
    assert expected <= set(train_rows[0])
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert train_rows[0]["tau"] > train_rows[-1]["tau"] and train_rows[-1]["kl_weight"] == 0.5
    assert {"val/psnr", "val/perplexity", "val/code_usage", "val/recon_bpd"} <= set(rows[-1])
    assert (tmp_path / "samples" / "dvae_recon_step_0000030.png").is_file()
    assert DiscreteVAE.from_pretrained(tmp_path / "model").config == MODEL


def test_resume_matches_uninterrupted_run(tmp_path):
    config = _config(steps=12, checkpoint_every=5, ema_decay=0.9)
    full = _train(tmp_path / "full", config)
    _train(tmp_path / "cut", config, stop_after=7)
    torch.manual_seed(123)  # a fresh process: other initial weights and RNG state must not matter
    resumed = DiscreteVAE(config.model)
    data = BlockImages()
    train(
        resumed,
        DVAETask(config, train_data=data, eval_data=data),
        config.loop,
        tmp_path / "cut",
        train_config=config,
        progress=False,
        resume=True,
    )
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    ema_full = DiscreteVAE.from_pretrained(tmp_path / "full" / "model").state_dict()
    ema_cut = DiscreteVAE.from_pretrained(tmp_path / "cut" / "model").state_dict()
    assert all(torch.equal(ema_full[k], ema_cut[k]) for k in ema_full)


def test_comparison_grid_has_original_and_reconstruction_rows(tmp_path):
    from PIL import Image

    from dalle_zero.training.dvae import save_comparison_grid

    originals = torch.zeros(3, 3, 16, 16)
    recons = torch.ones(3, 3, 16, 16)
    path = save_comparison_grid(originals, recons, tmp_path / "grid.png", per_row=8, min_cell=32)
    img = Image.open(path)
    assert img.size == (3 * 34 + 2, 2 * 34 + 2)  # 3 columns, an original row and a reconstruction row
    assert img.getpixel((10, 10)) == (0, 0, 0) and img.getpixel((10, 44)) == (255, 255, 255)
