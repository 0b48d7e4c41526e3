"""python -m train's command line: every subcommand says what it does, and takes --data-dir after its name
as well as before it."""

from __future__ import annotations

import argparse

import pytest

from train.__main__ import build_parser


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_has_a_help_line() -> None:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    assert set(helps) == set(subcommands()) and all(helps.values()), helps


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_data_dir_is_taken_after_the_subcommand_too(name: str) -> None:
    required = {"fit": ["--config", "c.toml"], "sweep": ["--config", "c.toml"], "cv": ["--config", "c.toml"]}
    extra = required.get(name, [])
    parser = build_parser()
    assert parser.parse_args(["--data-dir", "before", name, *extra]).data_dir == "before"
    assert parser.parse_args([name, *extra, "--data-dir", "after"]).data_dir == "after"
    assert parser.parse_args(["--data-dir", "before", name, *extra, "--data-dir", "after"]).data_dir == "after"
    assert parser.parse_args([name, *extra]).data_dir is None
