"""FSDP2 as a training strategy: it learns what DDP learns, resumes exactly, and its checkpoints are DDP's.

The multi-process tests launch two CPU processes with torchrun (gloo), as a user would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dalle_zero.cli.main import main
from dalle_zero.io import load_state_dict
from dalle_zero.models.transformer import DalleTransformer
from dalle_zero.training import checkpoint as ckpt
from dalle_zero.training.loop import LoopConfig
from tests.factories.prior import make_tokenizer, prior_config, write_tiny_shards
from tests.factories.processes import torchrun
from tests.factories.toy import ToyModel, run_toy

STEPS = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fsdp_data")
    return write_tiny_shards(root / "tokens"), make_tokenizer(root / "tokenizer", text_seq_len=12)


def _prior_config(data, folder: Path, strategy: str, **loop) -> Path:
    """A tiny prior run as JSON: BPE dropout, null captions, EMA, clipping that bites, accumulation, the
    plateau rule and a mid-run evaluation (model dropout: its own test below)."""
    cfg = prior_config(
        data,
        loop={"steps": STEPS, "batch_size": 4, "grad_accum": 2, "checkpoint_every": 4, "eval_every": 4,
              "clip_grad_norm": 0.05, "strategy": strategy, **loop},
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{strategy}.json"
    path.write_text(cfg.to_json())
    return path


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted two-process prior runs under each strategy, and the fsdp config."""
    root = tmp_path_factory.mktemp("fsdp_runs")
    out = {}
    for strategy in ("ddp", "fsdp"):
        out[f"{strategy}_config"] = _prior_config(data, root / "configs", strategy)
        out[strategy] = root / strategy
        torchrun("prior", str(out[f"{strategy}_config"]), str(out[strategy]))
    return out


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(path)


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=lambda m, name=name: f"{name}: {m}", **tol)


def _step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / ckpt.step_dir_name(step)


# ---- settings ----


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"strategy": "zero3"}, r"LoopConfig.strategy must be one of \['ddp', 'fsdp'\], got 'zero3'"),
        ({"strategy": "fsdp", "powersgd_rank": 4}, "PowerSGD compresses DDP's gradients only"),
    ],
)
def test_bad_strategy_is_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        LoopConfig(**bad)


def test_cli_bad_strategy_in_the_config_file_is_a_one_line_error(data, tmp_path, capsys):
    tokens, tok_dir = data
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"n_layer": 1, "n_head": 1, "n_embd": 8}, "loop": {"strategy": "zero3"}}))
    args = ["train", "prior", "--tokens", str(tokens), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "r")]
    assert main([*args, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "strategy" in err and "zero3" in err and "'fsdp'" in err


def test_cli_strategy_flag_sets_the_loop_field(data, tmp_path):
    from dalle_zero.cli.main import build_parser
    from dalle_zero.cli.train_prior import resolve_config

    tokens, tok_dir = data
    args = build_parser().parse_args(
        ["train", "prior", "--tokens", str(tokens), "--tokenizer", str(tok_dir), "--out", str(tmp_path),
         "--config", "tiny", "--strategy", "fsdp"]
    )
    assert resolve_config(args)[0].loop.strategy == "fsdp"


def test_fsdp_in_one_process_is_the_plain_loop(tmp_path):
    loop = {"steps": 6, "batch_size": 4, "grad_accum": 2, "clip_grad_norm": 0.5}
    plain = run_toy(tmp_path / "ddp", **loop)
    fsdp = run_toy(tmp_path / "fsdp", strategy="fsdp", **loop)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), fsdp.state_dict().values()))
    assert json.loads((tmp_path / "fsdp" / "train_config.json").read_text())["loop"]["strategy"] == "fsdp"


# ---- two processes ----


@pytest.mark.slow
def test_fsdp_learns_what_ddp_learns_and_saves_the_same_files(runs):
    ddp, fsdp = runs["ddp"], runs["fsdp"]
    rows_ddp, rows_fsdp = _rows(ddp), _rows(fsdp)
    assert [r["step"] for r in rows_ddp] == [r["step"] for r in rows_fsdp]
    train_rows = [(a, b) for a, b in zip(rows_ddp, rows_fsdp) if "loss" in a]
    assert len(train_rows) == STEPS
    for a, b in train_rows:
        for key in ("loss", "loss_text", "loss_image", "grad_norm", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
    assert max(a["grad_norm"] for a, _ in train_rows) > 0.05  # clipping was active
    val = [(a, b) for a, b in zip(rows_ddp, rows_fsdp) if "val/loss" in a]
    assert [a["step"] for a, _ in val] == [4, 8]
    for a, b in val:
        assert b["val/loss"] == pytest.approx(a["val/loss"], rel=1e-4)

    for run in (ddp, fsdp):  # the same single-file layout
        assert sorted(ckpt.list_steps(run)) == [4, 8]
        assert sorted(p.name for p in _step_dir(run, STEPS).iterdir()) == ["ema.safetensors", "model.safetensors",
                                                                           "state.pt"]
    for name in ("model.safetensors", "ema.safetensors"):
        _assert_close(_weights(_step_dir(ddp, STEPS) / name), _weights(_step_dir(fsdp, STEPS) / name),
                      rtol=1e-4, atol=1e-5)
    opt_ddp = ckpt.load_checkpoint(_step_dir(ddp, STEPS)).state["optimizer"]
    opt_fsdp = ckpt.load_checkpoint(_step_dir(fsdp, STEPS)).state["optimizer"]
    assert opt_fsdp["param_groups"] == opt_ddp["param_groups"]
    assert opt_fsdp["state"].keys() == opt_ddp["state"].keys()
    for i, state in opt_ddp["state"].items():
        assert state.keys() == opt_fsdp["state"][i].keys()
        for key, value in state.items():
            torch.testing.assert_close(opt_fsdp["state"][i][key], value, rtol=1e-3, atol=1e-7)

    a = DalleTransformer.from_pretrained(ddp / "model")  # EMA weights, loadable anywhere
    b = DalleTransformer.from_pretrained(fsdp / "model")
    _assert_close(a.state_dict(), b.state_dict(), rtol=1e-4, atol=1e-5)
    assert all(t.dtype == torch.float32 for t in b.state_dict().values())


@pytest.fixture(scope="module")
def fsdp_stopped(runs, tmp_path_factory) -> Path:
    """The fsdp run stopped after 5 updates (checkpoints at 4 and 5), as a killed run leaves it."""
    cut = tmp_path_factory.mktemp("fsdp_cut") / "run"
    torchrun("prior", str(runs["fsdp_config"]), str(cut), "--stop-after", "5")
    assert ckpt.latest_step_dir(cut).name == ckpt.step_dir_name(5)
    return cut


@pytest.mark.slow
def test_fsdp_resume_matches_uninterrupted_run(runs, fsdp_stopped, tmp_path):
    run = shutil.copytree(fsdp_stopped, tmp_path / "run")
    torchrun("prior", str(runs["fsdp_config"]), str(run), "--resume")
    for name in ("model.safetensors", "ema.safetensors"):
        full, resumed = _weights(_step_dir(runs["fsdp"], STEPS) / name), _weights(_step_dir(run, STEPS) / name)
        assert full.keys() == resumed.keys()
        assert all(torch.equal(full[k], resumed[k]) for k in full), name
    a = DalleTransformer.from_pretrained(runs["fsdp"] / "model")
    b = DalleTransformer.from_pretrained(run / "model")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    steps = [r["step"] for r in _rows(run) if "loss" in r]
    assert steps == list(range(1, STEPS + 1))  # rows after the checkpoint were not duplicated


def _resume_under(strategy: str, run: Path, runs: dict[str, Path]) -> None:
    """Resume ``run`` under ``strategy``: it must end where that strategy's uninterrupted run ends."""
    torchrun("prior", str(runs[f"{strategy}_config"]), str(run), "--resume")
    for name in ("model.safetensors", "ema.safetensors"):
        _assert_close(_weights(_step_dir(runs[strategy], STEPS) / name), _weights(_step_dir(run, STEPS) / name),
                      rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_under_ddp(runs, fsdp_stopped, tmp_path):
    _resume_under("ddp", shutil.copytree(fsdp_stopped, tmp_path / "run"), runs)


@pytest.mark.slow
def test_ddp_checkpoint_resumes_under_fsdp(runs, tmp_path):
    torchrun("prior", str(runs["ddp_config"]), str(tmp_path / "run"), "--stop-after", "5")
    _resume_under("fsdp", tmp_path / "run", runs)


@pytest.mark.slow
def test_fsdp_bf16_with_activation_checkpointing_trains_and_saves_fp32(data, tmp_path):
    config = _prior_config(data, tmp_path, "fsdp", precision="bf16", activation_checkpointing=True,
                           clip_grad_norm=4.0)
    torchrun("prior", str(config), str(tmp_path / "run"))
    rows = [r for r in _rows(tmp_path / "run") if "loss" in r]
    assert len(rows) == STEPS and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    model = DalleTransformer.from_pretrained(tmp_path / "run" / "model")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in model.state_dict().values())


@pytest.mark.slow
def test_fsdp_of_a_model_without_blocks_matches_single_process_on_same_global_batch(tmp_path):
    """The toy model lists no blocks: FSDP shards it as one unit."""
    loop = {"steps": 6, "grad_accum": 2, "clip_grad_norm": 0.5, "ema_decay": 0.9, "dropout": 0.0}
    torchrun("toy", str(tmp_path / "fsdp"), "--loop", json.dumps({**loop, "batch_size": 2, "strategy": "fsdp"}))
    single = run_toy(tmp_path / "single", batch_size=4, **loop)
    _assert_close(_weights(_step_dir(tmp_path / "fsdp", 6) / "model.safetensors"), single.state_dict(),
                  rtol=1e-4, atol=1e-5)
    ema_fsdp = ToyModel.from_pretrained(tmp_path / "fsdp" / "model")
    ema_single = ToyModel.from_pretrained(tmp_path / "single" / "model")
    _assert_close(ema_fsdp.state_dict(), ema_single.state_dict(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_resumed_two_process_run_with_model_dropout_reaches_the_weights_of_an_uninterrupted_one(data, tmp_path):
    """Each rank's random streams are saved and restored, so the dropout masks after the resume are the same."""
    for strategy in ("ddp", "fsdp"):
        path = _prior_config(data, tmp_path / "configs", strategy)
        cfg = json.loads(path.read_text())
        cfg["model"]["dropout"] = 0.2
        path.write_text(json.dumps(cfg))
        whole, cut = tmp_path / f"{strategy}_whole", tmp_path / f"{strategy}_cut"
        torchrun("prior", str(path), str(whole))
        torchrun("prior", str(path), str(cut), "--stop-after", "5")
        assert len(ckpt.load_checkpoint(ckpt.latest_step_dir(cut)).state["rng_ranks"]) == 2
        torchrun("prior", str(path), str(cut), "--resume")
        a, b = (_weights(_step_dir(run, STEPS) / "model.safetensors") for run in (whole, cut))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), strategy
