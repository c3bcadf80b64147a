"""SIGKILL at the worst moments: a real ``dalle train dvae`` process, killed again and again, resumes to the
weights of a run that was never interrupted, bit for bit, and leaves no folder missing and no leftovers.

Some kills are timed at random; the others land inside checkpoint writes: the moment a step folder, a
``model/`` or a ``latest`` starts to be written under its temporary name (seen by polling the run
folder), and the moment just before one of them is renamed into place, which for ``model/`` is the
worst one: the old ``model/`` renamed aside, the new one not yet in place. Polling is too slow for that
moment, so there the process kills itself (SIGKILL, from an audit hook on ``os.rename`` that Python
calls just before the system call).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dalle_zero.io import clean_leftovers
from dalle_zero.training import checkpoint as ckpt
from tests.factories.folders import two_colour_folder

STEPS = 30
# kill moments, in order; then one last run to the end. "rename:NAME": just before a folder or file named
# NAME (a prefix) is renamed into place; for model/, only when its old copy has been renamed aside.
MOMENTS = ["random", "step-tmp", "rename:model", "model-tmp", "latest-tmp", "rename:step_", "random",
           "rename:latest", "model-aside", "rename:model", "step-tmp"]
TIMEOUT = 240  # seconds for one process (the machine may be busy)


def _config(path: Path) -> Path:
    from dalle_zero.config import load_config_source

    config, _ = load_config_source("dvae_tiny", prefix="dvae_")
    config["loop"] = {**config["loop"], "steps": STEPS, "batch_size": 4, "checkpoint_every": 2, "log_every": 1,
                      "keep_checkpoints": 2}
    path.write_text(json.dumps(config))
    return path


# `dalle train dvae`, in a process whose torch generator starts from a fixed seed: the command builds the
# model before the loop seeds it, and torch seeds its generator at random at start-up, so two fresh runs
# would differ from their first step. Resume restores everything else from the checkpoint.
LAUNCH = """
import os, signal, sys, torch
torch.manual_seed(0)
name = os.environ.get("KILL_BEFORE_RENAME_TO")
if name:
    def hook(event, args):
        if event != "os.rename" or not os.path.basename(os.fspath(args[1])).startswith(name):
            return
        aside = os.path.join(os.path.dirname(os.fspath(args[1])), f".{name}.old-{os.getpid()}")
        if name != "model" or os.path.exists(aside):
            os.kill(os.getpid(), signal.SIGKILL)
    sys.addaudithook(hook)
from dalle_zero.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _command(config: Path, data: Path, run: Path) -> list[str]:
    return [sys.executable, "-c", LAUNCH, "train", "dvae", "--config", str(config), "--data", str(data),
            "--out", str(run), "--resume", "--no-progress"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _started(run: Path, since: float) -> bool:
    """The process has prepared the run folder (train_config.json is written at every start)."""
    cfg = run / "train_config.json"
    return cfg.is_file() and cfg.stat().st_mtime >= since


def _writing(run: Path, prefix: str, pid: int) -> bool:
    return any(name.startswith(f"{prefix}-{pid}") for name in os.listdir(run)) if run.is_dir() else False


def _kill_at(moment: str, proc: subprocess.Popen, run: Path, rng: random.Random) -> bool:
    """Wait for ``moment``, then SIGKILL ``proc``; False if it ended first."""
    if moment.startswith("rename:"):  # the process kills itself
        return proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    since = time.time() - 1
    deadline = time.monotonic() + TIMEOUT
    delay = rng.uniform(0.0, 2.0)
    started_at = None
    while proc.poll() is None and time.monotonic() < deadline:
        names = os.listdir(run) if run.is_dir() else []
        if moment == "random":
            if started_at is None and _started(run, since):
                started_at = time.monotonic()
            hit = started_at is not None and time.monotonic() - started_at >= delay
        elif moment == "step-tmp":
            hit = any(n.startswith(".step_") and f".tmp-{proc.pid}-" in n for n in names)
        elif moment == "model-tmp":
            hit = any(n.startswith(f".model.tmp-{proc.pid}-") for n in names)
        elif moment == "latest-tmp":
            hit = any(n.startswith(f".latest.tmp-{proc.pid}-") for n in names)
        else:  # model-aside: between the renames if we are quick enough, else just after them
            hit = f".model.old-{proc.pid}" in names
        if hit:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005 if moment != "random" else 0.01)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise AssertionError(f"waited {TIMEOUT} s for moment {moment!r}")
    return False


def _check_recoverable(run: Path, had_model: bool) -> None:
    """What the kill left, once recovered as the next start recovers it (on a copy): no folder missing."""
    copy = run.with_name(run.name + "-recovered")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy, symlinks=True)
    clean_leftovers(copy)
    if had_model:
        assert (copy / "model" / "model.safetensors").is_file(), sorted(os.listdir(run))
    if (copy / "latest").is_file():
        name = ckpt.read_latest(copy / "latest")
        assert (copy / name / "state.pt").is_file(), f"latest names {name}, which is not complete"
    assert not [n for n in os.listdir(copy) if n.startswith(".")], sorted(os.listdir(copy))
    shutil.rmtree(copy)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]


@pytest.mark.slow
def test_sigkill_at_random_moments_and_inside_checkpoint_writes_resumes_to_identical_weights(tmp_path):
    data = two_colour_folder(tmp_path / "data")
    config = _config(tmp_path / "train.json")
    reference, run = tmp_path / "reference", tmp_path / "run"
    done = subprocess.run(_command(config, data, reference), env=ENV, timeout=TIMEOUT * 2, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]

    rng = random.Random(18)
    killed = []
    for moment in MOMENTS:
        had_model = (run / "model").is_dir() or any(n.startswith(".model.old-") for n in os.listdir(run)) \
            if run.is_dir() else False
        env = {**ENV, "KILL_BEFORE_RENAME_TO": moment.removeprefix("rename:")} if moment.startswith("rename:") else ENV
        with open(tmp_path / "log.txt", "ab") as log:
            proc = subprocess.Popen(_command(config, data, run), env=env, stdout=log, stderr=log)
            if _kill_at(moment, proc, run, rng):
                killed.append(moment)
                if moment == "rename:model":  # the worst moment: no model/, its old copy aside
                    assert not (run / "model").exists() and (run / f".model.old-{proc.pid}").is_dir()
                _check_recoverable(run, had_model)
            else:
                assert proc.returncode == 0, (tmp_path / "log.txt").read_text()[-2000:]
                break
    assert len([m for m in killed if m != "random"]) >= 6, killed  # several kills inside checkpoint writes
    assert killed.count("rename:model") == 2, killed

    done = subprocess.run(_command(config, data, run), env=ENV, timeout=TIMEOUT * 2, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]

    final = run / ckpt.step_dir_name(STEPS)
    for name in ("model/model.safetensors", f"{final.name}/model.safetensors", f"{final.name}/ema.safetensors"):
        a, b = _tensors(reference / name), _tensors(run / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs from the uninterrupted run"
    assert _losses(run) == _losses(reference)  # every step logged once, with the same loss
    assert ckpt.list_steps(run) == ckpt.list_steps(reference)
    assert (run / "latest").read_text() == (reference / "latest").read_text()
    assert not [n for n in os.listdir(run) if n.startswith(".")], sorted(os.listdir(run))
