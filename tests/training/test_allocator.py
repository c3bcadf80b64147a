"""The training loop's CPU allocator setting: applied once, and switched off by DALLE_ZERO_MALLOC=default."""

import os
import subprocess
import sys

import pytest

CODE = "from dalle_zero.training.allocator import keep_freed_memory as k; print(k(), k())"


def run(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "DALLE_ZERO_MALLOC"}
    if env_value is not None:
        env["DALLE_ZERO_MALLOC"] = env_value
    done = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_applied_on_linux_unless_switched_off():
    assert run(None) == ["True", "True"]
    assert run("default") == ["False", "False"]
