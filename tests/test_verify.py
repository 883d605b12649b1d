"""``verify``: one consistent snapshot of a live ledger, and every money-deciding state
(balance, windows, overdraft, limits, disabled flag, plan status, message status) checked
against the journal, so that a direct edit of the database is found. Both engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import event, text

from smscredits import ledger, pricing, refills
from smscredits.charging import Charger, ChargeRequest, refund
from smscredits.storage.engine import Db, open_db
from smscredits.verify import verify

TO = "+36301234567"


@pytest.fixture
def alice(db: Db) -> Db:
    """alice, Budapest time, 1000 credits, a daily limit of 500; a message costs 1."""
    pricing.set_price(db, "default", "1")
    ledger.add_user(db, "alice", tz="Europe/Budapest")
    ledger.create_power(db, "alice", initial=1_000_000)
    ledger.set_limits(db, "alice", {"day": 500_000})
    Charger(db).charge(ChargeRequest("alice", TO, parts=1, id="m-0"))
    return db


@pytest.fixture
def other(db_url: str) -> Iterator[Db]:
    """A second handle on the same database: another process's connections."""
    handle = open_db(db_url, actor="gateway")
    yield handle
    handle.dispose()


def _sql(db: Db, sql: str, **params: Any) -> None:
    with db.write() as conn:
        conn.execute(text(sql), params)


def _problems(db: Db) -> list[tuple[str, str, str]]:
    return [(p.check, p.user, p.detail) for p in verify(db).problems]


# -- item 4: one snapshot --------------------------------------------------------------------


def test_verify_reads_one_snapshot_while_charges_commit(alice: Db, other: Db) -> None:
    """A charge (its message, event, balance, window counters and chain head) commits
    between every two of verify's statements: verify sees none of them and finds nothing
    wrong (was, on Postgres: balance differs, latest events missing)."""
    charger = Charger(other)
    charged: list[str] = []

    def commit_a_charge(*_: Any) -> None:
        result = charger.charge(ChargeRequest("alice", TO, parts=1, id=f"live-{len(charged)}"))
        assert result.status == "charged"
        charged.append(result.id or "")

    event.listen(alice.engine, "after_execute", commit_a_charge)
    try:
        report = verify(alice)
    finally:
        event.remove(alice.engine, "after_execute", commit_a_charge)
        charger.close()
    assert len(charged) >= 3  # the charges really came between verify's statements
    assert report.problems == []
    assert report.ok
    # What verify saw: the ledger as it was when it started (3 events + the first charge).
    assert report.events == 5
    assert verify(alice).ok  # and the ledger with every charge in it verifies too


# -- item 11: every money-deciding state is checked against the journal ------------------------


def _verify_cli(cli: Any) -> list[dict[str, Any]]:
    """``verify --json``'s problems, after checking that it failed with exit code 1."""
    run = cli("verify", "--json")
    assert run.exit_code == 1, run.stdout
    assert run.json()["ok"] is False
    return run.json()["problems"]


def _one(problems: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(problems) == 1, problems
    return problems[0]


def test_a_refunded_message_set_back_to_charged_is_found(alice: Db, cli: Any) -> None:
    """Setting a refunded message back to `charged` let `refund` give its credits back a
    second time, and verify passed (was: two message.refunded events, verify clean)."""
    assert cli("refund", "m-0").exit_code == 0
    _sql(alice, "UPDATE messages SET status = 'charged' WHERE id = 'm-0'")
    found = _one(_verify_cli(cli))
    assert (found["check"], found["user"], found["expected"], found["found"]) == (
        "message", "alice", "refunded", "charged")
    assert "'m-0'" in found["detail"] and "status differs" in found["detail"]
    assert cli("refund", "m-0").exit_code == 0  # the tampered row lets it through ...
    found = _one(_verify_cli(cli))  # ... and the second refund is named
    assert found["check"] == "message" and "more than once" in found["detail"]
    assert found["found"] == "1 charge(s), 0 hold(s), 2 refund(s), 0 unmetered"
    assert cli("log", "alice", "--json").json()[0]["id"] == found["event_id"]


def test_an_event_without_an_account_carrying_an_amount_is_found(alice: Db, cli: Any) -> None:
    """An inserted credit with no account (power_id NULL) showed in `log` as a credit and
    verify passed."""
    _sql(alice, "INSERT INTO events (at, user_id, power_id, kind, amount, actor) "
         "SELECT 1, id, NULL, 'credits.added', 5000000, 'x' FROM users WHERE name = 'alice'")
    found = _one(_verify_cli(cli))
    assert (found["check"], found["user"], found["found"]) == ("event", "alice", 5000)
    assert found["detail"] == "event without an account carries an amount"
    assert found["event_id"] == cli("events", "--json").json()[0]["id"]


def test_events_of_an_account_that_does_not_exist_are_found(alice: Db, cli: Any) -> None:
    _sql(alice, "INSERT INTO events (at, user_id, power_id, kind, amount, balance_after, actor)"
         " SELECT 1, id, 999, 'credits.added', 5000000, 5000000, 'x' FROM users "
         "WHERE name = 'alice'")
    found = _one(_verify_cli(cli))
    assert (found["check"], found["user"]) == ("chain", "alice")


EDITS = {
    # what is edited: (statement, check, expected, found)
    "overdraft": ("UPDATE powers SET overdraft = NULL", "overdraft", 0, "unlimited"),
    "daily limit": ("UPDATE powers SET daily_limit = 900000", "limit", 500, 900),
    "weekly limit": ("UPDATE powers SET weekly_limit = 2000", "limit", "unlimited", 2),
    "monthly limit": ("UPDATE powers SET monthly_limit = 0", "limit", "unlimited", 0),
    "disabled flag": ("UPDATE users SET disabled = TRUE", "user", False, True),
    # Vienna keeps Budapest's clock: the windows stay as they are at any hour, only the zone
    # differs from its journal.
    "time zone": ("UPDATE users SET tz = 'Europe/Vienna'", "user", "Europe/Budapest",
                  "Europe/Vienna"),
    "plan status": ("UPDATE refill_plans SET status = 'active'", "plan", "paused", "active"),
}


@pytest.mark.parametrize("what", list(EDITS))
def test_a_state_edited_in_the_database_is_found(alice: Db, cli: Any, what: str) -> None:
    """Each state that decides money is derived from the journal and compared with its row
    (was: overdraft, limits, disabled flag, zone and plan status edits went unnoticed)."""
    plan = refills.schedule_plan(alice, "alice", every="day", add=1000)
    refills.set_status(alice, plan.id, "paused")
    assert verify(alice).ok
    statement, check, expected, found = EDITS[what]
    _sql(alice, statement)
    problem = _one(_verify_cli(cli))
    assert (problem["check"], problem["user"]) == (check, "alice")
    assert (problem["expected"], problem["found"]) == (expected, found)
    assert "differs from its journal" in problem["detail"]


MESSAGE_EDITS = {
    "a rejected message made charged": (
        "UPDATE messages SET status = 'charged', power_id = (SELECT id FROM powers), cost = 1000"
        " WHERE id = 'r-1'", "rejected", "charged"),
    "a cost raised": ("UPDATE messages SET cost = 9000 WHERE id = 'm-0'", 1, 9),
    "a message moved to another account": (
        "UPDATE messages SET power_id = power_id + 100 WHERE id = 'm-0'", None, None),
    "an unmetered message given an account": (
        "UPDATE messages SET power_id = (SELECT id FROM powers), cost = 1000 WHERE id = 'u-1'",
        None, None),
}


@pytest.mark.parametrize("what", list(MESSAGE_EDITS))
def test_a_message_edited_in_the_database_is_found(alice: Db, cli: Any, what: str) -> None:
    """A message row decides what `refund` gives back: its status, cost and account must be
    its journal's."""
    ledger.add_user(alice, "bob")  # no credits power: not metered
    assert Charger(alice).charge(ChargeRequest("bob", TO, parts=1, id="u-1")).status == "charged"
    ledger.set_limits(alice, "alice", {"day": 1_000})
    refused = Charger(alice).charge(ChargeRequest("alice", TO, parts=1, id="r-1"))
    assert refused.reason == "daily_limit"
    assert verify(alice).ok
    statement, expected, found = MESSAGE_EDITS[what]
    _sql(alice, statement)
    problem = _one(_verify_cli(cli))
    assert problem["check"] == "message" and problem["user"] in ("alice", "bob")
    if expected is not None:
        assert (problem["expected"], problem["found"]) == (expected, found)


def test_a_deleted_message_row_is_found(alice: Db, cli: Any) -> None:
    """Without its row, a message id can be charged again."""
    _sql(alice, "DELETE FROM messages WHERE id = 'm-0'")
    problem = _one(_verify_cli(cli))
    assert problem["check"] == "message" and "not in the messages table" in problem["detail"]


def test_an_account_inserted_without_events_is_found(alice: Db, cli: Any) -> None:
    """A power row with no journal would charge on an unlimited overdraft unnoticed."""
    ledger.add_user(alice, "mallory")
    _sql(alice, "INSERT INTO powers (user_id, kind, balance, overdraft, day_key, day_spent, "
         "week_key, week_spent, month_key, month_spent, created_at) SELECT id, 'credits', 0, "
         "NULL, 0, 0, 0, 0, 0, 0, 1 FROM users WHERE name = 'mallory'")
    problem = _one(_verify_cli(cli))
    assert (problem["check"], problem["user"]) == ("overdraft", "mallory")


def test_deleting_a_power_journals_the_plans_it_cancels(alice: Db, cli: Any) -> None:
    """`power delete` cancels the user's plans: each with a refill.cancelled event saying
    why, so that a plan's status is its journal's (was: a plain UPDATE, no event)."""
    kept = refills.schedule_plan(alice, "alice", every="day", add=1000)
    paused = refills.schedule_plan(alice, "alice", every="week", add=1000)
    refills.set_status(alice, paused.id, "paused")
    done = refills.schedule_plan(alice, "alice", every="month", add=1000)
    refills.set_status(alice, done.id, "cancelled")
    ledger.delete_power(alice, "alice", force=True)
    cancelled = cli("events", "--kind", "refill.cancelled", "--json").json()
    assert {(e["ref"], e["note"]) for e in cancelled} == {
        (f"plan:{done.id}", None), (f"plan:{kept.id}", "credits power deleted"),
        (f"plan:{paused.id}", "credits power deleted")}
    assert cli("verify").exit_code == 0
    # A journal written before these events existed still verifies: its power.deleted
    # cancels the user's plans.
    _sql(alice, "DELETE FROM events WHERE note = 'credits power deleted'")
    assert cli("verify").exit_code == 0


def test_a_ledger_that_went_through_every_operation_verifies(alice: Db, cli: Any) -> None:
    """No false alarm: every command that moves a state leaves a journal that replays to it."""
    # The day after the fixture's charge (an account's events never go back in time).
    with freeze_time(datetime.now(UTC) + timedelta(days=1)) as frozen:
        ledger.set_overdraft(alice, "alice", 5_000)
        ledger.set_overdraft(alice, "alice", None)
        ledger.set_limits(alice, "alice", {"week": 3_000, "month": 10_000})
        ledger.set_limits(alice, "alice", {"week": None, "day": 2_000})
        ledger.set_disabled(alice, "alice", True)
        ledger.set_disabled(alice, "alice", False)
        ledger.add_user(alice, "bob", tz="Asia/Tokyo")
        ledger.set_disabled(alice, "bob", True)
        ledger.create_power(alice, "bob", initial=3_000, overdraft=1_000)
        daily = refills.schedule_plan(alice, "alice", every="day", add=1_000)
        below = refills.schedule_plan(alice, "bob", below=2_000, add=5_000)
        refills.set_status(alice, below.id, "paused")
        refills.set_status(alice, below.id, "active")
        charger = Charger(alice)
        for i in range(3):
            charger.charge(ChargeRequest("alice", TO, parts=1, id=f"a-{i}"))
        charger.charge(ChargeRequest("bob", TO, parts=1, id="b-1"))
        charger.charge(ChargeRequest("ghost", TO, parts=1, id="g-1"))  # rejected
        charger.close()
        refund(alice, "a-1")
        frozen.tick(timedelta(days=3))
        refills.run(alice)
        refills.set_status(alice, daily.id, "cancelled")
        ledger.add_credits(alice, "alice", -2_000)
        ledger.set_credits(alice, "bob", 10_000)
        ledger.delete_power(alice, "bob", force=True)
        report = verify(alice)
    assert report.problems == []
    assert cli("verify").exit_code == 0


@pytest.mark.parametrize("kind", ["power.created", "limits.set", "user.added"])
def test_an_unreadable_detail_is_a_problem_not_a_crash(alice: Db, cli: Any, kind: str) -> None:
    _sql(alice, "UPDATE events SET detail = '[' WHERE kind = :kind", kind=kind)
    problems = _verify_cli(cli)
    assert ("event", "alice", "event detail unreadable") in {
        (p["check"], p["user"], p["detail"]) for p in problems}
