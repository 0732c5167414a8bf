"""The ``guard-reward`` entry points and the top-level help: every subcommand registered and described."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from guard_reward.cli.main import DESCRIPTION, PLUGIN_MODULES, build_parser

SUBCOMMANDS = ("moderate", "demo", "train", "plot", "serve", "eval")


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_every_subcommand_has_its_module_and_is_listed_in_help_order():
    assert _subcommands(build_parser()) == list(SUBCOMMANDS)
    assert [m.rsplit(".", 1)[1] for m in PLUGIN_MODULES] == list(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_the_top_level_description_names_every_subcommand(name):
    assert f"{name} (" in DESCRIPTION


def test_python_dash_m_and_the_console_script_run_the_same_main():
    from importlib.metadata import entry_points

    from guard_reward.cli.main import main

    (script,) = entry_points(group="console_scripts", name="guard-reward")
    assert script.load() is main
    out = subprocess.run(
        [sys.executable, "-m", "guard_reward.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert all(name in out for name in SUBCOMMANDS)
