"""The shared training loop: resume, accumulation, checkpoints, metrics, bad settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dalle_zero.training import checkpoint as ckpt
from dalle_zero.training.loop import LoopConfig, train
from tests.factories.toy import ToyConfig, ToyModel, ToyTask, ToyTrainConfig, run_toy, same_weights


def test_resume_matches_uninterrupted_run(tmp_path):
    full = run_toy(tmp_path / "full")
    run_toy(tmp_path / "cut", stop_after=7)  # stopped between two periodic checkpoints
    resumed = run_toy(tmp_path / "cut", resume=True)
    assert same_weights(full, resumed)
    a = ToyModel.from_pretrained(tmp_path / "full" / "model")
    b = ToyModel.from_pretrained(tmp_path / "cut" / "model")
    assert same_weights(a, b)  # EMA weights too
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == sorted(set(train_steps))  # rows after the checkpoint were not duplicated


def test_run_folder_holds_config_metrics_checkpoints_and_model(tmp_path):
    run_toy(tmp_path, keep_checkpoints=2)
    assert json.loads((tmp_path / "train_config.json").read_text())["loop"]["steps"] == 12
    assert sorted(ckpt.list_steps(tmp_path)) == [10, 12]
    assert (tmp_path / "latest").read_text().strip() == "step_0000012"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "mse", "lr", "samples_per_s"} <= set(rows[0])
    assert rows[-1]["val/check"] == 12.0
    assert (tmp_path / "model" / "config.json").is_file()


def test_resuming_a_longer_run_is_no_warning_but_other_settings_are(tmp_path, caplog):
    run_toy(tmp_path, steps=6, stop_after=3)
    with caplog.at_level("INFO", logger="dalle_zero.training.run_files"):
        run_toy(tmp_path, steps=9, resume=True, checkpoint_every=3, stop_after=2)  # more steps, other intervals
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("resuming with loop {'steps': 9, 'checkpoint_every': 3}" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("INFO", logger="dalle_zero.training.loop"):
        run_toy(tmp_path, steps=9, resume=True, checkpoint_every=3, batch_size=2)  # what the run learns changes
    assert any(r.levelname == "WARNING" and "differs from the config" in r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / "train_config.json").read_text())["loop"]["batch_size"] == 2


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    run_toy(tmp_path, steps=5)
    with pytest.raises(ValueError, match="--resume"):
        run_toy(tmp_path, steps=5)


def test_gradient_accumulation_matches_larger_batch(tmp_path):
    big = run_toy(tmp_path / "big", steps=4, batch_size=4, ema_decay=None, dropout=0.0)
    acc = run_toy(tmp_path / "acc", steps=4, batch_size=2, grad_accum=2, ema_decay=None, dropout=0.0)
    for a, b in zip(big.state_dict().values(), acc.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_trains(tmp_path):
    model = run_toy(tmp_path, steps=3, precision="bf16")
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("speedup, warned", [(0.05, True), (1.6, False)])
def test_bf16_on_a_cpu_where_it_is_far_slower_is_a_warning(tmp_path, caplog, monkeypatch, speedup, warned):
    from dalle_zero.training import precision

    monkeypatch.setattr(precision, "bf16_speedup", lambda: speedup)
    with caplog.at_level("WARNING", logger="dalle_zero.training.precision"):
        run_toy(tmp_path / "bf16", steps=2, precision="bf16")
        run_toy(tmp_path / "fp32", steps=2, precision="fp32")
    warnings = [r.getMessage() for r in caplog.records if "bf16 autocast runs at" in r.getMessage()]
    assert warnings == (["bf16 autocast runs at 0.05x the speed of fp32 on this CPU: precision fp32 trains faster here"]
                        if warned else [])


def test_half_written_checkpoint_is_ignored_on_resume(tmp_path):
    run_toy(tmp_path, steps=10, stop_after=5)
    broken = tmp_path / ".step_0000010.tmp-x"  # what a crash during a write leaves behind
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    assert ckpt.latest_step_dir(tmp_path).name == "step_0000005"


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"steps": 0}, "steps"),
        ({"precision": "fp8"}, "precision"),
        ({"ema_decay": 1.5}, "ema_decay"),
        ({"batch_size": -1}, "batch_size"),
        ({"activation_checkpointing": "yes"}, "activation_checkpointing"),
    ],
)
def test_bad_loop_values_raise_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        LoopConfig(**bad)


def test_dataset_smaller_than_a_batch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        run_toy(tmp_path, batch_size=64)


@pytest.mark.slow
def test_two_process_gloo_run_matches_single_process_on_same_global_batch(tmp_path):
    """torchrun with 2 CPU processes (gloo): each rank takes half of every global batch."""
    script = tmp_path / "dist_train.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.factories.toy import run_toy
        from pathlib import Path
        run_toy(Path(sys.argv[1]), steps=6, batch_size=int(sys.argv[2]), ema_decay=None, dropout=0.0)
    """)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            str(script),
            str(tmp_path / "ddp"),
            "2",
        ],
        check=True,
        env=env,
        timeout=300,
    )
    ddp = ToyModel.from_pretrained(tmp_path / "ddp" / "model")
    single = run_toy(tmp_path / "single", steps=6, batch_size=4, ema_decay=None, dropout=0.0)
    assert (tmp_path / "ddp" / "step_0000006").is_dir()
    for a, b in zip(ddp.state_dict().values(), single.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path, strategy):
    """SIGTERM reaches rank 1 alone at the end of step 3: both ranks stop after step 3 (they used to
    part ways there, one checkpointing and one training on, and hang), and the run resumes to the end."""
    worker = Path(__file__).with_name("distributed_worker.py")
    loop = json.dumps({"batch_size": 2, "strategy": strategy})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           "toy", str(tmp_path / "run"), "--loop", loop]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*cmd, "--term-at", "1:3"], env=env, timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopped at step 3; continue with --resume" in done.stdout
    assert ckpt.list_steps(tmp_path / "run") == [3]
    subprocess.run([*cmd, "--resume"], env=env, timeout=120, check=True, capture_output=True)
    assert (tmp_path / "run" / "latest").read_text().strip() == "step_0000012"



class _TermAtStep3(ToyTask):
    def on_step_end(self, model, step, metrics):
        super().on_step_end(model, step, metrics)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("hint", ["continue with --resume", None])
def test_a_signal_stop_checkpoints_and_prints_how_to_go_on_unless_the_caller_says_it(tmp_path, capsys, hint):
    loop = LoopConfig(steps=12, batch_size=4, checkpoint_every=5, log_every=2)
    cfg = ToyTrainConfig(loop=loop, model=ToyConfig())
    train(ToyModel(cfg.model), _TermAtStep3(cfg), loop, tmp_path / "run", train_config=cfg, progress=False,
          resume_hint=hint)
    assert ckpt.list_steps(tmp_path / "run") == [3]
    printed = capsys.readouterr().out
    if hint is None:  # the demo: its own command resumes it, and it says so
        assert "stopped at step" not in printed and "--resume" not in printed
    else:
        assert f"stopped at step 3; {hint} (checkpoint in {tmp_path / 'run'})" in printed


class _UShapedValidation(ToyTask):
    """Validation that falls to its lowest at step 6, then rises (a run that starts to memorise)."""

    def evaluate(self, model, step: int, run_dir: Path) -> dict[str, float]:
        self.evaluated.append(step)
        return {"loss": (step - 6) ** 2 + 1.0}


def test_select_by_keeps_the_model_of_the_lowest_validation_figure(tmp_path):
    from dalle_zero.training.run_files import best_model

    run_toy(tmp_path / "run", steps=12, eval_every=3, select_by="loss", task=_UShapedValidation)
    found = best_model(tmp_path / "run")
    assert found is not None
    path, record = found
    assert record == {"step": 6, "figure": "loss", "value": 1.0}
    # the kept model is the one evaluated at step 6, not the last
    run_toy(tmp_path / "six", steps=12, stop_after=6, task=_UShapedValidation)
    assert same_weights(ToyModel.from_pretrained(path), ToyModel.from_pretrained(tmp_path / "six" / "model"))
    assert not same_weights(ToyModel.from_pretrained(path), ToyModel.from_pretrained(tmp_path / "run" / "model"))


def test_select_by_without_evaluations_or_with_an_unknown_figure_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="eval_every"):
        LoopConfig(select_by="loss")
    with pytest.raises(ValueError, match="reports only"):
        run_toy(tmp_path / "run", steps=6, eval_every=3, select_by="bleu", task=_UShapedValidation)
