"""The gateway-wide views: `usage` without a user (and `--by user`), `--since/--until` read
as `log` reads them, periods cut at local midnights across DST, and `limits show` without
a user. What a script reads (JSON, CSV) and what the admin sees at 80 columns. Both
engines."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest
from freezegun import freeze_time

from tests.helpers import ok

HU, US = "+36301234567", "+12125551234"


def charge(cli: Any, user: str, parts: int, to: str = HU) -> None:
    ok(cli("charge", user, "--to", to, "--parts", str(parts)))


@pytest.fixture
def gateway(cli: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Budapest by default; alice in Budapest, bob in New York. Charges around the end of
    summer time in Budapest (2026-10-25 01:00 UTC), whose day is 25 hours long."""
    monkeypatch.setenv("SMSCREDITS_DEFAULT_TZ", "Europe/Budapest")
    monkeypatch.setenv("COLUMNS", "80")
    with freeze_time("2026-10-24T12:00:00Z") as clock:
        ok(cli("price", "set", "default", "1"))
        ok(cli("price", "set", "US", "0.5"))
        for user, tz in (("alice", "Europe/Budapest"), ("bob", "America/New_York")):
            ok(cli("user", "add", user, "--tz", tz))
            ok(cli("power", "create", user, "--initial", "1000"))
        for at, user, parts, to in (
            ("2026-10-24T21:59:00Z", "alice", 1, HU),  # 24 Oct 23:59 CEST
            ("2026-10-24T22:00:00Z", "alice", 2, HU),  # 25 Oct 00:00 CEST: the 25th
            ("2026-10-24T22:30:00Z", "bob", 4, US),    # 24 Oct 18:30 in New York
            ("2026-10-25T22:59:00Z", "bob", 8, HU),    # 25 Oct 23:59 CET: still the 25th
            ("2026-10-25T23:00:00Z", "alice", 16, HU),  # 26 Oct 00:00 CET
        ):
            clock.move_to(at)
            charge(cli, user, parts, to)
        clock.move_to("2026-10-26T12:00:00Z")
        yield cli


def test_gateway_usage_by_day_cuts_at_local_midnights_across_dst(gateway: Any) -> None:
    with freeze_time("2026-10-26T12:00:00Z"):
        rows = ok(gateway("usage", "--json")).json()
        text = ok(gateway("usage")).stdout
    assert [(r["period"], r["messages"], r["spent"], r["since"], r["until"]) for r in rows] == [
        ("2026-10-26", 1, D(16), "2026-10-25T23:00:00Z", "2026-10-26T23:00:00Z"),
        ("2026-10-25", 3, D(12), "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"),
        ("2026-10-24", 1, D(1), "2026-10-23T22:00:00Z", "2026-10-24T22:00:00Z"),
    ]
    assert text.splitlines()[0].strip() == "Spend of the gateway by day (Europe/Budapest)"
    assert text.splitlines()[2].split()[:2] == ["2026-10-26", "16"]


def test_one_users_usage_is_in_the_users_zone(gateway: Any) -> None:
    with freeze_time("2026-10-26T12:00:00Z"):
        rows = ok(gateway("usage", "bob", "--json")).json()
    assert [(r["period"], r["spent"], r["since"], r["until"]) for r in rows] == [
        ("2026-10-25", D(8), "2026-10-25T04:00:00Z", "2026-10-26T04:00:00Z"),
        ("2026-10-24", D(2), "2026-10-24T04:00:00Z", "2026-10-25T04:00:00Z"),
    ]


def test_usage_by_user_and_by_week(gateway: Any) -> None:
    with freeze_time("2026-10-26T12:00:00Z"):
        by_user = ok(gateway("usage", "--by", "user", "--json")).json()
        by_week = ok(gateway("usage", "--by", "week", "--csv")).stdout
        refused = gateway("usage", "alice", "--by", "user")
    assert [(r["period"], r["messages"], r["spent"], r["since"], r["until"])
            for r in by_user] == [("alice", 3, D(19), None, None), ("bob", 2, D(10), None, None)]
    assert by_week.splitlines() == [
        "period,messages,parts,spent,refunded,held,settled,voided,expired,since,until",
        "2026-W44,1,16,16,0,0,0,0,0,2026-10-25T23:00:00Z,2026-11-01T23:00:00Z",
        "2026-W43,4,15,13,0,0,0,0,0,2026-10-18T22:00:00Z,2026-10-25T23:00:00Z",
    ]
    assert refused.exit_code == 2
    assert "--by user needs no USER" in refused.stderr


def test_since_and_until_mean_what_they_mean_for_log(gateway: Any) -> None:
    with freeze_time("2026-10-26T12:00:00Z"):
        window = ("--since", "2026-10-24T22:00Z", "--until", "2026-10-25T23:00Z")
        by_country = ok(gateway("usage", "--by", "country", *window, "--json")).json()
        logged = ok(gateway("log", *window, "--kind", "message.charged", "--json")).json()
        recent = ok(gateway("usage", "--by", "user", "--since", "1d", "--json")).json()
        for args in (("--since", "2d", "--until", "3d"), ("--since", "yesterday")):
            bad_usage, bad_log = gateway("usage", *args), gateway("log", *args)
            assert (bad_usage.exit_code, bad_usage.stderr) == (bad_log.exit_code,
                                                               bad_log.stderr)
            assert bad_usage.exit_code == 2
    assert [(r["period"], r["messages"], r["spent"], r["since"], r["until"])
            for r in by_country] == [("HU", 2, D(10), "2026-10-24T22:00:00Z",
                                      "2026-10-25T23:00:00Z"),
                                     ("US", 1, D(2), "2026-10-24T22:00:00Z",
                                      "2026-10-25T23:00:00Z")]
    assert len(logged) == 3
    assert [(r["period"], r["spent"]) for r in recent] == [("alice", D(16)), ("bob", D(8))]


def test_limits_show_without_a_user_lists_every_window_least_left_first(
        gateway: Any) -> None:
    with freeze_time("2026-10-26T12:00:00Z"):
        ok(gateway("limits", "set", "alice", "--daily", "20"))
        ok(gateway("limits", "set", "bob", "--weekly", "12", "--monthly", "100"))
        ok(gateway("user", "add", "carol"))  # no power: not listed
        rows = ok(gateway("limits", "show", "--json")).json()
        text = ok(gateway("limits", "show")).stdout
    assert [(r["user"], r["window"], r["limit"], r["spent"], r["remaining"], r["resets_at"])
            for r in rows] == [
        ("alice", "day", D(20), D(16), D(4), "2026-10-26T23:00:00Z"),
        ("bob", "week", D(12), D(0), D(12), "2026-11-02T05:00:00Z"),  # a new week in New York
        ("bob", "month", D(100), D(10), D(90), "2026-11-01T04:00:00Z"),
        ("alice", "month", None, D(19), None, "2026-10-31T23:00:00Z"),  # most spent first
        ("alice", "week", None, D(16), None, "2026-11-01T23:00:00Z"),
        ("bob", "day", None, D(0), None, "2026-10-27T04:00:00Z"),
    ]
    assert text.splitlines() == [
        "                        Limits left                         ",
        "User   Window  Limit  Spent  Remaining  Resets at           ",
        "────────────────────────────────────────────────────────────",
        "alice  day        20     16          4  2026-10-27 00:00 CET",
        "bob    week       12      0         12  2026-11-02 00:00 EST",
        "bob    month     100     10         90  2026-11-01 00:00 EDT",
        "alice  month             19             2026-11-01 00:00 CET",
        "alice  week              16             2026-11-02 00:00 CET",
        "bob    day                0             2026-10-27 00:00 EDT",
    ]


def test_limits_show_without_powers_says_so(cli: Any) -> None:
    shown = ok(cli("limits", "show"))
    assert (shown.stdout, shown.stderr) == ("", "no powers yet\n")
    assert ok(cli("limits", "show", "--json")).json() == []
