"""``dalle demo``: the whole system on the emoji data in minutes on a CPU (see :mod:`dalle_zero.demo.runner`)."""

from dalle_zero.demo.config import DemoConfig, StageSpec, load_demo_config
from dalle_zero.demo.context import DemoInterrupted
from dalle_zero.demo.runner import run_demo

__all__ = ["DemoConfig", "DemoInterrupted", "StageSpec", "load_demo_config", "run_demo"]
