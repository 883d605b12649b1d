"""Promises that broke under concurrency, skewed clocks and admin flows, kept on both engines:
an account's events never go back in time (so a limit window never moves backwards), every
writer of a chain takes its head under the account's lock, ids are never reused, and a
refusal of an unknown user replays after the user is created."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from freezegun import freeze_time

from smscredits import ledger, pricing, reads, verify
from smscredits.charging import Charger, ChargeRequest
from tests.helpers import data

TO = "+36301234567"
# 2026-12-31 23:00 UTC is midnight in Budapest (UTC+1 in winter).
MIDNIGHT = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)


def events(cli: Any, user: str = "alice") -> list[dict[str, Any]]:
    return sorted(data(cli("events", user, "--json", "--limit", "1000")), key=lambda e: e["id"])


def assert_monotonic(rows: list[dict[str, Any]]) -> None:
    """Event instants never decrease as ids grow (ISO text in UTC sorts as time)."""
    ats = [e["at"] for e in rows]
    assert ats == sorted(ats), ats


def day_spent(cli: Any, user: str = "alice") -> Decimal:
    limits_ = data(cli("limits", "show", user, "--json"))
    return {w["window"]: w["spent"] for w in limits_["windows"]}["day"]


def setup_budapest(cli: Any, daily: str = "3") -> None:
    for args in (["price", "set", "default", "1"],
                 ["user", "add", "alice", "--tz", "Europe/Budapest"],
                 ["power", "create", "alice", "credits", "--initial", "100"],
                 ["limits", "set", "alice", "--daily", daily]):
        data(cli(*args, "--json"))


# -- item 1: a late stamp joins the newer window ------------------------------------------


def test_a_host_whose_clock_is_behind_charges_into_the_newer_day(cli: Any) -> None:
    """Host A (clock right) opens the new day and spends its limit; host B, two seconds
    behind, still thinks it is yesterday: its charge joins A's day and is refused, instead
    of moving the day back and starting a fresh counter."""
    with freeze_time(MIDNIGHT - timedelta(hours=1)):
        setup_budapest(cli)
    with freeze_time(MIDNIGHT + timedelta(seconds=1)):  # host A: 00:00:01 on 1 January
        for i in range(3):
            data(cli("charge", "alice", "--to", TO, "--parts", "1", "--id", f"a{i}", "--json"))
    with freeze_time(MIDNIGHT - timedelta(seconds=1)):  # host B: 23:59:59 on 31 December
        refused = cli("charge", "alice", "--to", TO, "--parts", "1", "--id", "b0", "--json")
        assert refused.exit_code == 5, refused.stdout
        assert json.loads(refused.stdout)["reason"] == "daily_limit"
        assert day_spent(cli) == 3  # the reader behind sees the newest window too
        # A credit change on host B is stamped at A's instant too.
        data(cli("credits", "add", "alice", "1", "--json"))
    with freeze_time(MIDNIGHT + timedelta(seconds=2)):
        assert day_spent(cli) == 3
        rows = events(cli)
        assert_monotonic(rows)
        assert rows[-1]["kind"] == "credits.added"
        assert rows[-1]["at"] == "2026-12-31T23:00:01Z"
        assert data(cli("verify", "--json"))["ok"] is True


def test_a_batch_stamped_before_midnight_that_commits_after_one_stamped_after_joins_it(
        db: Any) -> None:
    """The race of item 1 without processes: the account's latest event is already in the
    new day when a batch whose clock reads the old day takes it; the batch's charges are
    stamped at that event's instant, counted in the new day, and refused at its limit."""
    with freeze_time(MIDNIGHT - timedelta(hours=1)):
        pricing.set_price(db, "default", "1")
        ledger.add_user(db, "alice", tz="Europe/Budapest")
        ledger.create_power(db, "alice", initial=100_000)
        ledger.set_limits(db, "alice", {"day": 3_000})
    new_day = MIDNIGHT + timedelta(milliseconds=9)
    with freeze_time(new_day), Charger(db) as charger:
        results = charger.charge_batch(
            [ChargeRequest("alice", TO, parts=1, id=f"new{i}") for i in range(2)])
        assert [r.status for r in results] == ["charged"] * 2
    with freeze_time(MIDNIGHT - timedelta(milliseconds=10)), Charger(db) as charger:
        results = charger.charge_batch(
            [ChargeRequest("alice", TO, parts=1, id=f"old{i}") for i in range(3)])
    assert [r.status for r in results] == ["charged", "rejected", "rejected"]
    assert {r.reason for r in results[1:]} == {"daily_limit"}
    with freeze_time(new_day):
        account = ledger.get_account(db, "alice")
        assert account.balance == Decimal(97)
        report = verify.verify(db)
        assert report.ok, report.problems
        window = {w.window: w for w in reads.show_limits(db, "alice").windows}["day"]
        assert window.spent == Decimal(3)


# -- item 3: every chain writer takes the head under the account's lock -------------------


@pytest.mark.parametrize("admin", ["overdraft", "credits", "limits", "refund"])
def test_an_admin_change_beside_an_open_charge_batch_keeps_the_chain(db: Any,
                                                                    admin: str) -> None:
    """A charge batch holds the account; an admin command run meanwhile waits for it and
    then chains onto the batch's last event, never onto the head it saw before."""
    pricing.set_price(db, "default", "1")
    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", initial=100_000)
    with Charger(db) as charger:
        charger.charge(ChargeRequest("alice", TO, parts=1, id="first"))
    charger = Charger(db)
    pending = charger.begin([ChargeRequest("alice", TO, parts=1, id=f"m{i}") for i in range(5)],
                            background=False)  # charged, its transaction still open
    failures: list[BaseException] = []

    def change() -> None:
        from smscredits.charging import refund

        try:
            if admin == "overdraft":
                ledger.set_overdraft(db, "alice", 5_000)
            elif admin == "credits":
                ledger.add_credits(db, "alice", 1_000)
            elif admin == "limits":
                ledger.set_limits(db, "alice", {"day": 50_000})
            else:
                refund(db, "first")
        except BaseException as e:  # reported in the main thread
            failures.append(e)

    worker = threading.Thread(target=change)
    worker.start()
    worker.join(timeout=0.5)  # it waits on the account while the batch is open
    assert worker.is_alive() or failures, "the admin change ran beside an open batch"
    pending.wait()
    charger.close()
    worker.join(timeout=60)
    assert not worker.is_alive() and not failures, failures
    report = verify.verify(db)
    assert report.ok, report.problems


# -- item 12: ids are never reused --------------------------------------------------------


def test_a_deleted_powers_id_is_not_given_to_the_next_power(cli: Any) -> None:
    for args in (["user", "add", "a"], ["user", "add", "b"],
                 ["power", "create", "a", "credits", "--initial", "10"],
                 ["power", "delete", "a", "credits", "--force"],
                 ["power", "create", "b", "credits"]):
        data(cli(*args, "--json"))
    report = data(cli("verify", "--json"))
    assert report["ok"] is True, report
    [b] = data(cli("power", "list", "--json"))
    assert b["user"] == "b" and b["power_id"] == 2


# -- item 8: a refusal with no account replays -------------------------------------------


def test_a_refusal_of_an_unknown_user_replays_after_the_user_is_created(cli: Any) -> None:
    data(cli("price", "set", "default", "1", "--json"))
    first = cli("charge", "bob", "--to", TO, "--parts", "1", "--id", "x1", "--json")
    assert first.exit_code == 3
    assert json.loads(first.stdout)["reason"] == "unknown_user"
    for args in (["user", "add", "bob"], ["power", "create", "bob", "credits"],
                 ["credits", "add", "bob", "10"]):
        data(cli(*args, "--json"))
    again = cli("charge", "bob", "--to", TO, "--parts", "1", "--id", "x1", "--json")
    assert again.exit_code == 3, again.stdout
    result = json.loads(again.stdout)
    assert (result["reason"], result["replayed"]) == ("unknown_user", True)
    assert data(cli("credits", "balance", "bob", "--json"))["balance"] == 10
    # Another user under the same id is still a conflict.
    data(cli("user", "add", "carol", "--json"))
    other = cli("charge", "carol", "--to", TO, "--parts", "1", "--id", "x1", "--json")
    assert other.exit_code == 6


def test_verify_reports_a_latest_event_time_edited_in_the_database(cli: Any,
                                                                   db_url: str) -> None:
    """``powers.last_at`` decides the earliest instant of the next charge: set back, it would
    let a late stamp reopen an old window; verify finds it differing from the journal."""
    from smscredits.storage.engine import open_db

    data(cli("price", "set", "default", "1", "--json"))
    data(cli("user", "add", "alice", "--json"))
    data(cli("power", "create", "alice", "credits", "--initial", "10", "--json"))
    data(cli("charge", "alice", "--to", TO, "--parts", "1", "--json"))
    assert data(cli("verify", "--json"))["ok"] is True
    handle = open_db(db_url)
    try:
        with handle.write() as conn:
            conn.exec_driver_sql("UPDATE powers SET last_at = last_at - 86400000000")
    finally:
        handle.dispose()
    run = cli("verify", "--json")
    assert run.exit_code == 1
    problems = json.loads(run.stdout)["problems"]
    assert [(p["check"], p["detail"]) for p in problems] == [
        ("time", "latest event time differs from its journal")]
