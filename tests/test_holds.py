"""Holds through the Python API: hold, settle, void, delivery reports, expiry and batches
mixing them, on SQLite and Postgres.

Each test asserts what a user sees: the result's status, reason and exit code, the account's
balance, what is held and the limit windows, the journal's events for the message, and a
clean ``verify`` at the end. Time moves only with freezegun.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import select, update

from smscredits import clock, holds, ledger, pricing, reads, refills
from smscredits.charging import Charger, ChargeRequest
from smscredits.charging.model import BULK_BATCH, ChargeResult, MessageOp
from smscredits.errors import Conflict, InsufficientCredits
from smscredits.storage.engine import Db, open_db
from smscredits.storage.tables import events, messages, powers, users
from smscredits.usage import usage
from smscredits.verify import verify

TO = "+36301234567"  # HU mobile
D = Decimal
# A Thursday in December, Budapest on CET (UTC+1): the 4th is the same week and month.
T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
# When the fixture's accounts are made: before every instant a test freezes (an account's
# clock never goes back, so its events must not be later than the test's).
SETUP = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
S = 1_000_000  # one second in microseconds


# -- helpers -------------------------------------------------------------------------------


def power(db: Db, user: str = "alice") -> tuple[Decimal, Decimal]:
    """The power row's balance and what it holds."""
    with db.read() as conn:
        row = conn.execute(
            select(powers.c.balance, powers.c.held).join(users, users.c.id == powers.c.user_id)
            .where(users.c.name == user)).one()
    return D(row.balance) / 1000, D(row.held) / 1000


def spent(db: Db, user: str = "alice") -> tuple[Decimal, Decimal, Decimal]:
    """What the day, week and month windows count now."""
    day, week, month = reads.show_limits(db, user).windows
    return day.spent, week.spent, month.spent


def kinds(db: Db, msg_id: str) -> list[str]:
    """The message's events, oldest first."""
    with db.read() as conn:
        return list(conn.execute(select(events.c.kind).where(events.c.ref == msg_id)
                                 .order_by(events.c.id)).scalars())


def status_of(db: Db, msg_id: str) -> str:
    with db.read() as conn:
        return str(conn.execute(select(messages.c.status)
                                .where(messages.c.id == msg_id)).scalar_one())


def every_row(db: Db) -> dict[str, list[tuple[Any, ...]]]:
    """The rows an act that changes nothing must leave alone."""
    with db.read() as conn:
        return {t: [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY 1")]
                for t in ("powers", "events", "messages")}


def assert_verified(db: Db) -> None:
    report = verify(db)
    assert report.ok, report.problems


def hold(charger: Charger, msg_id: str, parts: int, user: str = "alice",
         ttl: int | None = None) -> ChargeResult:
    return charger.hold(ChargeRequest(user, TO, parts=parts, id=msg_id, ttl=ttl))


def charge(charger: Charger, msg_id: str, parts: int, user: str = "alice") -> ChargeResult:
    return charger.charge(ChargeRequest(user, TO, parts=parts, id=msg_id))


def done(result: ChargeResult, status: str, *, replayed: bool = False) -> ChargeResult:
    """The result, once it has this status and exits 0."""
    assert (result.status, result.replayed, result.exit_code) == (status, replayed, 0), result
    return result


def failed(result: ChargeResult, status: str, reason: str, exit_code: int) -> ChargeResult:
    assert (result.status, result.reason, result.exit_code) == (status, reason, exit_code), \
        result
    return result


@pytest.fixture
def charger(db: Db) -> Iterator[Charger]:
    """alice (Budapest) with 10 credits, a price of 1 a part, the default hold rules; the
    test runs at T0 unless it moves the clock itself (so that no window ends under it)."""
    db.hold_rules = holds.Rules()
    with freeze_time(SETUP):
        pricing.set_price(db, "default", "1")
        ledger.add_user(db, "alice", tz="Europe/Budapest")
        ledger.create_power(db, "alice", initial=10_000)
    with freeze_time(T0), Charger(db) as c:
        yield c


# -- hold ----------------------------------------------------------------------------------


def test_a_hold_reserves_its_cost_without_moving_the_balance(db: Db, charger: Charger) -> None:
    with freeze_time(T0):
        r = done(hold(charger, "m1", 3), "held")
        assert (r.cost, r.held, r.balance, r.parts, r.metered) == (D(3), D(3), D(10), 3, True)
        assert r.expires_at == "2026-12-05T10:00:00Z"  # the default ttl: 48 hours
        assert power(db) == (D(10), D(3))
        assert spent(db) == (D(3), D(3), D(3))
        assert status_of(db, "m1") == "held"
        assert kinds(db, "m1") == ["message.held"]
        assert_verified(db)


def test_available_credits_leave_out_what_is_held(db: Db, charger: Charger) -> None:
    ledger.set_overdraft(db, "alice", 2_000)
    done(hold(charger, "m1", 3), "held")
    account = reads.get_account(db, "alice")
    assert (account.balance, account.held) == (D(10), D(3))
    assert account.available == D(9)  # balance 10 - held 3 + overdraft 2
    done(charger.settle("m1", parts=2), "settled")
    account = reads.get_account(db, "alice")
    assert (account.balance, account.held, account.available) == (D(8), D(0), D(10))


def test_a_hold_is_refused_for_credits_other_holds_took(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 6), "held")
    before = every_row(db)
    r = failed(hold(charger, "m2", 5), "rejected", "insufficient_credits", 4)
    assert r.refusal is not None
    assert (r.refusal["available"], r.refusal["held"], r.refusal["balance"]) == (
        D(4), D(6), D(10))
    assert r.message == ("insufficient credits: cost 5, available 4 (balance 10, held 6, "
                         "overdraft 0)")
    failed(charge(charger, "c1", 5), "rejected", "insufficient_credits", 4)
    assert every_row(db)["powers"] == before["powers"]
    assert power(db) == (D(10), D(6))
    done(hold(charger, "m3", 4), "held")  # exactly what is left
    assert power(db) == (D(10), D(10))
    assert_verified(db)


def test_a_hold_is_refused_by_a_daily_limit_that_counts_holds(db: Db, charger: Charger) -> None:
    ledger.set_limits(db, "alice", {"day": 5_000})
    done(hold(charger, "m1", 3), "held")
    failed(hold(charger, "m2", 3), "rejected", "daily_limit", 5)
    failed(charge(charger, "c1", 3), "rejected", "daily_limit", 5)
    assert power(db) == (D(10), D(3))
    done(charger.void("m1"), "voided")  # its window room comes back
    done(hold(charger, "m3", 5), "held")
    assert spent(db) == (D(5), D(5), D(5))
    assert_verified(db)


def test_a_hold_with_a_used_id_replays_or_conflicts(db: Db, charger: Charger) -> None:
    ledger.add_user(db, "bob")
    ledger.create_power(db, "bob", initial=10_000)
    first = done(hold(charger, "m1", 3), "held")
    before = every_row(db)
    again = done(hold(charger, "m1", 3), "held", replayed=True)
    assert (again.cost, again.held, again.balance, again.expires_at) == (
        first.cost, first.held, first.balance, first.expires_at)
    later = done(hold(charger, "m1", 3, ttl=60 * S), "held", replayed=True)
    assert later.expires_at == first.expires_at  # the first hold's, as it stands
    failed(hold(charger, "m1", 3, user="bob"), "error", "conflict", 6)
    failed(hold(charger, "m1", 2), "error", "conflict", 6)
    assert every_row(db) == before
    assert_verified(db)


def test_a_hold_replayed_after_a_settle_for_fewer_parts_is_no_conflict(
        db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    done(charger.settle("m1", parts=1), "settled")
    before = every_row(db)
    again = done(hold(charger, "m1", 3), "settled", replayed=True)  # the gateway retried
    assert (again.cost, again.balance) == (D(1), D(9))
    assert every_row(db) == before


def test_an_unmetered_users_hold_settles_and_voids_for_nothing(db: Db, charger: Charger) -> None:
    ledger.add_user(db, "bob")  # no credits power: not metered
    r = done(hold(charger, "u1", 3, user="bob"), "held")
    assert (r.metered, r.cost, r.balance) == (False, D(0), None)
    done(hold(charger, "u1", 3, user="bob"), "held", replayed=True)
    done(hold(charger, "u2", 2, user="bob"), "held")
    assert done(charger.settle("u1"), "settled").cost == D(0)
    done(charger.void("u2"), "voided")
    assert power(db) == (D(10), D(0))  # alice's untouched
    assert_verified(db)


# The ttl a stream line or --ttl accepts is 1s to 366d (holds.parse_ttl).
@pytest.mark.parametrize("ttl", [0, -S, 367 * 86400 * S, 10**30, "48h", 1.5])
def test_a_bad_ttl_is_bad_input_answered_on_its_own(db: Db, charger: Charger,
                                                    ttl: Any) -> None:
    bad, good = charger.charge_batch([
        ChargeRequest("alice", TO, parts=1, id="m1", hold=True, ttl=ttl),
        ChargeRequest("alice", TO, parts=2, id="m2", hold=True, ttl=60 * S),
    ])
    # As a stream line's bad ttl is answered (bad_ttl), or as any bad field (bad_input).
    assert (bad.status, bad.reason in ("bad_ttl", "bad_input"), bad.exit_code) == (
        "error", True, 2), bad
    done(good, "held")
    assert power(db) == (D(10), D(2))
    assert_verified(db)


def test_a_refused_holds_id_has_nothing_to_settle(db: Db, charger: Charger) -> None:
    ledger.set_limits(db, "alice", {"day": 2_000})
    failed(hold(charger, "m1", 3), "rejected", "daily_limit", 5)
    failed(hold(charger, "m1", 3), "rejected", "daily_limit", 5)  # replayed as it was
    failed(charger.settle("m1"), "error", "unknown_message", 3)
    failed(charger.void("m1"), "error", "unknown_message", 3)
    done(charger.dlr("m1", "DELIVRD"), "ignored")  # a report for it changes nothing
    assert power(db) == (D(10), D(0))
    assert_verified(db)


def test_a_hold_of_a_text_holds_its_parts(db: Db, charger: Charger) -> None:
    r = done(charger.hold(ChargeRequest("alice", TO, text="a" * 161, id="m1")), "held")
    assert (r.parts, r.encoding, r.held) == (2, "GSM-7", D(2))
    s = done(charger.settle("m1"), "settled")
    assert (s.parts, s.cost, s.balance) == (2, D(2), D(8))
    assert_verified(db)


def test_two_chargers_on_two_handles_see_each_others_acts(db: Db, db_url: str,
                                                          charger: Charger) -> None:
    other_db = open_db(db_url, actor="other")
    other_db.hold_rules = holds.Rules()
    try:
        with Charger(other_db) as other:
            done(hold(charger, "m1", 3), "held")
            done(hold(other, "m2", 4), "held")
            done(other.void("m1"), "voided")
            done(charger.settle("m1"), "voided", replayed=True)  # not a stale held row
            done(charger.settle("m2", parts=2), "settled")
            done(other.void("m2"), "refunded")
            done(hold(charger, "m3", 10), "held")  # all of it is free again
            done(other.void("m3"), "voided")
            done(hold(charger, "m4", 10), "held")  # and again, as the other one left it
            done(other.settle("m4"), "settled")
    finally:
        other_db.dispose()
    assert power(db) == (D(0), D(0))
    assert_verified(db)


def test_a_bulk_batch_of_holds_and_acts_commits_in_the_background(db: Db,
                                                                  charger: Charger) -> None:
    ledger.add_credits(db, "alice", 990_000)  # 1000 credits
    reqs: list[ChargeRequest | MessageOp] = [
        ChargeRequest("alice", TO, parts=1, id=f"m{i}", hold=True) for i in range(120)]
    reqs += [MessageOp("settle" if i % 2 else "void", f"m{i}") for i in range(120)]
    assert len(reqs) >= BULK_BATCH
    pending = charger.begin(reqs)
    results = pending.wait()
    assert [r.status for r in results[120:]] == ["voided", "settled"] * 60
    assert power(db) == (D(940), D(0))
    assert kinds(db, "m1") == ["message.held", "message.settled"]
    assert_verified(db)


def test_a_hold_twice_in_one_batch_is_held_once(db: Db, charger: Charger) -> None:
    first, again = charger.charge_batch([
        ChargeRequest("alice", TO, parts=2, id="m1", hold=True),
        ChargeRequest("alice", TO, parts=2, id="m1", hold=True)])
    done(first, "held")
    done(again, "held", replayed=True)
    assert power(db) == (D(10), D(2))
    assert kinds(db, "m1") == ["message.held"]
    assert_verified(db)


def test_a_hold_settles_at_the_price_it_was_held_at(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    pricing.set_price(db, "default", "2")
    r = done(charger.settle("m1", parts=4), "settled")
    assert (r.cost, r.price, r.balance) == (D(4), D(1), D(6))
    assert_verified(db)


def test_a_threshold_refill_fires_when_a_settle_takes_the_balance_below_it(
        db: Db, charger: Charger) -> None:
    refills.schedule_plan(db, "alice", below=5_000, add=10_000)
    done(hold(charger, "m1", 6), "held")
    assert power(db) == (D(10), D(6))  # a hold moves no balance: nothing fired
    r = done(charger.settle("m1"), "settled")
    assert r.balance == D(14)  # 10 - 6, then 10 added
    assert power(db) == (D(14), D(0))
    assert_verified(db)


def test_a_hold_voided_after_a_zone_change_is_recounted_in_its_windows(
        db: Db, charger: Charger) -> None:
    with freeze_time(T0):
        done(hold(charger, "m1", 3), "held")
        done(charge(charger, "c1", 1), "charged")
        # 23:00 on the 3rd in Auckland: the windows are recounted in the new zone, and the
        # hold counts in them as a charge does.
        ledger.set_tz(db, "alice", "Pacific/Auckland")
        assert spent(db) == (D(4), D(4), D(4))
        done(charger.void("m1"), "voided")
        assert spent(db) == (D(1), D(1), D(1))
        assert power(db) == (D(9), D(0))
        assert_verified(db)


def test_an_unmetered_hold_expires_like_any_other(db: Db, charger: Charger) -> None:
    db.hold_rules = holds.Rules(ttl_us=60 * S, expiry="void")
    ledger.add_user(db, "bob")  # no credits power: not metered
    with freeze_time(T0):
        done(hold(charger, "u1", 3, user="bob"), "held")
    with freeze_time(T0 + timedelta(minutes=2)):
        assert [(r.id, r.status) for r in charger.expire()] == [("u1", "voided")]
        assert reads.open_holds(db) == []
        assert_verified(db)


def test_a_settled_hold_is_recounted_in_its_windows_after_a_zone_change(
        db: Db, charger: Charger) -> None:
    with freeze_time(T0):
        done(hold(charger, "m1", 3), "held")
        done(charger.settle("m1", parts=2), "settled")
        done(charge(charger, "c1", 1), "charged")
        ledger.set_tz(db, "alice", "Pacific/Auckland")  # 23:00 on the 3rd there
        assert spent(db) == (D(3), D(3), D(3))
        assert power(db) == (D(7), D(0))
        assert_verified(db)


# -- settle --------------------------------------------------------------------------------


def test_settle_at_the_held_parts_takes_the_held_cost(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    r = done(charger.settle("m1"), "settled")
    assert (r.cost, r.held, r.parts, r.balance) == (D(3), D(3), 3, D(7))
    assert power(db) == (D(7), D(0))
    assert spent(db) == (D(3), D(3), D(3))
    assert reads.get_account(db, "alice").available == D(7)
    assert kinds(db, "m1") == ["message.held", "message.settled"]
    assert status_of(db, "m1") == "settled"
    assert_verified(db)


def test_settle_for_fewer_parts_gives_the_difference_back(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    r = done(charger.settle("m1", parts=1), "settled")
    assert (r.cost, r.held, r.parts, r.balance) == (D(1), D(3), 1, D(9))
    assert power(db) == (D(9), D(0))
    assert spent(db) == (D(1), D(1), D(1))
    assert_verified(db)


def test_settle_for_more_parts_that_fit_takes_more(db: Db, charger: Charger) -> None:
    ledger.set_limits(db, "alice", {"day": 5_000})
    done(hold(charger, "m1", 2), "held")
    r = done(charger.settle("m1", parts=5), "settled")
    assert (r.cost, r.held, r.parts, r.balance, r.reason) == (D(5), D(2), 5, D(5), None)
    assert power(db) == (D(5), D(0))
    assert spent(db) == (D(5), D(5), D(5))
    assert_verified(db)


def test_settle_for_more_parts_than_credits_settles_at_the_held_amount(
        db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    done(hold(charger, "m2", 6), "held")  # 1 credit left to take
    r = done(charger.settle("m1", parts=5), "settled")
    assert (r.reason, r.cost, r.parts, r.balance) == ("settled_at_held", D(3), 3, D(7))
    assert power(db) == (D(7), D(6))
    assert spent(db) == (D(9), D(9), D(9))
    assert_verified(db)


def test_settle_for_more_parts_than_a_limit_allows_settles_at_the_held_amount(
        db: Db, charger: Charger) -> None:
    ledger.set_limits(db, "alice", {"week": 4_000})
    done(hold(charger, "m1", 3), "held")
    r = done(charger.settle("m1", parts=5), "settled")
    assert (r.reason, r.cost, r.balance) == ("settled_at_held", D(3), D(7))
    assert spent(db) == (D(3), D(3), D(3))
    assert_verified(db)


def test_settle_twice_replays_the_first_settle(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    first = done(charger.settle("m1", parts=2), "settled")
    before = every_row(db)
    again = done(charger.settle("m1", parts=2), "settled", replayed=True)
    assert (again.cost, again.parts, again.balance) == (first.cost, first.parts, first.balance)
    done(charger.settle("m1", parts=3), "settled", replayed=True)  # not settled anew
    assert every_row(db) == before
    assert power(db) == (D(8), D(0))
    assert_verified(db)


def test_settle_of_a_charge_an_unknown_id_or_anothers_message_is_refused(
        db: Db, charger: Charger) -> None:
    ledger.add_user(db, "bob")
    ledger.create_power(db, "bob", initial=10_000)
    done(charge(charger, "c1", 2), "charged")
    done(hold(charger, "m1", 3), "held")
    before = every_row(db)
    failed(charger.settle("c1"), "error", "not_held", 6)
    failed(charger.settle("nope"), "error", "unknown_message", 3)
    failed(charger.settle("m1", user="bob"), "error", "conflict", 6)
    failed(charger.void("m1", user="bob"), "error", "conflict", 6)
    failed(charger.void("c1"), "error", "not_held", 6)
    failed(charger.void("nope"), "error", "unknown_message", 3)
    assert every_row(db) == before
    done(charger.settle("m1", user="alice"), "settled")
    assert power(db) == (D(5), D(0))
    assert_verified(db)


def test_settle_for_a_bad_number_of_parts_is_bad_input(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    for parts in (0, 256, -1, "2", 2.0):
        failed(charger.charge_batch([MessageOp("settle", "m1", parts=parts)])[0],  # type: ignore[arg-type]
               "error", "bad_input", 2)
    assert power(db) == (D(10), D(3))
    done(charger.settle("m1", parts=255), "settled")  # 255 fits nowhere: at the held amount
    assert power(db) == (D(7), D(0))
    assert_verified(db)


def test_settle_for_more_parts_may_use_the_overdraft(db: Db, charger: Charger) -> None:
    ledger.set_overdraft(db, "alice", 2_000)
    done(hold(charger, "m1", 10), "held")
    r = done(charger.settle("m1", parts=12), "settled")
    assert (r.cost, r.balance, r.reason) == (D(12), D(-2), None)
    assert power(db) == (D(-2), D(0))
    assert_verified(db)


def test_a_hold_replayed_after_its_settle_answers_settled(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    done(charger.settle("m1"), "settled")
    r = done(hold(charger, "m1", 3), "settled", replayed=True)
    assert (r.cost, r.balance) == (D(3), D(7))
    assert power(db) == (D(7), D(0))


def test_holds_for_refused_users_are_refused(db: Db, charger: Charger) -> None:
    ledger.add_user(db, "carol")
    ledger.create_power(db, "carol", initial=10_000)
    ledger.set_disabled(db, "carol", True)
    failed(hold(charger, "m1", 1, user="carol"), "rejected", "user_disabled", 6)
    failed(hold(charger, "m2", 1, user="nobody"), "rejected", "unknown_user", 3)
    assert power(db, "carol") == (D(10), D(0))
    assert_verified(db)


def test_a_disabled_users_hold_still_settles_and_voids(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    done(hold(charger, "m2", 2), "held")
    ledger.set_disabled(db, "alice", True)  # the messages were sent before
    done(charger.settle("m1"), "settled")
    done(charger.dlr("m2", "UNDELIV"), "voided")
    assert power(db) == (D(7), D(0))
    assert_verified(db)


def test_a_lowered_limit_does_not_stop_a_settle_at_the_held_parts(db: Db,
                                                                  charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    ledger.set_limits(db, "alice", {"day": 1_000})
    done(charger.settle("m1"), "settled")
    assert power(db) == (D(7), D(0))
    assert_verified(db)


# -- refund --------------------------------------------------------------------------------


def test_refund_of_a_hold_is_refused_until_it_is_settled(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    done(hold(charger, "m2", 2), "held")
    done(charger.void("m2"), "voided")
    failed(charger.refund("m1"), "error", "still_held", 6)
    failed(charger.refund("m2"), "error", "not_held", 6)
    assert power(db) == (D(10), D(3))
    done(charger.settle("m1", parts=2), "settled")
    r = done(charger.refund("m1"), "refunded")
    assert (r.cost, r.balance) == (D(2), D(10))
    failed(charger.refund("m1"), "error", "already_refunded", 6)
    assert spent(db) == (D(0), D(0), D(0))
    assert_verified(db)


# -- void ----------------------------------------------------------------------------------


def test_void_releases_the_hold_and_its_window_room(db: Db, charger: Charger) -> None:
    ledger.set_limits(db, "alice", {"day": 3_000})
    done(hold(charger, "m1", 3), "held")
    r = done(charger.void("m1", note="undelivered"), "voided")
    assert (r.cost, r.held, r.balance) == (D(0), D(3), D(10))
    assert power(db) == (D(10), D(0))
    assert spent(db) == (D(0), D(0), D(0))
    assert kinds(db, "m1") == ["message.held", "message.voided"]
    done(charge(charger, "c1", 3), "charged")  # the day's room is back
    assert_verified(db)


def test_void_twice_replays_the_first_void(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    done(charger.void("m1"), "voided")
    before = every_row(db)
    done(charger.void("m1"), "voided", replayed=True)
    assert every_row(db) == before
    assert_verified(db)


def test_void_of_a_settled_message_refunds_it_by_default(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    done(charger.settle("m1"), "settled")
    r = done(charger.void("m1"), "refunded")
    assert (r.cost, r.balance) == (D(3), D(10))
    assert power(db) == (D(10), D(0))
    assert spent(db) == (D(0), D(0), D(0))
    assert kinds(db, "m1") == ["message.held", "message.settled", "message.refunded"]
    assert status_of(db, "m1") == "refunded"
    assert_verified(db)


def test_void_of_a_settled_message_is_refused_when_so_set(db: Db, charger: Charger) -> None:
    db.hold_rules = holds.Rules(void_settled="refuse")
    done(hold(charger, "m1", 3), "held")
    done(charger.settle("m1"), "settled")
    before = every_row(db)
    failed(charger.void("m1"), "error", "already_settled", 6)
    assert every_row(db) == before
    assert power(db) == (D(7), D(0))
    assert_verified(db)


def test_settle_after_void_replays_the_void(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    done(charger.void("m1"), "voided")
    before = every_row(db)
    r = done(charger.settle("m1"), "voided", replayed=True)
    assert r.balance == D(10)
    assert every_row(db) == before
    assert_verified(db)


# -- a hold across a window boundary --------------------------------------------------------

# 23:59 and then 00:01 in Budapest (UTC+1): a day that ends (Thursday the 3rd), a day and
# an ISO week (Sunday the 6th), a day and a month (Thursday the 31st).
BOUNDARIES = {
    "day": (datetime(2026, 12, 3, 22, 59, tzinfo=UTC), datetime(2026, 12, 3, 23, 1, tzinfo=UTC)),
    "week": (datetime(2026, 12, 6, 22, 59, tzinfo=UTC), datetime(2026, 12, 6, 23, 1, tzinfo=UTC)),
    "month": (datetime(2026, 12, 31, 22, 59, tzinfo=UTC),
              datetime(2026, 12, 31, 23, 1, tzinfo=UTC)),
}


def ended(boundary: str, *, current: Decimal, new: Decimal) -> tuple[Decimal, ...]:
    """The (day, week, month) counters after a boundary: ``new`` in the windows that ended
    at it (the day always), ``current`` in those that go on."""
    return tuple(new if w == "day" or w == boundary else current
                 for w in ("day", "week", "month"))


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_a_void_after_midnight_gives_nothing_back_to_the_new_window(
        db: Db, charger: Charger, boundary: str) -> None:
    late, early = BOUNDARIES[boundary]
    with freeze_time(late):
        done(hold(charger, "m1", 3), "held")
        assert spent(db) == (D(3), D(3), D(3))
    with freeze_time(early):
        done(charge(charger, "c1", 2), "charged")
        assert spent(db) == ended(boundary, current=D(5), new=D(2))
        done(charger.void("m1"), "voided")
        # The window that ended kept the hold; one that goes on gets it back: 2 either way,
        # and not 2 - 3 in a window that never counted the hold.
        assert spent(db) == (D(2), D(2), D(2))
        assert power(db) == (D(8), D(0))
        assert_verified(db)


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_a_settle_for_fewer_parts_after_midnight_gives_nothing_back_to_the_new_window(
        db: Db, charger: Charger, boundary: str) -> None:
    late, early = BOUNDARIES[boundary]
    with freeze_time(late):
        done(hold(charger, "m1", 3), "held")
    with freeze_time(early):
        done(charge(charger, "c1", 2), "charged")
        done(charger.settle("m1", parts=1), "settled")
        assert spent(db) == ended(boundary, current=D(3), new=D(2))
        assert power(db) == (D(7), D(0))
        assert_verified(db)


def test_a_settle_for_more_parts_after_midnight_leaves_the_new_day_whole(
        db: Db, charger: Charger) -> None:
    late, early = BOUNDARIES["day"]
    with freeze_time(late):
        ledger.set_limits(db, "alice", {"day": 3_000})
        done(hold(charger, "m1", 3), "held")  # the old day is full
    with freeze_time(early):
        # Whether the extra part is taken is the old day's business; the new day's is not.
        r = done(charger.settle("m1", parts=4), "settled")
        assert r.cost is not None and r.balance == D(10) - r.cost
        assert spent(db)[0] == D(0)
        done(charge(charger, "c1", 3), "charged")
        assert power(db) == (D(7) - r.cost, D(0))
        assert_verified(db)


# -- admin changes beside open holds ----------------------------------------------------


def test_an_overdraft_the_holds_need_cannot_be_taken_away(db: Db, charger: Charger) -> None:
    ledger.set_overdraft(db, "alice", 5_000)
    done(hold(charger, "m1", 13), "held")  # 3 of the overdraft
    before = every_row(db)
    with pytest.raises(Conflict):
        ledger.set_overdraft(db, "alice", 2_000)
    assert every_row(db) == before
    ledger.set_overdraft(db, "alice", 3_000)
    assert_verified(db)


def test_credits_the_holds_need_cannot_be_subtracted(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 6), "held")
    before = every_row(db)
    with pytest.raises(InsufficientCredits):
        ledger.add_credits(db, "alice", -5_000)
    with pytest.raises(InsufficientCredits):
        ledger.set_credits(db, "alice", 5_000)
    assert every_row(db) == before
    ledger.add_credits(db, "alice", -4_000)
    assert power(db) == (D(6), D(6))
    assert_verified(db)


def test_a_user_or_power_with_open_holds_is_not_deleted(db: Db, charger: Charger) -> None:
    ledger.set_overdraft(db, "alice", 3_000)
    ledger.set_credits(db, "alice", 0)  # the balance alone would allow a delete
    done(hold(charger, "m1", 3), "held")  # on the overdraft
    with pytest.raises(Conflict) as power_refused:
        ledger.delete_power(db, "alice")
    with pytest.raises(Conflict) as user_refused:
        ledger.delete_user(db, "alice")
    assert power_refused.value.code == user_refused.value.code == "credits_held"
    assert power(db) == (D(0), D(3))
    done(charger.void("m1"), "voided")
    ledger.delete_power(db, "alice")
    assert_verified(db)


def test_open_holds_lists_only_what_is_still_held(db: Db, charger: Charger) -> None:
    ledger.add_user(db, "bob")
    ledger.create_power(db, "bob", initial=10_000)
    for i, (msg_id, parts, user) in enumerate([("m1", 1, "alice"), ("m2", 2, "alice"),
                                                ("b1", 3, "bob")]):
        with freeze_time(T0 + timedelta(seconds=i)):
            done(hold(charger, msg_id, parts, user=user), "held")
    done(charge(charger, "c1", 1), "charged")
    done(charger.void("m1"), "voided")
    assert [(h.id, h.user, h.held, h.parts) for h in reads.open_holds(db)] == [
        ("m2", "alice", D(2), 2), ("b1", "bob", D(3), 3)]
    assert [h.id for h in reads.open_holds(db, "bob")] == ["b1"]
    assert reads.open_holds(db, "alice")[0].expires_at == "2026-12-05T10:00:01Z"


def test_a_forced_power_delete_leaves_no_hold_open_for_ever(db: Db, charger: Charger) -> None:
    db.hold_rules = holds.Rules(ttl_us=60 * S)
    with freeze_time(T0):
        done(hold(charger, "m1", 3), "held")
        ledger.delete_power(db, "alice", force=True)
    with freeze_time(T0 + timedelta(minutes=5)):  # whether the delete or expiry ends it
        charger.expire()
        assert reads.open_holds(db) == []
        assert_verified(db)


def test_a_hold_that_cannot_end_does_not_stop_expiry_of_the_others(
        db: Db, charger: Charger) -> None:
    db.hold_rules = holds.Rules(ttl_us=60 * S)
    with freeze_time(SETUP):
        ledger.add_user(db, "bob")
        ledger.create_power(db, "bob", initial=10_000)
    with freeze_time(T0):
        done(hold(charger, "b1", 1, user="bob"), "held")  # due first
        done(hold(charger, "m1", 1, ttl=90 * S), "held")
        done(hold(charger, "m2", 1, ttl=90 * S), "held")
        ledger.delete_power(db, "bob", force=True)
    with freeze_time(T0 + timedelta(minutes=5)):
        charger.expire(batch=1)
        assert (status_of(db, "m1"), status_of(db, "m2")) == ("settled", "settled")
        assert power(db) == (D(8), D(0))


def test_expire_before_an_instant_ends_holds_not_yet_due(db: Db, charger: Charger) -> None:
    with freeze_time(T0):
        done(hold(charger, "m1", 1), "held")
    with freeze_time(T0 + timedelta(minutes=10)):
        done(hold(charger, "m2", 2), "held")
        before = clock.to_us(T0 + timedelta(minutes=5))
        assert [(r.id, r.reason) for r in charger.expire(before=before)] == [("m1", "expired")]
        assert charger.expire() == []  # m2 is not due for 48 hours
        assert power(db) == (D(9), D(2))
        assert_verified(db)


def test_usage_counts_holds_by_their_outcome(db: Db, charger: Charger) -> None:
    db.hold_rules = holds.Rules(ttl_us=60 * S)
    done(hold(charger, "m1", 3), "held")
    done(charger.settle("m1", parts=2), "settled")
    done(hold(charger, "m2", 2), "held")
    done(charger.void("m2"), "voided")
    done(hold(charger, "m3", 1, ttl=3600 * S), "held")
    done(hold(charger, "m4", 1), "held")
    done(hold(charger, "m5", 1), "held")
    done(charge(charger, "c1", 1), "charged")
    done(hold(charger, "m6", 1), "held")
    done(charger.settle("m6"), "settled")
    done(charger.void("m6"), "refunded")
    with freeze_time(T0 + timedelta(minutes=2)):
        done(charger.charge_batch([MessageOp("expire", "m4")])[0], "settled")
        db.hold_rules = holds.Rules(ttl_us=60 * S, expiry="void")
        done(charger.charge_batch([MessageOp("expire", "m5")])[0], "voided")
    [day] = usage(db, "alice")
    assert (day.messages, day.spent, day.refunded) == (7, D(5), 1)  # m1 2, m3 1, m4 1, c1 1
    assert (day.held, day.settled, day.voided, day.expired) == (1, 2, 2, 2)
    assert power(db) == (D(6), D(1))
    assert_verified(db)


# -- verify replays holds ------------------------------------------------------------------


def test_verify_names_a_held_amount_its_journal_does_not_have(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    assert_verified(db)
    with db.write() as conn:
        conn.execute(update(powers).values(held=2_000))
    assert "held" in {p.check for p in verify(db).problems}


def test_verify_names_a_hold_reopened_behind_its_journal(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    done(charger.void("m1"), "voided")
    with db.write() as conn:
        conn.execute(update(messages).where(messages.c.id == "m1").values(status="held"))
    problems = verify(db).problems
    assert [(p.check, "m1" in p.detail) for p in problems] == [("message", True)], problems


# -- delivery reports ----------------------------------------------------------------------


@pytest.mark.parametrize(("source", "status", "outcome"), [
    ("kannel", "1", "settled"), ("kannel", "2", "voided"), ("kannel", "16", "voided"),
    ("jasmin", "DELIVRD", "settled"), ("jasmin", "UNDELIV", "voided"),
    ("jasmin", "ESME_RINVDSTADR", "voided"), ("smpp", "EXPIRED", "voided"),
    ("smpp", "delivrd", "settled"), ("jasmin", "ACCEPTD", "settled"),
    ("jasmin", "REJECTD", "voided"), ("smpp", "DELETED", "voided"),
    ("kannel", "3", "settled"), ("kannel", "18", "voided"), ("kannel", " 1 ", "settled"),
])
def test_a_final_report_settles_or_voids(db: Db, charger: Charger, source: str, status: str,
                                         outcome: str) -> None:
    done(hold(charger, "m1", 3), "held")
    done(charger.dlr("m1", status, source=source), outcome)
    assert power(db) == ((D(7), D(0)) if outcome == "settled" else (D(10), D(0)))
    assert status_of(db, "m1") == outcome
    assert_verified(db)


@pytest.mark.parametrize(("source", "status"), [
    ("kannel", "4"), ("kannel", "8"), ("kannel", "12"), ("jasmin", "ESME_ROK"),
    ("jasmin", "UNKNOWN"), ("smpp", "ENROUTE"),
])
def test_a_report_that_is_not_final_leaves_the_hold(db: Db, charger: Charger, source: str,
                                                    status: str) -> None:
    done(hold(charger, "m1", 3), "held")
    before = every_row(db)
    r = done(charger.dlr("m1", status, source=source), "ignored")
    assert r.reason is None
    assert every_row(db) == before
    assert power(db) == (D(10), D(3))
    assert status_of(db, "m1") == "held"
    done(charger.dlr("m1", "DELIVRD"), "settled")  # the final report still counts
    assert_verified(db)


def test_a_repeated_report_is_a_replay(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    done(charger.dlr("m1", "1", source="kannel"), "settled")
    before = every_row(db)
    r = done(charger.dlr("m1", "1", source="kannel"), "settled", replayed=True)
    assert (r.cost, r.balance) == (D(3), D(7))
    assert every_row(db) == before
    assert_verified(db)


def test_a_failure_report_after_a_settle_refunds_nothing(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    done(charger.settle("m1"), "settled")
    before = every_row(db)
    done(charger.dlr("m1", "UNDELIV", source="jasmin"), "settled", replayed=True)
    done(charger.dlr("m1", "2", source="kannel"), "settled", replayed=True)
    assert every_row(db) == before
    assert power(db) == (D(7), D(0))
    assert_verified(db)


def test_a_delivered_report_after_a_void_charges_nothing(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    done(charger.void("m1"), "voided")
    done(charger.dlr("m1", "DELIVRD"), "voided", replayed=True)
    assert power(db) == (D(10), D(0))
    assert_verified(db)


@pytest.mark.parametrize(("source", "status"), [
    ("jasmin", "BOGUS"), ("kannel", "99"), ("smpp", "ESME_RINVDSTADR"),
])
def test_an_unknown_status_is_an_error(db: Db, charger: Charger, source: str,
                                       status: str) -> None:
    done(hold(charger, "m1", 3), "held")
    before = every_row(db)
    r = failed(charger.dlr("m1", status, source=source), "error", "unknown_status", 2)
    assert r.message is not None and status in r.message
    assert every_row(db) == before
    assert_verified(db)


def test_an_unknown_report_source_is_an_error(db: Db, charger: Charger) -> None:
    done(hold(charger, "m1", 3), "held")
    r = charger.dlr("m1", "DELIVRD", source="carrier-pigeon")
    assert r.status == "error" and r.exit_code != 0
    assert power(db) == (D(10), D(3))


def test_a_report_for_an_unknown_id_is_an_error(charger: Charger) -> None:
    failed(charger.dlr("nope", "DELIVRD"), "error", "unknown_message", 3)


def test_a_configured_mapping_overrides_the_default(db: Db, charger: Charger) -> None:
    db.hold_rules = holds.Rules(dlr={("jasmin", "EXPIRED"): "settle",
                                     ("kannel", "1"): "ignore"})
    done(hold(charger, "m1", 3), "held")
    done(hold(charger, "m2", 2), "held")
    done(charger.dlr("m2", "1", source="kannel"), "ignored")
    done(charger.dlr("m1", "EXPIRED", source="jasmin"), "settled")
    done(charger.dlr("m2", "EXPIRED", source="smpp"), "voided")  # smpp's stays as it was
    assert power(db) == (D(7), D(0))
    assert_verified(db)


# -- expiry --------------------------------------------------------------------------------


def test_expiry_settles_at_the_held_amount(db: Db, charger: Charger) -> None:
    db.hold_rules = holds.Rules(ttl_us=60 * S, expiry="settle")
    with freeze_time(T0):
        r = done(hold(charger, "m1", 3), "held")
        assert r.expires_at == "2026-12-03T10:01:00Z"
    with freeze_time(T0 + timedelta(seconds=59)):
        assert charger.expire() == []
        assert power(db) == (D(10), D(3))
    with freeze_time(T0 + timedelta(seconds=61)):
        [ended] = charger.expire()
        assert (ended.status, ended.reason, ended.id, ended.cost) == (
            "settled", "expired", "m1", D(3))
        assert charger.expire() == []  # ended once
        assert power(db) == (D(7), D(0))
        assert kinds(db, "m1") == ["message.held", "message.expired"]
        assert status_of(db, "m1") == "settled"
    with freeze_time(T0 + timedelta(seconds=62)):  # the report came a second too late
        before = every_row(db)
        done(charger.dlr("m1", "UNDELIV", source="jasmin"), "settled", replayed=True)
        assert every_row(db) == before
        assert_verified(db)


def test_expiry_voids_when_so_set(db: Db, charger: Charger) -> None:
    db.hold_rules = holds.Rules(ttl_us=60 * S, expiry="void")
    with freeze_time(T0):
        done(hold(charger, "m1", 3), "held")
    with freeze_time(T0 + timedelta(seconds=61)):
        [ended] = charger.expire()
        assert (ended.status, ended.reason) == ("voided", "expired")
        assert power(db) == (D(10), D(0))
        assert spent(db) == (D(0), D(0), D(0))
        assert status_of(db, "m1") == "voided"
    with freeze_time(T0 + timedelta(seconds=62)):
        done(charger.dlr("m1", "DELIVRD"), "voided", replayed=True)
        assert power(db) == (D(10), D(0))
        assert_verified(db)


def test_a_holds_own_ttl_overrides_the_default(db: Db, charger: Charger) -> None:
    db.hold_rules = holds.Rules(ttl_us=3600 * S)
    with freeze_time(T0):
        short = done(hold(charger, "m1", 1, ttl=30 * S), "held")
        long = done(hold(charger, "m2", 2), "held")
        assert (short.expires_at, long.expires_at) == (
            "2026-12-03T10:00:30Z", "2026-12-03T11:00:00Z")
    with freeze_time(T0 + timedelta(seconds=31)):
        assert [r.id for r in charger.expire()] == ["m1"]
        assert (status_of(db, "m1"), status_of(db, "m2")) == ("settled", "held")
        assert power(db) == (D(9), D(2))
    with freeze_time(T0 + timedelta(hours=1, seconds=1)):
        assert [r.id for r in charger.expire()] == ["m2"]
        assert power(db) == (D(7), D(0))
        assert_verified(db)


def test_expiry_leaves_settled_and_voided_messages_alone(db: Db, charger: Charger) -> None:
    db.hold_rules = holds.Rules(ttl_us=60 * S)
    with freeze_time(T0):
        done(hold(charger, "m1", 1), "held")
        done(hold(charger, "m2", 2), "held")
        done(hold(charger, "m3", 3), "held")
        done(charger.settle("m1"), "settled")
        done(charger.void("m2"), "voided")
    with freeze_time(T0 + timedelta(minutes=5)):
        assert [r.id for r in charger.expire()] == ["m3"]
        assert power(db) == (D(6), D(0))
        assert_verified(db)


def test_expire_ends_every_due_hold_a_batch_at_a_time(db: Db, charger: Charger) -> None:
    db.hold_rules = holds.Rules(ttl_us=60 * S, expiry="void")
    with freeze_time(T0):
        for i in range(5):
            done(hold(charger, f"m{i}", 1), "held")
        done(hold(charger, "late", 1, ttl=3600 * S), "held")
    with freeze_time(T0 + timedelta(minutes=2)):
        ended = charger.expire(batch=2)
        assert sorted(r.id or "" for r in ended) == [f"m{i}" for i in range(5)]
        assert {(r.status, r.reason) for r in ended} == {("voided", "expired")}
        assert power(db) == (D(10), D(1))
        assert status_of(db, "late") == "held"
        assert_verified(db)


# -- batches -------------------------------------------------------------------------------


def test_a_batch_applies_acts_on_its_own_holds_in_order(db: Db, charger: Charger) -> None:
    results = charger.charge_batch([
        ChargeRequest("alice", TO, parts=1, id="m1", hold=True),
        MessageOp("settle", "m1"),
        MessageOp("void", "m1"),
        ChargeRequest("alice", TO, parts=2, id="c1"),
        ChargeRequest("alice", TO, parts=3, id="m2", hold=True),
        MessageOp("void", "m2"),
        MessageOp("settle", "m2"),
        ChargeRequest("alice", TO, parts=4, id="m3", hold=True),
        MessageOp("settle", "m3", parts=2),
        MessageOp("dlr", "m3", status="UNDELIV", source="jasmin"),
    ])
    assert [(r.id, r.status, r.replayed) for r in results] == [
        ("m1", "held", False), ("m1", "settled", False), ("m1", "refunded", False),
        ("c1", "charged", False),
        ("m2", "held", False), ("m2", "voided", False), ("m2", "voided", True),
        ("m3", "held", False), ("m3", "settled", False), ("m3", "settled", True),
    ]
    assert [r.balance for r in results[:4]] == [D(10), D(9), D(10), D(8)]
    assert power(db) == (D(6), D(0))
    assert spent(db) == (D(4), D(4), D(4))
    assert (status_of(db, "m1"), status_of(db, "m2"), status_of(db, "m3")) == (
        "refunded", "voided", "settled")
    assert kinds(db, "m2") == ["message.held", "message.voided"]
    assert_verified(db)


def test_a_batch_of_holds_settles_and_voids_without_refunds(db: Db, charger: Charger) -> None:
    results = charger.charge_batch([
        ChargeRequest("alice", TO, parts=2, id="m1", hold=True),
        ChargeRequest("alice", TO, parts=3, id="m2", hold=True),
        MessageOp("void", "m1"),
        ChargeRequest("alice", TO, parts=6, id="m3", hold=True),  # fits once m1 is void
        MessageOp("settle", "m2", parts=1),
        MessageOp("settle", "m2"),
        ChargeRequest("alice", TO, parts=4, id="m4", hold=True),  # 3 left: refused
    ])
    assert [(r.id, r.status, r.replayed) for r in results] == [
        ("m1", "held", False), ("m2", "held", False), ("m1", "voided", False),
        ("m3", "held", False), ("m2", "settled", False), ("m2", "settled", True),
        ("m4", "rejected", False),
    ]
    assert results[-1].reason == "insufficient_credits"
    assert power(db) == (D(9), D(6))
    assert spent(db) == (D(7), D(7), D(7))
    assert_verified(db)


def test_a_hold_and_its_settle_in_two_batches_see_each_other(db: Db, charger: Charger) -> None:
    [h] = charger.charge_batch([ChargeRequest("alice", TO, parts=2, id="m1", hold=True)])
    done(h, "held")
    settled, again = charger.charge_batch([MessageOp("settle", "m1"), MessageOp("void", "m1",
                                                                               note="late")])
    done(settled, "settled")
    assert (again.status, again.balance) == ("refunded", D(10))
    assert_verified(db)
