"""`smscredits check`: users low on credits or near a limit, as cron and monitoring read it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from freezegun import freeze_time

from tests.helpers import ok

TO = "+4915112345678"


def setup(cli: Any) -> None:
    for args in (["price", "set", "default", "1"],
                 ["user", "add", "alice", "--tz", "Europe/Budapest"],
                 ["power", "create", "alice", "credits", "--initial", "5"],
                 ["user", "add", "bob"], ["power", "create", "bob", "credits", "--initial", "100"],
                 ["limits", "set", "bob", "--daily", "10"],
                 ["charge", "bob", "--to", TO, "--parts", "9"],
                 ["user", "add", "carol"],
                 ["power", "create", "carol", "credits", "--overdraft", "unlimited"],
                 ["user", "add", "dave"], ["power", "create", "dave", "credits"],
                 ["user", "disable", "dave"]):
        ok(cli(*args))


@freeze_time(datetime(2026, 12, 3, 12, 0, tzinfo=UTC))
def test_check_passes_when_nobody_is_out_of_credits_or_limit(cli: Any) -> None:
    setup(cli)
    run = ok(cli("check"))
    # dave (0 credits) is disabled: skipped; carol has an unlimited overdraft.
    assert run.stdout == ("ok: 3 account(s) checked, none low on credits or near a limit\n")
    assert ok(cli("check", "--quiet")).stdout == ""


@freeze_time(datetime(2026, 12, 3, 12, 0, tzinfo=UTC))
def test_check_lists_low_users_and_nearly_used_limits_and_exits_1(cli: Any) -> None:
    setup(cli)
    run = cli("check", "--below", "10", "--limit-left", "20")
    assert run.exit_code == 1
    assert run.stdout.splitlines() == [
        "alice: 5 credits available, below 10",
        "bob: daily limit 9 of 10 spent (10% left), resets 2026-12-04 00:00 UTC",
    ]
    data = json.loads(cli("check", "--below", "10", "--limit-left", "20", "--json").stdout,
                      parse_float=Decimal)
    assert data["ok"] is False and data["checked"] == 3
    assert [(f["user"], f["check"], f["value"], f["threshold"]) for f in data["findings"]] == [
        ("alice", "available", 5, 10), ("bob", "day", 1, 10)]
    assert data["findings"][1]["resets_at"] == "2026-12-04T00:00:00Z"


@freeze_time(datetime(2026, 12, 3, 12, 0, tzinfo=UTC))
def test_a_threshold_per_user_overrides_the_default(cli: Any) -> None:
    setup(cli)
    run = cli("check", "--below", "1", "--below", "bob=500", "--json")
    assert run.exit_code == 1
    findings = json.loads(run.stdout)["findings"]
    assert [(f["user"], f["check"]) for f in findings] == [("bob", "available")]
    assert ok(cli("check", "--below", "alice=3")).stdout.startswith("ok: ")


def test_check_refuses_bad_thresholds_by_name(cli: Any) -> None:
    setup(cli)
    bad = cli("check", "--below", "x")
    assert bad.exit_code == 2 and "--below" in bad.stderr and "'x'" in bad.stderr
    pct = cli("check", "--limit-left", "150")
    assert pct.exit_code == 2 and "--limit-left" in pct.stderr
    nobody = cli("check", "--below", "zed=5")
    assert nobody.exit_code == 3 and "zed" in nobody.stderr
