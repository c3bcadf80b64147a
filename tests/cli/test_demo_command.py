"""The report's command for resuming a demo is the one that started it, options and all.

It used to be ``dalle demo --out DIR --minutes M`` whatever the run was started with, so a demo started
with ``--config spared.json`` (or ``--data``) was reported with a command that starts another preset.
"""

from __future__ import annotations

import shlex

import pytest

from dalle_zero.cli.demo import demo_command
from dalle_zero.cli.main import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["demo"],
        ["demo", "--out", "runs/s15", "--config", "spared.json"],
        ["demo", "--out", "my run", "--minutes", "7.5", "--data", "/data/emoji set", "--styles", "google"],
    ],
)
def test_the_command_parses_back_to_the_same_options(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    command = demo_command(args)
    assert command.startswith("dalle demo --out ")
    again = parser.parse_args(shlex.split(command)[1:])
    assert vars(again) == vars(args)


def test_options_left_at_their_defaults_are_not_spelled_out():
    args = build_parser().parse_args(["demo", "--out", "d"])
    assert demo_command(args) == "dalle demo --out d"
    args = build_parser().parse_args(["demo", "--out", "d", "--config", "spared.json", "--minutes", "60"])
    assert demo_command(args) == "dalle demo --out d --minutes 60 --config spared.json"
