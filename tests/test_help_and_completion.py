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


# -- shell completion ----------------------------------------------------------------------


def complete(line: str) -> list[str]:
    """What bash is offered for the last word of ``line`` (a trailing space: a new word)."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    result = CliRunner().invoke(app, [], prog_name="smscredits", env={
        "_SMSCREDITS_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(cword)})
    assert result.exit_code == 0, result.output
    return [word for word in result.stdout.splitlines() if word]


def test_zones_complete() -> None:
    assert complete("smscredits user add bob --tz Europe/Bu") == [
        "Europe/Bucharest", "Europe/Budapest", "Europe/Busingen"]
    assert "localtime" not in complete("smscredits user add bob --tz local")


def test_event_kinds_complete() -> None:
    assert complete("smscredits events --kind price") == ["price.set", "price.deleted"]
    assert complete("smscredits log alice --kind refill.s") == ["refill.scheduled",
                                                                "refill.skipped"]


def test_schedule_words_complete() -> None:
    assert complete("smscredits refill schedule alice --every ") == ["day", "week", "month"]
    assert complete("smscredits refill schedule alice --every week --on ") == [
        "mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    assert complete("smscredits refill schedule alice --every month --on 3") == ["3", "30",
                                                                               "31"]
    assert complete("smscredits usage --by c") == ["country"]


def test_help_completes_command_names() -> None:
    assert complete("smscredits help pr") == ["price"]
    assert complete("smscredits help price ") == ["set", "delete", "list", "import", "quote"]


@pytest.fixture
def filled(cli: Any) -> Any:
    for args in (["user", "add", "alice"], ["user", "add", "albert"], ["user", "add", "bob"],
                 ["power", "create", "alice"], ["credits", "add", "alice", "100"],
                 ["price", "set", "HU", "0.5"], ["price", "set", "+3630", "0.4"],
                 ["refill", "schedule", "alice", "--every", "month", "--add", "5"],
                 ["charge", "alice", "--to", "+36301234567", "--parts", "1", "--id", "m-1"],
                 ["charge", "alice", "--to", "+36301234567", "--parts", "1", "--id", "m-2"]):
        assert cli(*args).exit_code == 0, (args, cli(*args).stderr)
    return cli


@pytest.mark.usefixtures("filled")
def test_names_from_the_database_complete() -> None:
    assert complete("smscredits credits add al") == ["albert", "alice"]
    assert complete("smscredits user show ") == ["albert", "alice", "bob"]
    assert complete("smscredits price quote --to +36301234567 --user b") == ["bob"]
    assert complete("smscredits price delete ") == ["default", "+3630", "HU"]
    assert complete("smscredits refill pause ") == ["1"]
    assert complete("smscredits refund m-") == ["m-2", "m-1"]  # newest first


def test_no_database_completes_nothing(tmp_path: Any) -> None:
    line = f"smscredits --db {tmp_path / 'none.db'} credits add "
    assert complete(line) == []
    assert not (tmp_path / "none.db").exists()
