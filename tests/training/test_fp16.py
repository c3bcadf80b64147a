"""fp16 training with per-resblock gradient scales (paper App. D): underflow, skipped updates, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dalle_zero.cli.main import main
from dalle_zero.models.transformer import DalleTransformer, TransformerConfig
from dalle_zero.training import checkpoint as ckpt
from dalle_zero.training.grad_scales import DECREASE_EVERY, GROWTH, ResblockGradScales
from dalle_zero.training.loop import LoopConfig, train
from dalle_zero.training.precision import check_fp16_support, make_precision
from dalle_zero.training.prior import PriorTask
from dalle_zero.training.underflow import fp16_resblock_gradients, largest_finite_log2, zero_fraction
from tests.factories.prior import prior_config, train_prior, train_prior_argv


def _model(n_layer: int = 4) -> DalleTransformer:
    torch.manual_seed(0)
    config = TransformerConfig(
        n_layer=n_layer, n_head=2, n_embd=32, text_vocab_size=50, text_seq_len=6, image_vocab_size=16, image_grid=4
    )
    model = DalleTransformer(config)
    for head in (model.text_head, model.image_head):  # zero at init: nothing would reach the blocks
        torch.nn.init.normal_(head.weight, std=0.02)
    return model


def test_one_global_scale_underflows_the_early_blocks_where_per_resblock_scales_keep_them():
    # A 4-layer model cannot grow the spread of gradient sizes that 128 resblocks do, so it is made here:
    # the gradient reaching layers 0-1 from above is 2^26 times smaller than the one reaching layers 2-3.
    model = _model()

    def shrink(module, inputs, out):
        out.register_hook(lambda g: g * 2.0**-26)

    model.blocks[1].register_forward_hook(shrink)
    g = torch.Generator().manual_seed(1)
    text, image = torch.randint(1, 50, (8, 6), generator=g), torch.randint(0, 16, (8, 16), generator=g)

    def loss_fn(m):
        return m.loss(text, image)[0] * 2.0**11  # a summed loss: the late blocks overflow above 2^7

    model.zero_grad()
    loss_fn(model).backward()
    fp32 = [[p.grad.clone() for p in group] for group in model.resblock_parameters()]
    best, best_global = largest_finite_log2(model, loss_fn, low=0, high=40)
    assert best_global is not None and best_global == int(best.min())
    per_resblock = (2.0 ** best.clamp(7, 24)).float()  # where the paper's dynamics settle, within its clamp
    one, _ = fp16_resblock_gradients(model, loss_fn, torch.full((8,), 2.0**best_global))
    own, finite = fp16_resblock_gradients(model, loss_fn, per_resblock)
    assert bool(finite.all())
    early_one = zero_fraction([g for b in one[:4] for g in b], [g for b in fp32[:4] for g in b])
    early_own = zero_fraction([g for b in own[:4] for g in b], [g for b in fp32[:4] for g in b])
    print(f"zero gradients in layers 0-1: {early_one:.3f} under 2^{best_global}, {early_own:.3f} per resblock")
    assert early_one > 0.1
    assert early_own < early_one / 20


def test_scales_grow_after_clean_updates_fall_once_per_window_and_stay_in_range():
    s = ResblockGradScales(3, world_size=2)
    assert s.scales.tolist() == [2 * 2.0**13] * 3
    clean, bad = torch.tensor([True, True, True]), torch.tensor([True, False, True])
    assert s.update(clean, 0) is True
    assert s.scales[0] == pytest.approx(2 * 2.0**13 * GROWTH)
    assert s.update(bad, 1) is False
    assert s.scales[1] == pytest.approx(2 * 2.0**13 * GROWTH / math.sqrt(2))
    before = s.scales[1].item()
    assert s.update(bad, 1 + DECREASE_EVERY - 1) is False  # within 125 updates: skipped, not divided
    assert s.scales[1].item() == before
    s.update(bad, 1 + DECREASE_EVERY)
    assert s.scales[1].item() == pytest.approx(before / math.sqrt(2))
    for step in range(200):
        s.update(torch.tensor([False, True, True]), 1000 + step * DECREASE_EVERY)
    assert s.scales[0].item() == 2 * 2.0**7  # clamped to [M·2^7, M·2^24]
    assert torch.equal(s.multipliers, (s.scales / 2).float())  # the backward multiplies by scale / M


def test_a_nonfinite_in_one_resblock_lowers_only_its_scale_and_skips_the_update(data, tmp_path):
    cfg = prior_config(data, loop={"steps": 3, "precision": "fp16", "ema_decay": None, "checkpoint_every": 3})
    model = DalleTransformer(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def poison(module, inputs, out):  # every step: an Inf in layer 1's MLP (resblock 3) in the backward pass
        if out.requires_grad:  # (not in the evaluation)
            out.register_hook(lambda g: torch.full_like(g, math.inf))

    model.blocks[1].mlp.fc.register_forward_hook(poison)
    train(model, PriorTask(cfg), cfg.loop, tmp_path, train_config=cfg, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # all three updates skipped
    state = ckpt.load_checkpoint(ckpt.latest_step_dir(tmp_path)).state["precision"]
    log2 = state["scales"].log2()
    assert log2[3].item() == pytest.approx(13 - 0.5)  # divided by √2 once: not twice within 125 updates
    others = torch.cat([log2[:3], log2[4:]])
    assert torch.allclose(others, torch.full_like(others, 13 + 3 / 1000))  # the filter kept them clean
    assert state["skipped"] == 3
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "skipped" in r]
    assert [r["skipped"] for r in train_rows] == [1.0, 1.0, 1.0]
    assert train_rows[-1]["grad_scale_log2_min"] == pytest.approx(12.5)


def test_fp16_resume_matches_uninterrupted_run_with_the_scales_in_the_checkpoint(data, tmp_path):
    cfg = prior_config(data, loop={"precision": "fp16", "activation_checkpointing": True})
    full, _ = train_prior(cfg, tmp_path / "full")
    train_prior(cfg, tmp_path / "cut", stop_after=7)
    resumed, _ = train_prior(cfg, tmp_path / "cut", resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    a = ckpt.load_checkpoint(ckpt.latest_step_dir(tmp_path / "full")).state["precision"]
    b = ckpt.load_checkpoint(ckpt.latest_step_dir(tmp_path / "cut")).state["precision"]
    assert torch.equal(a["scales"], b["scales"]) and torch.equal(a["last_decrease"], b["last_decrease"])
    assert a["scales"][0].item() == pytest.approx(2.0 ** (13 + 12 / 1000))  # 12 clean updates
    assert full.grad_scales is None  # training over, the model computes as before


@pytest.mark.slow
def test_fp16_training_follows_fp32_training(data, tmp_path):
    windows = {}
    for precision in ("fp32", "fp16"):
        loop = {"steps": 300, "precision": precision, "ema_decay": None, "checkpoint_every": 300}
        cfg = prior_config(data, loop=loop, lr=1e-3, lr_schedule="cosine", eval_samples=0, bpe_dropout=0.0,
                      null_caption_prob=0.0)
        train_prior(cfg, tmp_path / precision)
        rows = [json.loads(line) for line in (tmp_path / precision / "metrics.jsonl").read_text().splitlines()]
        losses = torch.tensor([r["loss"] for r in rows if "loss" in r])
        windows[precision] = losses.view(6, 50).mean(dim=1)  # mean loss of every 50 updates
    a, b = windows["fp32"], windows["fp16"]
    print("fp32", a.tolist(), "fp16", b.tolist())
    assert b[-1] < 0.6 * b[0]  # it learns
    assert ((a - b).abs() / a).max() < 0.01


def test_fp16_on_a_device_without_it_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"^precision fp16 is not supported on device meta: .*; use bf16 or fp32$"):
        check_fp16_support(torch.device("meta"))
    check_fp16_support(torch.device("cpu"))  # torch 2.13 has fp16 autocast on CPU


def test_cli_trains_the_prior_in_fp16_and_logs_the_scales(data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*train_prior_argv(data, out, "tiny"), "--no-progress", "--precision", "fp16", "--steps", "5"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    row = [r for r in rows if "skipped" in r][-1]
    assert row["skipped"] == 0.0 and row["grad_scale_log2_max"] == pytest.approx(13 + 3 / 1000)  # the mean of 5 updates
    assert json.loads((out / "train_config.json").read_text())["loop"]["precision"] == "fp16"


def test_fp16_needs_resblocks_and_no_sharding_or_powersgd():
    with pytest.raises(ValueError, match="Linear has none"):
        make_precision("fp16", torch.nn.Linear(2, 2), torch.device("cpu"))
    with pytest.raises(ValueError, match="not with strategy 'fsdp'"):
        make_precision("fp16", _model(1), torch.device("cpu"), sharded=True)
    with pytest.raises(ValueError, match="PowerSGD"):
        LoopConfig(precision="fp16", powersgd_rank=4)


@pytest.mark.slow
def test_two_process_ddp_fp16_run_follows_one_process_on_the_same_global_batch(data, tmp_path):
    from tests.factories.processes import torchrun

    def config(batch_size):
        loop = {"steps": 6, "batch_size": batch_size, "precision": "fp16", "ema_decay": None, "checkpoint_every": 6}
        return prior_config(
            data, loop=loop, lr_schedule="cosine", bpe_dropout=0.0, null_caption_prob=0.0, eval_samples=0
        )

    path = tmp_path / "two.json"
    path.write_text(config(4).to_json())
    torchrun("prior", str(path), str(tmp_path / "two"))  # 2 processes x 4 = the same 8 sequences per update
    one, _ = train_prior(config(8), tmp_path / "one")
    two = DalleTransformer.from_pretrained(tmp_path / "two" / "model")
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-2, msg=name)
    s1 = ckpt.load_checkpoint(ckpt.latest_step_dir(tmp_path / "one")).state["precision"]
    s2 = ckpt.load_checkpoint(ckpt.latest_step_dir(tmp_path / "two")).state["precision"]
    # in the paper's units: M = 2 processes start at 2·2^13; the backward multiplies by scale / M either way
    assert torch.equal(s2["scales"], 2 * s1["scales"]) and s2["world_size"] == 2
