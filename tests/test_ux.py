"""What a sysadmin meets at a terminal: help, completion, panels and charts at 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from smscredits.cli import app

GROUPS = ["user", "power", "credits", "limits", "refill", "price", "db", "config"]


def _commands(group: Any, prefix: list[str]) -> list[list[str]]:
    found = []
    for name in getattr(group, "list_commands", lambda _ctx: [])(None):
        found.append([*prefix, name])
        found.extend(_commands(group.get_command(None, name), [*prefix, name]))
    return found


def all_commands() -> list[list[str]]:
    import typer

    return [[], *_commands(typer.main.get_command(app), [])]


@pytest.mark.parametrize("path", all_commands(), ids=lambda p: " ".join(p) or "root")
def test_every_help_ends_with_an_example(path: list[str]) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0
    last = [line for line in result.stdout.splitlines() if line.strip()][-1]
    assert "Example: smscredits" in result.stdout and "smscredits" in last


def test_root_help_groups_commands_as_the_tutorial_does() -> None:
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["--help"]).stdout
    sections = ["Users and powers:", "Credits:", "Limits:", "Refills:", "Prices and charging:",
                "Logs:", "Setup:"]
    positions = [out.index(s) for s in sections]
    assert positions == sorted(positions)


def test_help_and_version_do_not_import_sqlalchemy() -> None:
    code = (
        "import sys\n"
        "from smscredits.cli import main\n"
        "sys.argv = ['smscredits', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('sqlalchemy', 'sqlmodel', 'phonenumbers', 'alembic') "
        "if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    for flag in ("--help", "--version"):
        out = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True,
                             check=True).stdout
        assert "HEAVY []" in out, out


def test_user_names_complete_from_the_database(cli: Any, db_url: str) -> None:
    for name in ("alice", "albert", "bob"):
        assert cli("user", "add", name).exit_code == 0
    env = {**os.environ, "SMSCREDITS_DB": db_url, "_SMSCREDITS_COMPLETE": "complete_bash",
           "COMP_WORDS": "smscredits credits balance al", "COMP_CWORD": "3"}
    # The installed console script, as a shell calls it.
    script = Path(sys.executable).with_name("smscredits")
    out = subprocess.run([str(script)], env=env, capture_output=True, text=True).stdout
    assert sorted(out.split()) == ["albert", "alice"]


def test_balance_panel_at_80_columns(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    with freeze_time("2026-11-25 09:30:00"):
        for args in (["user", "add", "alice", "--tz", "Europe/Budapest"],
                     ["power", "create", "alice", "credits", "--initial", "100"],
                     ["price", "set", "default", "1"],
                     ["limits", "set", "alice", "--daily", "10", "--monthly", "100"],
                     ["refill", "schedule", "alice", "--every", "day", "--add", "5"],
                     ["charge", "alice", "--to", "+36301234567", "--parts", "5"]):
            assert cli(*args).exit_code == 0
        out = cli("credits", "balance", "alice").stdout
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "alice (Europe/Budapest)" in lines[0]
    day = next(line for line in lines if "│ day" in line)
    # 5 of 10 spent: half the 20-cell bar is full; it resets at local midnight.
    assert "██████████░░░░░░░░░░" in day and "5 / 10" in day
    assert "resets 2026-11-26 00:00 CET" in day
    assert any("no limit" in line and "week" in line for line in lines)
    assert any("add 5 every day at 00:00" in line for line in lines)
    assert any("next 2026-11-26 00:00 CET" in line for line in lines)


def test_usage_draws_bars_with_numbers_and_json_gives_the_data(cli: Any) -> None:
    with freeze_time("2026-11-24 09:30:00") as clock:
        for args in (["user", "add", "alice"], ["power", "create", "alice", "credits",
                                                "--initial", "100"],
                     ["price", "set", "default", "1"]):
            assert cli(*args).exit_code == 0
        for day, parts in ((24, 4), (25, 2)):
            clock.move_to(f"2026-11-{day} 12:00:00")
            assert cli("charge", "alice", "--to", "+36301234567", "--parts", str(parts)
                       ).exit_code == 0
        chart = cli("usage", "alice").stdout
        data = cli("usage", "alice", "--json").json()
    rows = {line.split()[0]: line for line in chart.splitlines() if line.startswith("2026")}
    assert rows["2026-11-24"].count("█") == 30  # the biggest day fills the bar
    assert rows["2026-11-25"].count("█") == 15
    assert [(r["period"], r["spent"], r["messages"]) for r in data] == [
        ("2026-11-25", 2, 1), ("2026-11-24", 4, 1)]


def test_no_progress_bar_when_stderr_is_not_a_terminal(cli: Any, tmp_path: Any) -> None:
    assert cli("user", "add", "alice").exit_code == 0
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"user": "alice", "to": "+36301234567", "parts": 1}\n' * 3)
    run = cli("charge", "--file", str(batch))
    assert "\x1b" not in run.stderr and "━" not in run.stderr
    assert run.stderr.strip().startswith("3 line(s)")
