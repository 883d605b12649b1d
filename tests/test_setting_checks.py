"""Settings that contradict each other: a limit a larger window's limit makes unreachable is
accepted with a warning; a refill plan that could never add anything is refused."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest


@pytest.fixture
def alice(cli: Any) -> None:
    assert cli("user", "add", "alice").exit_code == 0
    assert cli("power", "create", "alice").exit_code == 0


@pytest.mark.usefixtures("alice")
def test_a_daily_limit_above_the_weekly_warns_on_stderr(cli: Any) -> None:
    run = cli("limits", "set", "alice", "--daily", "50", "--weekly", "30")
    assert run.exit_code == 0
    assert run.stderr == ("alice: daily limit 50 is above the weekly limit 30; the weekly "
                          "limit is reached first\n")
    assert "day        50" in run.stdout  # accepted as given
    limits = {w["window"]: w["limit"] for w in cli("limits", "show", "alice", "--json")
              .json()["windows"]}
    assert limits == {"day": 50, "week": 30, "month": None}


@pytest.mark.usefixtures("alice")
def test_the_warning_in_json(cli: Any) -> None:
    assert cli("limits", "set", "alice", "--weekly", "100").exit_code == 0
    run = cli("limits", "set", "alice", "--monthly", "80.5", "--json")
    assert run.exit_code == 0
    assert run.json()["warning"] == {
        "code": "unreachable_limit",
        "message": "alice: weekly limit 100 is above the monthly limit 80.5; the monthly "
                   "limit is reached first",
        "window": "week", "limit": 100, "reached_first": "month",
        "reached_first_limit": 80.5,
    }
    assert [w["limit"] for w in run.json()["windows"]] == [None, 100, Decimal("80.5")]


@pytest.mark.usefixtures("alice")
def test_a_daily_limit_above_the_monthly_with_no_weekly(cli: Any) -> None:
    run = cli("limits", "set", "alice", "--daily", "20", "--monthly", "10")
    assert run.stderr == ("alice: daily limit 20 is above the monthly limit 10; the monthly "
                          "limit is reached first\n")


@pytest.mark.usefixtures("alice")
def test_consistent_limits_say_nothing_more(cli: Any) -> None:
    run = cli("limits", "set", "alice", "--daily", "10", "--weekly", "10", "--monthly", "50")
    assert run.exit_code == 0 and run.stderr == ""
    assert "warning" not in cli("limits", "set", "alice", "--daily", "5", "--json").json()


@pytest.mark.usefixtures("alice")
def test_quiet_keeps_the_warning_quiet(cli: Any) -> None:
    run = cli("limits", "set", "alice", "--daily", "50", "--weekly", "30", "--quiet")
    assert run.exit_code == 0 and run.stdout == "" and run.stderr == ""


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("rule", [["--every", "month"], ["--when-below", "0"]])
def test_a_refill_topping_up_to_zero_is_refused(cli: Any, rule: list[str]) -> None:
    run = cli("refill", "schedule", "alice", *rule, "--top-up-to", "0")
    assert run.exit_code == 2
    assert run.stderr == "Error: bad --top-up-to 0: must be more than 0\n"
    assert cli("refill", "list", "--json").json() == []
