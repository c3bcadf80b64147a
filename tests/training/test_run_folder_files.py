"""A run folder's own files after crashes and tampering: ``latest``, ``metrics.jsonl``, leftovers of writes.

``latest`` must name a step folder inside the run; a torn or zero-filled last line of ``metrics.jsonl``
is cut with a warning; any other malformed line is a one-line error naming the file, the line and the
field; what interrupted writes left (temporary copies, a folder renamed aside) is put back or removed
when a run starts or resumes.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from dalle_zero.training import checkpoint as ckpt
from dalle_zero.training.run_files import last_validation_step, validation_at
from tests.factories.toy import ToyModel, run_toy, same_weights


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def stopped(tmp_path) -> Path:
    """A run of 12 steps stopped after 7 (checkpoints at 5 and 7)."""
    run = tmp_path / "run"
    run_toy(run, stop_after=7)
    return run


# ---- latest


@pytest.mark.parametrize(
    "content, expected",
    [
        ("../other/step_0000005\n", "holds '../other/step_0000005', expected the name of a step folder inside"),
        ("{other}/step_0000005\n", "expected the name of a step folder inside the run"),
        (b"step_\xff\xfe00005\n", "not UTF-8 text"),
    ],
    ids=["parent", "absolute", "not-utf8"],
)
def test_latest_naming_anything_but_a_step_folder_of_the_run_is_an_error(stopped, tmp_path, content, expected):
    """``../other/step_0000005`` used to resume silently from another run's checkpoint."""
    other = tmp_path / "other"
    run_toy(other, steps=12, stop_after=5)
    pointer = stopped / "latest"
    if isinstance(content, str):
        pointer.write_text(content.format(other=other))
    else:
        pointer.write_bytes(content)
    with pytest.raises(ValueError) as err:
        run_toy(stopped, resume=True)
    message = str(err.value)
    assert message.startswith(f"{pointer}: ") and expected in message and "\n" not in message
    assert f"delete {pointer}" in message


def test_latest_naming_a_missing_step_folder_falls_back_to_the_newest_complete_one(stopped):
    (stopped / "latest").write_text("step_0000099\n")
    assert ckpt.latest_step_dir(stopped) == stopped / "step_0000007"


def test_a_step_folder_that_is_a_link_out_of_the_run_is_not_a_checkpoint(stopped, tmp_path):
    other = tmp_path / "other"
    run_toy(other, steps=12, stop_after=10)
    (stopped / "step_0000010").symlink_to(other / "step_0000010", target_is_directory=True)
    assert 10 not in ckpt.list_steps(stopped)
    assert ckpt.latest_step_dir(stopped) == stopped / "step_0000007"


# ---- metrics.jsonl


@pytest.mark.parametrize(
    "tail",
    [b'{"step": 8, "time": 17000.5, "loss": 0.3', b"\x00" * 300, b'{"step": 8, "loss": 0.3}\n\x00\x00\x00\x00'],
    ids=["torn", "zero-filled", "zero-filled-after-a-row"],
)
def test_resume_cuts_a_torn_or_zero_filled_last_line_of_metrics_with_a_warning(stopped, tmp_path, caplog, tail):
    """What a crash while appending (or a file system zero-filling the tail after one) leaves: it used to
    block --resume with a JSONDecodeError that did not name the file."""
    metrics = stopped / "metrics.jsonl"
    with open(metrics, "ab") as f:
        f.write(tail)
    with caplog.at_level(logging.WARNING, logger="dalle_zero.training.loop"):
        resumed = run_toy(stopped, resume=True)
    assert any(str(metrics) in r.getMessage() and "torn" in r.getMessage() for r in caplog.records)
    assert same_weights(resumed, run_toy(tmp_path / "full"))
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line is whole again
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 12


def test_last_validation_reads_past_a_torn_last_line(tmp_path):
    run_toy(tmp_path, steps=6)
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 7, "val/che')
    assert last_validation_step(tmp_path) == (6, {"check": 6.0})


def test_validation_at_reads_the_figures_of_one_evaluated_step(tmp_path):
    run_toy(tmp_path, steps=6, eval_every=2)
    assert validation_at(tmp_path, 4) == {"check": 4.0}
    assert validation_at(tmp_path, 3) == {}  # not evaluated there
    assert validation_at(tmp_path / "missing", 4) == {}


@pytest.mark.parametrize(
    "line, expected",
    [
        (b"not json at all", "line 2: not valid JSON"),
        (b"[1, 2]", "line 2: expected a JSON object, got a list"),
        (b'{"loss": 0.5}', "line 2: field 'step' must be an integer, got null"),
        (b'{"step": "5"}', "line 2: field 'step' must be an integer, got a string"),
        (b'{"step": 3, "x": "\xff"}', "line 2: not UTF-8 text"),
    ],
)
def test_a_malformed_metrics_line_before_the_last_is_an_error_naming_the_file_line_and_field(stopped, line, expected):
    metrics = stopped / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    metrics.write_bytes(lines[0] + line + b"\n" + b"".join(lines[1:]))
    with pytest.raises(ValueError) as err:
        run_toy(stopped, resume=True)
    assert str(err.value).startswith(f"{metrics}: {expected}") and "\n" not in str(err.value)


def test_resuming_a_run_killed_before_its_first_checkpoint_logs_each_step_once(tmp_path):
    """Rows of a run that never checkpointed used to stay, and be logged a second time (after a torn
    line, on the same line)."""
    run = tmp_path / "run"
    run_toy(run, steps=4, checkpoint_every=5, stop_after=None)  # leaves train_config.json and metrics
    for p in run.iterdir():
        if p.name.startswith("step_") or p.name in ("latest", "model"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 5, "lo')
    run_toy(run, steps=4, checkpoint_every=5, resume=True)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len([s for s in steps if s == 2]) == 1


# ---- leftovers of interrupted writes


def test_starting_or_resuming_a_run_puts_back_an_aside_model_and_removes_leftovers(stopped):
    """The state a SIGKILL at the worst moments leaves: model/ renamed aside, temporary copies of a step
    folder and of model/ (each a full checkpoint), a half-written latest, a half-pruned step folder."""
    pid = dead_pid()
    model = ToyModel.from_pretrained(stopped / "model")
    (stopped / "model").rename(stopped / f".model.old-{pid}")
    (stopped / f".model.tmp-{pid}-k2j3").mkdir()
    (stopped / f".step_0000009.tmp-{pid}-a1b2").mkdir()
    (stopped / f".step_0000009.tmp-{pid}-a1b2" / "model.safetensors").write_bytes(b"partial")
    (stopped / f".latest.tmp-{pid}-zz").write_text("step_00000")
    (stopped / f".step_0000003.del-{pid}").mkdir()
    run_toy(stopped, steps=7, resume=True)  # already complete: resumes, finds nothing to do
    names = sorted(p.name for p in stopped.iterdir())
    assert not [n for n in names if n.startswith(".")], names
    assert same_weights(model, ToyModel.from_pretrained(stopped / "model"))


def test_pruned_checkpoints_leave_nothing_behind(tmp_path):
    run_toy(tmp_path, steps=12, keep_checkpoints=1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("step_", "."))) == ["step_0000012"]
    assert ckpt.load_checkpoint(ckpt.latest_step_dir(tmp_path)).step == 12
