"""Finding one's way: typo suggestions, `help COMMAND`, what every help shows, and shell
completion as a user's shell sees it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from typer.testing import CliRunner

from smscredits.cli import app
from tests.test_ux import all_commands

SUB_COMMANDS = [p for p in all_commands() if p]


def invoke(*args: str, **env: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80", **env})


# -- typo suggestions ----------------------------------------------------------------------


@pytest.mark.parametrize(("typo", "meant"), [("credit", "credits"), ("limit", "limits"),
                                             ("refil", "refill"), ("usr", "user"),
                                             ("prise", "price")])
def test_a_mistyped_command_suggests_the_closest(typo: str, meant: str) -> None:
    result = invoke(typo, "alice")
    assert result.exit_code == 2
    assert result.stderr == (f"Error: No such command {typo!r}. Did you mean {meant!r}? "
                             "(see smscredits --help)\n")
    assert result.stdout == ""


def test_a_command_like_nothing_gets_no_suggestion() -> None:
    result = invoke("xyzzy")
    assert result.exit_code == 2
    assert result.stderr == "Error: No such command 'xyzzy'. (see smscredits --help)\n"


def test_a_mistyped_sub_command_suggests_too() -> None:
    result = invoke("price", "sett", "HU", "1")
    assert result.exit_code == 2
    assert "No such command 'sett'. Did you mean 'set'?" in result.stderr


# -- help COMMAND [SUB] --------------------------------------------------------------------


@pytest.mark.parametrize("path", [["price"], ["price", "set"], ["credits", "add"], ["demo"],
                                  []], ids=" ".join)
def test_help_prints_what_dash_dash_help_prints(path: list[str]) -> None:
    shown = invoke("help", *path)
    assert shown.exit_code == 0
    assert shown.stdout == invoke(*path, "--help").stdout


def test_help_is_listed_with_the_setup_commands() -> None:
    root = invoke("--help").stdout
    setup = root.split("Setup:\n", 1)[1]
    assert "  help    Show a command's help: help price set.\n" in setup


@pytest.mark.parametrize(("args", "message"), [
    (["prise"], "Error: No such command 'prise' in smscredits. Did you mean 'price'?\n"),
    (["price", "sett"], "Error: No such command 'sett' in smscredits price. Did you mean 'set'?\n"),
    (["demo", "x"], "Error: No such command 'x' in smscredits demo.\n"),
])
def test_help_of_an_unknown_command_suggests(args: list[str], message: str) -> None:
    result = invoke("help", *args)
    assert result.exit_code == 2
    assert result.stderr == message


# -- what every help shows -----------------------------------------------------------------


@pytest.mark.parametrize("path", SUB_COMMANDS, ids=" ".join)
def test_every_command_help_lists_the_global_options(path: list[str]) -> None:
    text = invoke(*path, "--help").stdout
    assert ("Global options (before or after the command):\n"
            "  --db URL                Database URL or SQLite file.\n"
            "  --json, --jsonl, --csv  Output for scripts.\n"
            "  --quiet, -q             Print nothing on success.\n"
            "  --actor NAME            Who is recorded as making changes.\n") in text
    assert "--install-completion" not in text and "--show-completion" not in text


def test_completion_options_are_on_the_root_only() -> None:
    text = invoke("--help").stdout
    assert "--install-completion" in text and "--show-completion" in text
    assert "Global options" not in text


@pytest.mark.parametrize("path", SUB_COMMANDS, ids=" ".join)
def test_usage_names_values_plainly(path: list[str]) -> None:
    text = invoke(*path, "--help").stdout
    assert not re.search(r"\{[A-Z_]+\}|[A-Z]+ <[a-z]+>|<str>", text), text


def test_usage_of_a_required_and_an_optional_user() -> None:
    assert invoke("credits", "add", "--help").stdout.startswith(
        "Usage: smscredits credits add [OPTIONS] USER AMOUNT\n")
    assert invoke("limits", "show", "--help").stdout.startswith(
        "Usage: smscredits limits show [OPTIONS] [USER]\n")
    assert "  USER    User name.  [required]\n" in invoke("credits", "add", "--help").stdout
