"""Several real CPU processes (gloo), started as a user would with torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).resolve().parents[1] / "training" / "distributed_worker.py"


def torchrun(*args: str, nproc: int = 2) -> None:
    """Run the test worker in ``nproc`` CPU processes (gloo), as ``torchrun --standalone`` does."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    subprocess.run([*cmd, str(WORKER), *args], check=True, env=env, timeout=600)
