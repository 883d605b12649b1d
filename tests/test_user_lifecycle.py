"""`user rename`, `user delete` and `user set-tz`: what the admin sees, what the journal
keeps, how open limit windows follow a new zone, and that `verify` still agrees. Both
engines."""

from __future__ import annotations

import json
from typing import Any

import pytest
from freezegun import freeze_time

from smscredits import ledger, pricing, reads, refills
from smscredits.charging import Charger, ChargeRequest, refund
from smscredits.storage.engine import Db
from smscredits.verify import verify

TO = "+36301234567"


def _details(db: Db, kind: str) -> list[dict[str, Any]]:
    """The detail of every event of this kind, oldest first, as a script reads it."""
    from sqlalchemy import select

    from smscredits.storage.tables import events

    with db.read() as conn:
        rows = conn.execute(select(events.c.detail).where(events.c.kind == kind)
                            .order_by(events.c.id)).all()
    return [json.loads(row[0]) for row in rows]


def ok_run(run: Any) -> bool:
    assert run.exit_code == 0, run.stderr
    return True


@pytest.fixture
def bob(db: Db) -> Db:
    pricing.set_price(db, "default", "1")
    ledger.add_user(db, "bob", tz="Europe/Budapest")
    return db


def test_user_added_journals_the_name(bob: Db) -> None:
    assert _details(bob, "user.added") == [{"name": "bob", "tz": "Europe/Budapest"}]


def test_rename_keeps_power_and_journal(bob: Db, cli: Any) -> None:
    ledger.create_power(bob, "bob", initial=5_000)
    r = cli("user", "rename", "bob", "robert")
    assert (r.exit_code, r.stdout) == (0, "robert: renamed from bob\n")
    assert cli("credits", "balance", "robert", "--json").json()["balance"] == 5
    assert _details(bob, "user.renamed") == [{"name": "robert", "old": {"name": "bob"}}]
    assert cli("user", "show", "bob").exit_code == 3
    assert verify(bob).ok


def test_rename_onto_an_existing_user_is_refused(bob: Db, cli: Any) -> None:
    ledger.add_user(bob, "carol")
    r = cli("user", "rename", "bob", "carol", "--json")
    assert r.exit_code == 6
    assert "user 'carol' already exists" in r.stderr
    r = cli("user", "rename", "bob", "bad name")
    assert r.exit_code == 2 and "bad user name 'bad name'" in r.stderr
    assert [u.user for u in ledger.list_users(bob)] == ["bob", "carol"]


def test_delete_is_refused_while_the_power_holds_credits(bob: Db, cli: Any) -> None:
    ledger.create_power(bob, "bob", initial=5_000)
    r = cli("user", "delete", "bob")
    assert r.exit_code == 6
    assert r.stderr.strip().endswith(
        "bob: balance 5, not 0: set it to 0 (credits set bob 0) before deleting the user")
    r = cli("--json", "user", "delete", "bob")
    assert r.exit_code == 6 and "balance_not_zero" in r.stderr
    assert ledger.get_user(bob, "bob").balance == 5


def test_delete_cancels_plans_keeps_the_journal_and_frees_the_name(bob: Db, cli: Any) -> None:
    ledger.create_power(bob, "bob", initial=0)
    refills.schedule_plan(bob, "bob", every="month", on="1", add=10_000)
    r = cli("user", "delete", "bob")
    assert (r.exit_code, r.stdout) == (0, "bob: user deleted (journal kept)\n")
    kinds = [e.kind for e in reads.query_events(bob, limit=10)]
    assert kinds[:3] == ["user.deleted", "power.deleted", "refill.cancelled"]
    assert _details(bob, "user.deleted") == [{"name": "bob"}]
    assert cli("user", "show", "bob").exit_code == 3
    assert verify(bob).ok
    # The name is free again; the new bob is another user with an empty history.
    assert cli("user", "add", "bob").exit_code == 0
    assert cli("power", "create", "bob", "--initial", "1").exit_code == 0
    assert verify(bob).ok, verify(bob).problems


def test_a_deleted_user_that_still_exists_is_found(bob: Db) -> None:
    from sqlalchemy import insert

    from smscredits.storage.tables import users

    with freeze_time("2027-12-01T10:00:00Z"):
        ledger.delete_user(bob, "bob")
        with bob.write() as conn:  # restored by hand from an old backup
            conn.execute(insert(users).values(id=1, name="bob", tz="Europe/Budapest",
                                              disabled=False, created_at=0))
    details = [p.detail for p in verify(bob).problems]
    assert "user deleted in the journal exists" in details


def test_set_tz_journals_old_and_new_zone(bob: Db, cli: Any) -> None:
    r = cli("user", "set-tz", "bob", "America/New_York")
    assert (r.exit_code, r.stdout) == (0, "bob: time zone America/New_York\n")
    assert _details(bob, "user.tz_changed") == [
        {"old": {"tz": "Europe/Budapest"}, "tz": "America/New_York"}]
    assert ok_run(cli("user", "set-tz", "bob", "America/New_York"))  # already: no event
    assert len(_details(bob, "user.tz_changed")) == 1
    r = cli("user", "set-tz", "bob", "Mars/Olympus")
    assert r.exit_code == 2 and "unknown time zone 'Mars/Olympus'" in r.stderr
    assert verify(bob).ok


def _charge(db: Db, msg: str, parts: int = 1) -> None:
    result = Charger(db).charge(ChargeRequest("bob", TO, parts=parts, id=msg))
    assert result.status == "charged", result


def test_set_tz_recounts_open_windows_in_the_new_zone(bob: Db, cli: Any) -> None:
    """Budapest is 6 hours ahead of New York. A charge at 23:30 UTC on 1 Dec 2027 is 2 Dec in
    Budapest but still 1 Dec in New York; one at 03:00 UTC on 2 Dec is 2 Dec in Budapest but
    1 Dec (22:00) in New York. Moving bob to New York at 04:00 UTC (2 Dec 05:00 in Budapest,
    1 Dec 23:00 in New York) makes his day 1 Dec New York time: it holds both charges and the
    one from 1 Dec 20:00 UTC, which Budapest counted in its 1 Dec (now closed) day."""
    with freeze_time("2027-12-01T12:00:00Z"):  # later than the host's clock: see stamp
        ledger.create_power(bob, "bob", initial=100_000)
        ledger.set_limits(bob, "bob", {"day": 10_000})
    with freeze_time("2027-12-01T20:00:00Z"):
        _charge(bob, "m-1", 1)
    with freeze_time("2027-12-01T23:30:00Z"):
        _charge(bob, "m-2", 2)
    with freeze_time("2027-12-02T03:00:00Z"):
        _charge(bob, "m-3", 3)
        refund(bob, "m-3")
        _charge(bob, "m-4", 4)
        day = reads.show_limits(bob, "bob").windows[0]
        assert (day.spent, day.resets_at) == (6, "2027-12-02T23:00:00Z")  # m-2 + m-4
    with freeze_time("2027-12-02T04:00:00Z"):
        assert cli("user", "set-tz", "bob", "America/New_York").exit_code == 0
        r = cli("limits", "show", "bob", "--json").json()
        day = r["windows"][0]
        assert (r["tz"], day["spent"], day["remaining"], day["resets_at"]) == (
            "America/New_York", 7, 3, "2027-12-02T05:00:00Z")  # m-1 + m-2 + m-4
        assert verify(bob).ok, verify(bob).problems
        # A refund after the move gives the room back in the new zone's window.
        refund(bob, "m-1")
        assert reads.show_limits(bob, "bob").windows[0].spent == 6
        assert verify(bob).ok, verify(bob).problems
    with freeze_time("2027-12-02T05:30:00Z"):  # past New York's midnight: a new day
        _charge(bob, "m-5", 1)
        assert reads.show_limits(bob, "bob").windows[0].spent == 1
        assert verify(bob).ok, verify(bob).problems


def test_verify_finds_a_window_edited_after_a_zone_change(bob: Db) -> None:
    from sqlalchemy import update

    from smscredits.storage.tables import powers

    with freeze_time("2027-12-01T12:00:00Z"):
        ledger.create_power(bob, "bob", initial=100_000)
        _charge(bob, "m-1", 2)
        ledger.set_tz(bob, "bob", "Asia/Tokyo")
        assert verify(bob).ok, verify(bob).problems
        with bob.write() as conn:
            conn.execute(update(powers).values(day_spent=0))
        problems = verify(bob).problems
    assert [(p.check, p.detail, p.expected, p.found) for p in problems] == [
        ("window", "day counter differs from its journal", 2, 0)]


def test_verify_finds_a_zone_changed_by_hand(bob: Db) -> None:
    from sqlalchemy import update

    from smscredits.storage.tables import users

    ledger.set_tz(bob, "bob", "Asia/Tokyo")
    with bob.write() as conn:
        conn.execute(update(users).values(tz="Europe/Budapest"))
    problems = verify(bob).problems
    assert [(p.detail, p.expected, p.found) for p in problems] == [
        ("time zone differs from its journal", "Asia/Tokyo", "Europe/Budapest")]


def test_verify_finds_a_name_changed_by_hand(bob: Db) -> None:
    from sqlalchemy import update

    from smscredits.storage.tables import users

    ledger.rename_user(bob, "bob", "robert")
    with bob.write() as conn:
        conn.execute(update(users).values(name="rob"))
    problems = verify(bob).problems
    assert [(p.detail, p.expected, p.found) for p in problems] == [
        ("name differs from its journal", "robert", "rob")]
