"""Denormal floats are flushed to zero in every torch thread by the `dalle` program, and by training."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

# prints: denormals left after an element-wise op split over 2 threads, out of N (1e-40 is denormal)
COUNT = "t = torch.full((1 << 22,), 1e-40); print(int((t * 1.0).count_nonzero()), t.numel())"


def _child(code: str, *, keep: bool = False) -> list[str]:
    """The child's printed words; its last two are COUNT's."""
    env = {k: v for k, v in os.environ.items() if k != "DALLE_ZERO_DENORMALS"}
    if keep:
        env["DALLE_ZERO_DENORMALS"] = "keep"
    script = "import torch\ntorch.set_num_threads(2)\n" + textwrap.dedent(code) + "\n" + COUNT
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return done.stdout.split()


def _left(words: list[str]) -> tuple[int, int]:
    return int(words[-2]), int(words[-1])


pytestmark = pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU cannot flush denormals")


def test_without_the_setting_denormals_stay():
    left, n = _left(_child(""))
    assert left == n


def test_the_dalle_program_flushes_them_in_every_thread_unless_kept():
    code = """
        from dalle_zero.cli.main import main
        try:
            main(["plan", "--help"])
        except SystemExit:
            pass
    """
    assert _left(_child(code)) == (0, 1 << 22)
    left, n = _left(_child(code, keep=True))
    assert left == n


def test_training_flushes_them_in_the_thread_that_trains():
    # (and in the threads started later)
    code = """
        import sys, tempfile
        from dalle_zero.training.loop import LoopConfig, train
        from tests.training.toy import ToyConfig, ToyModel, ToyTask, ToyTrainConfig
        (torch.ones(512, 512) @ torch.ones(512, 512)).sum()  # torch's threads start before training
        loop = LoopConfig(steps=2, batch_size=4)
        cfg = ToyTrainConfig(loop=loop, model=ToyConfig())
        train(ToyModel(cfg.model), ToyTask(cfg), loop, tempfile.mkdtemp(), train_config=cfg, progress=False)
        print((torch.tensor([1e-40]) * 1.0).item() == 0.0)
    """
    words = _child(code)
    assert words[-3] == "True"  # flushed in the training thread
    left, n = _left(words)
    assert left < n  # threads started before training keep theirs: hence the `dalle` program's early call
