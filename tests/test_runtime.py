"""The CPU settings of a process (dalle_zero.runtime): denormals flushed to zero in every torch thread by
the `dalle` program and by training; the allocator setting applied once and switched off by
DALLE_ZERO_MALLOC=default."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dalle_zero import runtime

ROOT = Path(__file__).resolve().parents[1]

# ---- denormals

# prints: denormals left after an element-wise op split over 2 threads, out of N (1e-40 is denormal)
COUNT = "t = torch.full((1 << 22,), 1e-40); print(int((t * 1.0).count_nonzero()), t.numel())"

can_flush = pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU cannot flush denormals")


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


@can_flush
def test_without_the_setting_denormals_stay():
    left, n = _left(_child(""))
    assert left == n


@can_flush
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


@can_flush
def test_training_flushes_them_in_the_thread_that_trains():
    # (and in the threads started later)
    code = """
        import sys, tempfile
        from dalle_zero.training.loop import LoopConfig, train
        from tests.factories.toy import ToyConfig, ToyModel, ToyTask, ToyTrainConfig
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


# ---- allocator

ALLOCATOR = "from dalle_zero.runtime import keep_freed_memory as k; print(k(), k())"


def _allocator(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "DALLE_ZERO_MALLOC"}
    if env_value is not None:
        env["DALLE_ZERO_MALLOC"] = env_value
    done = subprocess.run([sys.executable, "-c", ALLOCATOR], env=env, capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_allocator_setting_applied_on_linux_unless_switched_off():
    assert _allocator(None) == ["True", "True"]
    assert _allocator("default") == ["False", "False"]


# ---- helpers whose parent is gone

# a parent that starts one sampling worker, prints its pid, and is then killed outright (as SIGKILL,
# or SIGTERM before any handler is set, would end `dalle demo` while it times its evaluation)
KILLED_PARENT = textwrap.dedent(
    """
    import os, signal, time
    from dalle_zero.evaluation.samples import sampling_processes
    pool = sampling_processes(1, time.sleep, (0,))
    print(pool.submit(os.getpid).result(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie not yet reaped by its new parent counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_sampling_worker_exits_when_its_parent_is_killed():
    proc = subprocess.run([sys.executable, "-c", KILLED_PARENT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    worker = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 10
    while not _gone(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(worker), f"sampling worker {worker} still runs after its parent was killed"


def test_when_orphaned_waits_while_the_parent_lives():
    called = []
    thread = runtime.when_orphaned(lambda: called.append(1), every=0.01)
    time.sleep(0.1)
    assert thread.is_alive() and thread.daemon and not called
