"""Charging messages: rejections, overdraft, limits and their windows, idempotency, refunds,
batches, usage and concurrent chargers, on SQLite and Postgres."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from smscredits import ledger, reads
from smscredits.charging import Charger, ChargeRequest
from smscredits.storage.engine import open_db
from tests.helpers import balance, credit_log, data, doc, jl, lines, ok

TO = "+36301234567"  # HU mobile
D = Decimal


def charge(cli: Any, user: str, *args: str, to: str = TO) -> Any:
    """``charge USER --to N ARGS --json``: the run, with its JSON result as ``.result``."""
    run = cli("charge", user, "--to", to, *args, "--json")
    run.result = doc(run)
    return run


def windows(cli: Any, user: str = "alice") -> dict[str, dict[str, Any]]:
    return {w["window"]: w for w in data(cli("limits", "show", user, "--json"))["windows"]}


def spent(cli: Any, user: str = "alice") -> tuple[Decimal, Decimal, Decimal]:
    w = windows(cli, user)
    return w["day"]["spent"], w["week"]["spent"], w["month"]["spent"]


def add_user(cli: Any, name: str = "alice", initial: str | None = "10", *opts: str,
             tz: str = "Europe/Budapest") -> None:
    ok(cli("user", "add", name, "--tz", tz))
    if initial is not None:
        ok(cli("power", "create", name, "credits", "--initial", initial, *opts))


@pytest.fixture
def alice(cli: Any) -> Any:
    """alice (Budapest) with 10 credits, and a default price of 1 per part."""
    ok(cli("price", "set", "default", "1"))
    add_user(cli)
    return cli


def assert_refused(cli: Any, run: Any, reason: str, exit_code: int, user: str = "alice",
                   before: tuple[Any, ...] | None = None) -> None:
    assert run.exit_code == exit_code, run.stderr
    assert run.result["status"] == "rejected"
    assert run.result["reason"] == reason
    if before is not None:
        assert state(cli, user) == before


def state(cli: Any, user: str = "alice") -> tuple[Any, ...]:
    """What a refused charge must leave alone: balance, window counters, the credit log."""
    return balance(cli, user), spent(cli, user), credit_log(cli, user)


# -- rejections ---------------------------------------------------------------------------


def test_insufficient_credits_exits_4_and_changes_nothing(alice: Any) -> None:
    ok(alice("limits", "set", "alice", "--daily", "100"))
    ok(charge(alice, "alice", "--parts", "4"))
    before = state(alice)
    run = charge(alice, "alice", "--parts", "7")
    assert_refused(alice, run, "insufficient_credits", 4, before=before)
    assert before[0] == D(6) and before[1] == (D(4), D(4), D(4))


@pytest.mark.parametrize("window", ["daily", "weekly", "monthly"])
def test_each_limit_exits_5_and_changes_nothing(alice: Any, window: str) -> None:
    ok(alice("limits", "set", "alice", f"--{window}", "3"))
    ok(charge(alice, "alice", "--parts", "2"))
    before = state(alice)
    run = charge(alice, "alice", "--parts", "2")
    assert_refused(alice, run, f"{window}_limit", 5, before=before)
    assert windows(alice)[{"daily": "day", "weekly": "week", "monthly": "month"}[window]][
        "remaining"] == D(1)


def test_no_price_exits_3_and_is_never_free(cli: Any) -> None:
    add_user(cli)
    ok(cli("price", "set", "DE", "0.5"))
    before = state(cli)
    run = charge(cli, "alice", "--text", "hi")
    assert_refused(cli, run, "no_price", 3, before=before)


@pytest.mark.parametrize("number", ["+1234", "+3610", "not-a-number"])
def test_invalid_number_exits_2_and_changes_nothing(alice: Any, number: str) -> None:
    before = state(alice)
    run = charge(alice, "alice", "--text", "hi", to=number)
    assert_refused(alice, run, "invalid_number", 2, before=before)


def test_disabled_user_exits_6_and_keeps_the_balance(alice: Any) -> None:
    ok(alice("user", "disable", "alice"))
    before = state(alice)
    run = charge(alice, "alice", "--text", "hi")
    assert_refused(alice, run, "user_disabled", 6, before=before)
    ok(alice("user", "enable", "alice"))
    assert ok(charge(alice, "alice", "--text", "hi")).result["balance"] == D(9)


def test_unknown_user_exits_3(alice: Any) -> None:
    run = charge(alice, "nobody", "--text", "hi")
    assert_refused(alice, run, "unknown_user", 3)
    assert credit_log(alice, "alice")[0]["kind"] == "power.created"


def test_refused_charge_without_json_says_why_on_stderr(alice: Any) -> None:
    run = alice("charge", "alice", "--to", TO, "--parts", "11")
    assert run.exit_code == 4
    assert run.stdout == ""
    assert "insufficient_credits" in run.stderr


@pytest.mark.parametrize("args", [(), ("--text", "hi", "--parts", "1"), ("--parts", "0")])
def test_charge_needs_exactly_one_of_text_and_valid_parts(alice: Any, args: tuple[str, ...]) \
        -> None:
    assert alice("charge", "alice", "--to", TO, *args).exit_code == 2
    assert balance(alice) == D(10)


# -- success ------------------------------------------------------------------------------


def test_charge_costs_price_times_parts_and_logs_one_event(alice: Any) -> None:
    ok(alice("price", "set", "+3630", "0.125"))
    run = ok(charge(alice, "alice", "--text", "a" * 161, "--id", "msg-1"))
    r = run.result
    assert (r["status"], r["id"], r["parts"], r["encoding"], r["rule"], r["country"]) == (
        "charged", "msg-1", 2, "GSM-7", "+3630", "HU")
    assert (r["price"], r["cost"], r["balance"], r["metered"], r["replayed"]) == (
        D("0.125"), D("0.25"), D("9.75"), True, False)
    assert balance(alice) == D("9.75")
    charged = [e for e in credit_log(alice) if e["kind"] == "message.charged"]
    assert len(charged) == 1
    assert (charged[0]["amount"], charged[0]["balance_after"], charged[0]["ref"]) == (
        D("-0.25"), D("9.75"), "msg-1")
    assert spent(alice) == (D("0.25"),) * 3


def test_charge_without_id_gets_a_generated_id_in_the_log(alice: Any) -> None:
    msg_id = ok(charge(alice, "alice", "--text", "hi")).result["id"]
    assert msg_id
    assert credit_log(alice)[0]["ref"] == msg_id


def test_charge_says_what_it_charged_in_words(alice: Any) -> None:
    run = ok(alice("charge", "alice", "--to", TO, "--parts", "2"))
    assert "charged 2" in run.stdout and "balance 8" in run.stdout


# -- overdraft ----------------------------------------------------------------------------


def test_overdraft_lets_the_balance_go_to_minus_n_but_not_beyond(cli: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    add_user(cli, "alice", "1", "--overdraft", "2")
    assert [ok(charge(cli, "alice", "--parts", "1")).result["balance"] for _ in range(3)] == [
        D(0), D(-1), D(-2)]
    before = state(cli)
    assert_refused(cli, charge(cli, "alice", "--parts", "1"), "insufficient_credits", 4,
                   before=before)
    assert balance(cli) == D(-2)


def test_overdraft_refuses_a_charge_that_would_cross_it_partly(cli: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    add_user(cli, "alice", "1", "--overdraft", "2")
    assert_refused(cli, charge(cli, "alice", "--parts", "4"), "insufficient_credits", 4)
    assert ok(charge(cli, "alice", "--parts", "3")).result["balance"] == D(-2)


def test_unlimited_overdraft_is_never_refused_for_balance_but_limits_hold(cli: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    add_user(cli, "alice", "0", "--overdraft", "unlimited")
    assert ok(charge(cli, "alice", "--parts", "200")).result["balance"] == D(-200)
    assert ok(charge(cli, "alice", "--parts", "255")).result["balance"] == D(-455)
    ok(cli("limits", "set", "alice", "--daily", "456"))
    assert ok(charge(cli, "alice", "--parts", "1")).result["balance"] == D(-456)
    assert_refused(cli, charge(cli, "alice", "--parts", "1"), "daily_limit", 5)
    assert balance(cli) == D(-456)


# -- limits -------------------------------------------------------------------------------


def test_limits_hold_whatever_the_balance(cli: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    add_user(cli, "alice", "1000000")
    ok(cli("limits", "set", "alice", "--daily", "5", "--weekly", "8", "--monthly", "9"))
    ok(charge(cli, "alice", "--parts", "5"))
    assert_refused(cli, charge(cli, "alice", "--parts", "1"), "daily_limit", 5)
    assert balance(cli) == D(999995)


def test_limit_of_exactly_the_cost_is_allowed(alice: Any) -> None:
    ok(alice("limits", "set", "alice", "--daily", "2"))
    ok(charge(alice, "alice", "--parts", "2"))
    assert windows(alice)["day"]["remaining"] == D(0)


def test_lowering_a_limit_below_spent_blocks_until_the_window_resets(cli: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    with freeze_time(datetime(2026, 3, 10, 12, 0, tzinfo=UTC)) as clock:
        add_user(cli)
        ok(charge(cli, "alice", "--parts", "3"))
        ok(cli("limits", "set", "alice", "--daily", "2"))
        day = windows(cli)["day"]
        assert (day["limit"], day["spent"], day["remaining"]) == (D(2), D(3), D(0))
        assert_refused(cli, charge(cli, "alice", "--parts", "1"), "daily_limit", 5)
        clock.move_to(datetime(2026, 3, 10, 22, 59, 59, tzinfo=UTC))  # 23:59:59 in Budapest
        assert_refused(cli, charge(cli, "alice", "--parts", "1"), "daily_limit", 5)
        clock.move_to(datetime(2026, 3, 10, 23, 0, tzinfo=UTC))  # local midnight
        assert ok(charge(cli, "alice", "--parts", "2")).result["balance"] == D(5)
        assert_refused(cli, charge(cli, "alice", "--parts", "1"), "daily_limit", 5)


def test_removing_a_limit_lets_charges_through_again(alice: Any) -> None:
    ok(alice("limits", "set", "alice", "--weekly", "1"))
    ok(charge(alice, "alice", "--parts", "1"))
    assert_refused(alice, charge(alice, "alice", "--parts", "1"), "weekly_limit", 5)
    ok(alice("limits", "set", "alice", "--weekly", "none"))
    assert windows(alice)["week"]["limit"] is None
    ok(charge(alice, "alice", "--parts", "1"))


# -- window boundaries in the user's zone -------------------------------------------------


def test_daily_window_resets_at_local_midnight_not_utc(cli: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    # Budapest is UTC+1 in January: local midnight is 23:00 UTC.
    with freeze_time(datetime(2026, 1, 14, 22, 59, tzinfo=UTC)) as clock:  # 23:59 local
        add_user(cli)
        ok(cli("limits", "set", "alice", "--daily", "1"))
        ok(charge(cli, "alice", "--parts", "1"))
        day = windows(cli)["day"]
        assert (day["spent"], day["remaining"], day["resets_at"]) == (
            D(1), D(0), "2026-01-14T23:00:00Z")
        assert_refused(cli, charge(cli, "alice", "--parts", "1"), "daily_limit", 5)
        clock.move_to(datetime(2026, 1, 14, 23, 0, tzinfo=UTC))  # 00:00 local, 15 January
        day = windows(cli)["day"]
        assert (day["spent"], day["remaining"], day["resets_at"]) == (
            D(0), D(1), "2026-01-15T23:00:00Z")
        assert ok(charge(cli, "alice", "--parts", "1")).result["balance"] == D(8)
        clock.move_to(datetime(2026, 1, 15, 0, 30, tzinfo=UTC))  # UTC midnight: same local day
        assert_refused(cli, charge(cli, "alice", "--parts", "1"), "daily_limit", 5)
        assert windows(cli)["week"]["spent"] == D(2)


def test_weekly_window_resets_sunday_to_monday_local(cli: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    # New York is UTC-5 in January; 18 January 2026 is a Sunday.
    with freeze_time(datetime(2026, 1, 18, 15, 0, tzinfo=UTC)) as clock:  # Sun 10:00 local
        add_user(cli, tz="America/New_York")
        ok(cli("limits", "set", "alice", "--weekly", "2"))
        ok(charge(cli, "alice", "--parts", "1"))
        clock.move_to(datetime(2026, 1, 19, 4, 59, tzinfo=UTC))  # Sun 23:59 local, Mon UTC
        ok(charge(cli, "alice", "--parts", "1"))
        week = windows(cli)["week"]
        assert (week["spent"], week["remaining"], week["resets_at"]) == (
            D(2), D(0), "2026-01-19T05:00:00Z")
        assert windows(cli)["day"]["spent"] == D(2)
        assert_refused(cli, charge(cli, "alice", "--parts", "1"), "weekly_limit", 5)
        clock.move_to(datetime(2026, 1, 19, 5, 0, tzinfo=UTC))  # Mon 00:00 local
        week = windows(cli)["week"]
        assert (week["spent"], week["remaining"], week["resets_at"]) == (
            D(0), D(2), "2026-01-26T05:00:00Z")
        ok(charge(cli, "alice", "--parts", "2"))
        assert_refused(cli, charge(cli, "alice", "--parts", "1"), "weekly_limit", 5)


def test_monthly_window_resets_at_local_month_end(cli: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    with freeze_time(datetime(2026, 1, 31, 22, 30, tzinfo=UTC)) as clock:  # 31 Jan 23:30 local
        add_user(cli)
        ok(cli("limits", "set", "alice", "--monthly", "3"))
        ok(charge(cli, "alice", "--parts", "3"))
        month = windows(cli)["month"]
        assert (month["spent"], month["remaining"], month["resets_at"]) == (
            D(3), D(0), "2026-01-31T23:00:00Z")
        assert_refused(cli, charge(cli, "alice", "--parts", "1"), "monthly_limit", 5)
        clock.move_to(datetime(2026, 1, 31, 23, 10, tzinfo=UTC))  # 1 Feb 00:10 local
        month = windows(cli)["month"]
        assert (month["spent"], month["remaining"], month["resets_at"]) == (
            D(0), D(3), "2026-02-28T23:00:00Z")
        ok(charge(cli, "alice", "--parts", "3"))
        assert_refused(cli, charge(cli, "alice", "--parts", "1"), "monthly_limit", 5)
        assert balance(cli) == D(4)


def test_windows_across_a_dst_change_follow_local_midnight(cli: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    # Budapest goes to summer time (UTC+2) at 02:00 on Sunday 29 March 2026.
    with freeze_time(datetime(2026, 3, 29, 21, 59, tzinfo=UTC)) as clock:  # Sun 23:59 local
        add_user(cli)
        ok(cli("limits", "set", "alice", "--daily", "1"))
        ok(charge(cli, "alice", "--parts", "1"))
        assert windows(cli)["day"]["resets_at"] == "2026-03-29T22:00:00Z"
        clock.move_to(datetime(2026, 3, 29, 22, 0, tzinfo=UTC))  # Mon 00:00 local
        ok(charge(cli, "alice", "--parts", "1"))
        assert windows(cli)["week"]["spent"] == D(1)


# -- idempotent retry ---------------------------------------------------------------------


def test_same_id_twice_charges_once_and_replays_the_first_result(alice: Any) -> None:
    first = ok(charge(alice, "alice", "--parts", "2", "--id", "m-1")).result
    again = ok(charge(alice, "alice", "--parts", "2", "--id", "m-1")).result
    assert again["replayed"] is True and first["replayed"] is False
    for key in ("status", "id", "cost", "parts", "price", "rule", "balance", "to"):
        assert again[key] == first[key], key
    assert balance(alice) == D(8)
    assert [e["ref"] for e in credit_log(alice) if e["kind"] == "message.charged"] == ["m-1"]
    assert spent(alice) == (D(2),) * 3


def test_refused_charge_under_an_id_stays_refused_after_a_top_up(cli: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    add_user(cli, "alice", "1")
    assert_refused(cli, charge(cli, "alice", "--parts", "3", "--id", "m-2"),
                   "insufficient_credits", 4)
    ok(cli("credits", "add", "alice", "10"))
    run = charge(cli, "alice", "--parts", "3", "--id", "m-2")
    assert_refused(cli, run, "insufficient_credits", 4)
    assert run.result["replayed"] is True
    assert balance(cli) == D(11)
    assert ok(charge(cli, "alice", "--parts", "3", "--id", "m-3")).result["balance"] == D(8)


def test_same_id_for_another_user_is_a_conflict_and_charges_nothing(alice: Any) -> None:
    add_user(alice, "bob")
    ok(charge(alice, "alice", "--parts", "1", "--id", "m-4"))
    run = charge(alice, "bob", "--parts", "1", "--id", "m-4")
    assert run.exit_code == 6
    assert (run.result["status"], run.result["reason"]) == ("error", "conflict")
    assert (balance(alice, "alice"), balance(alice, "bob")) == (D(9), D(10))
    assert credit_log(alice, "bob")[0]["kind"] == "power.created"


def test_same_id_with_another_cost_is_a_conflict_and_charges_nothing(alice: Any) -> None:
    ok(charge(alice, "alice", "--parts", "1", "--id", "m-5"))
    run = charge(alice, "alice", "--parts", "2", "--id", "m-5")
    assert run.exit_code == 6
    assert run.result["reason"] == "conflict"
    assert balance(alice) == D(9)
    assert spent(alice) == (D(1),) * 3


def test_id_first_used_for_an_unknown_user_conflicts_for_a_real_user(alice: Any) -> None:
    assert_refused(alice, charge(alice, "nobody", "--parts", "1", "--id", "m-6"),
                   "unknown_user", 3)
    run = charge(alice, "alice", "--parts", "1", "--id", "m-6")
    assert run.exit_code == 6, run.stdout
    assert run.result["reason"] == "conflict"
    assert balance(alice) == D(10)


# -- unmetered ----------------------------------------------------------------------------


def test_user_without_credits_power_is_not_metered(alice: Any) -> None:
    add_user(alice, "carol", None)
    ok(alice("limits", "set", "alice", "--daily", "1"))
    r = ok(charge(alice, "carol", "--parts", "3", "--id", "u-1")).result
    assert (r["status"], r["cost"], r["metered"], r["balance"]) == ("charged", D(0), False, None)
    again = ok(charge(alice, "carol", "--parts", "3", "--id", "u-1")).result
    assert (again["cost"], again["metered"], again["replayed"]) == (D(0), False, True)
    assert data(alice("user", "show", "carol", "--json"))["balance"] is None
    assert alice("credits", "balance", "carol").exit_code == 3
    assert data(alice("log", "carol", "--json")) == []


def test_unmetered_message_has_nothing_to_refund(alice: Any) -> None:
    add_user(alice, "carol", None)
    ok(charge(alice, "carol", "--parts", "1", "--id", "u-2"))
    assert alice("refund", "u-2").exit_code == 6


# -- refunds ------------------------------------------------------------------------------


def test_refund_returns_the_credits_once_and_is_logged(alice: Any) -> None:
    ok(charge(alice, "alice", "--parts", "3", "--id", "r-1"))
    run = ok(alice("refund", "r-1", "--note", "not delivered", "--json"))
    assert (doc(run)["amount"], doc(run)["balance"], doc(run)["user"]) == (D(3), D(10), "alice")
    again = alice("refund", "r-1")
    assert again.exit_code == 6
    assert balance(alice) == D(10)
    refunded = [e for e in credit_log(alice) if e["kind"] == "message.refunded"]
    assert len(refunded) == 1
    assert (refunded[0]["amount"], refunded[0]["balance_after"], refunded[0]["ref"],
            refunded[0]["note"]) == (D(3), D(10), "r-1", "not delivered")


def test_refund_gives_room_back_in_todays_window(alice: Any) -> None:
    ok(alice("limits", "set", "alice", "--daily", "2"))
    ok(charge(alice, "alice", "--parts", "1", "--id", "r-2"))
    ok(charge(alice, "alice", "--parts", "1", "--id", "r-3"))
    assert_refused(alice, charge(alice, "alice", "--parts", "1"), "daily_limit", 5)
    ok(alice("refund", "r-2"))
    assert windows(alice)["day"]["remaining"] == D(1)
    assert ok(charge(alice, "alice", "--parts", "1", "--id", "r-4")).result["balance"] == D(8)


def test_refund_of_yesterdays_message_leaves_todays_day_counter(cli: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    with freeze_time(datetime(2026, 3, 10, 10, 0, tzinfo=UTC)) as clock:  # Tuesday
        add_user(cli)
        ok(charge(cli, "alice", "--parts", "3", "--id", "y-1"))
        clock.move_to(datetime(2026, 3, 11, 10, 0, tzinfo=UTC))  # Wednesday, same week
        ok(charge(cli, "alice", "--parts", "1", "--id", "y-2"))
        assert spent(cli) == (D(1), D(4), D(4))
        ok(cli("refund", "y-1"))
        assert spent(cli) == (D(1), D(1), D(1))
        assert balance(cli) == D(9)


def test_refund_of_an_unknown_message_exits_3(alice: Any) -> None:
    run = alice("refund", "no-such-message")
    assert run.exit_code == 3
    assert "no-such-message" in run.stderr


def test_refund_of_a_refused_message_exits_3(alice: Any) -> None:
    assert_refused(alice, charge(alice, "alice", "--parts", "11", "--id", "x-1"),
                   "insufficient_credits", 4)
    assert alice("refund", "x-1").exit_code == 3
    assert balance(alice) == D(10)


def test_retry_of_a_refunded_message_charges_nothing(alice: Any) -> None:
    ok(charge(alice, "alice", "--parts", "1", "--id", "r-5"))
    ok(alice("refund", "r-5"))
    run = charge(alice, "alice", "--parts", "1", "--id", "r-5")
    assert run.result["replayed"] is True
    assert balance(alice) == D(10)


# -- batches ------------------------------------------------------------------------------

def test_batch_with_good_rejected_and_malformed_lines(alice: Any, tmp_path: Path) -> None:
    good = {"user": "alice", "to": TO}
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join([
        jl(**good, text="hi", id="b-1"),  # 1 charged
        '{"user": "alice", "to": ',  # 2 bad JSON
        "[1, 2]",  # 3 an array
        jl(user="alice", text="hi"),  # 4 no "to"
        jl(**good, text="hi", parts=1),  # 5 both text and parts
        jl(**good, parts=0),  # 6 parts 0
        jl(**good, parts=1, colour="red"),  # 7 unknown field
        jl(user="nobody", to=TO, parts=1),  # 8 rejected
        jl(**good, parts=2, id="b-2"),  # 9 charged after the bad lines
        jl(**good, parts=100),  # 10 rejected: insufficient credits
    ]) + "\n")
    run = alice("charge", "--file", str(path))
    assert run.exit_code == 2
    out = lines(run)
    assert [r["line"] for r in out] == list(range(1, 11))
    assert [r["status"] for r in out] == ["charged", *["error"] * 6, "rejected", "charged",
                                          "rejected"]
    assert (out[7]["reason"], out[9]["reason"]) == ("unknown_user", "insufficient_credits")
    assert (out[8]["id"], out[8]["cost"], out[8]["balance"]) == ("b-2", D(2), D(7))
    for r in out[1:7]:
        assert r["reason"] == "bad_input"
        assert r["message"]
    for r in out[1:7]:  # parts 0 too: the parser checks the range
        assert f"line {r['line']}" in r["message"]
    assert ("10 line(s): charged 2, replayed 0, refused 2 (insufficient_credits 1, "
            "unknown_user 1), errors 6 (bad_input 6)") in run.stderr
    assert balance(alice) == D(7)


def test_batch_of_good_lines_exits_0_and_a_rerun_charges_nothing(alice: Any,
                                                                 tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(jl(user="alice", to=TO, parts=1, id=f"f-{i}") + "\n"
                            for i in range(4)).rstrip("\n"))
    run = alice("charge", "--file", str(path))
    assert run.exit_code == 0, run.stderr
    assert [(r["status"], r["replayed"], r["line"]) for r in lines(run)] == [
        ("charged", False, i) for i in range(1, 5)]
    assert "charged 4" in run.stderr
    assert balance(alice) == D(6)
    rerun = alice("charge", "--file", str(path))
    assert rerun.exit_code == 0
    out = lines(rerun)
    assert all(r["replayed"] for r in out) and len(out) == 4
    assert [r["balance"] for r in out] == [D(9), D(8), D(7), D(6)]
    assert balance(alice) == D(6)
    assert "0 credits charged" in rerun.stderr
    assert len([e for e in credit_log(alice) if e["kind"] == "message.charged"]) == 4


def test_batch_with_only_rejections_exits_0(alice: Any, tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    path.write_text(jl(user="alice", to="+1234", parts=1) + "\n")
    run = alice("charge", "--file", str(path))
    assert run.exit_code == 0
    assert lines(run)[0]["reason"] == "invalid_number"


def test_batch_from_stdin(alice: Any) -> None:
    data = jl(user="alice", to=TO, text="hello") + "\n" + "oops\n"
    run = alice("charge", "--file", "-", input=data)
    assert run.exit_code == 2, run.stderr
    out = lines(run)
    assert [(r["line"], r["status"]) for r in out] == [(1, "charged"), (2, "error")]
    assert balance(alice) == D(9)


def test_batch_from_a_real_stdin_pipe(alice: Any) -> None:
    data = jl(user="alice", to=TO, parts=2) + "\n" + "[]"  # no newline after the last line
    proc = subprocess.run([sys.executable, "-m", "smscredits", "charge", "--file", "-"],
                          input=data, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    out = [json.loads(x, parse_float=Decimal) for x in proc.stdout.splitlines()]
    assert [(r["line"], r["status"]) for r in out] == [(1, "charged"), (2, "error")]
    assert "2 line(s): charged 1, replayed 0, refused 0, errors 1 (bad_input 1)" in proc.stderr
    assert balance(alice) == D(8)


def test_batch_file_that_does_not_exist_exits_2(alice: Any, tmp_path: Path) -> None:
    run = alice("charge", "--file", str(tmp_path / "missing.jsonl"))
    assert run.exit_code == 2
    assert "missing.jsonl" in run.stderr
    assert balance(alice) == D(10)


def test_batch_conflict_is_reported_but_is_not_a_malformed_line(alice: Any,
                                                               tmp_path: Path) -> None:
    add_user(alice, "bob")
    path = tmp_path / "batch.jsonl"
    path.write_text(jl(user="alice", to=TO, parts=1, id="c-1") + "\n"
                    + jl(user="bob", to=TO, parts=1, id="c-1") + "\n")
    run = alice("charge", "--file", str(path))
    assert [(r["status"], r["reason"]) for r in lines(run)] == [
        ("charged", None), ("error", "conflict")]
    assert run.exit_code == 0  # exit 2 is for malformed lines only
    assert (balance(alice, "alice"), balance(alice, "bob")) == (D(9), D(10))


def test_same_id_twice_in_one_batch_charges_once(alice: Any, tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    path.write_text((jl(user="alice", to=TO, parts=1, id="d-1") + "\n") * 2)
    out = lines(ok(alice("charge", "--file", str(path))))
    assert [r["replayed"] for r in out] == [False, True]
    assert balance(alice) == D(9)


# -- usage --------------------------------------------------------------------------------


def test_usage_by_day_and_by_country(cli: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    ok(cli("price", "set", "US", "0.5"))
    with freeze_time(datetime(2026, 3, 10, 10, 0, tzinfo=UTC)) as clock:
        add_user(cli, "alice", "100")
        ok(charge(cli, "alice", "--parts", "2"))
        ok(charge(cli, "alice", "--parts", "1", to="+12125551234"))
        clock.move_to(datetime(2026, 3, 11, 10, 0, tzinfo=UTC))
        ok(charge(cli, "alice", "--parts", "3", "--id", "u-3"))
        ok(charge(cli, "alice", "--parts", "1", "--id", "u-4"))
        assert_refused(cli, charge(cli, "alice", "--parts", "200"), "insufficient_credits", 4)
        ok(cli("refund", "u-3"))
        by_day = data(cli("usage", "alice", "--by", "day", "--json"))
        assert [(r["period"], r["messages"], r["parts"], r["spent"], r["refunded"])
                for r in by_day] == [("2026-03-11", 2, 4, D(1), 1),
                                     ("2026-03-10", 2, 3, D("2.5"), 0)]
        by_country = data(cli("usage", "alice", "--by", "country", "--json"))
        assert sorted((r["period"], r["messages"], r["spent"]) for r in by_country) == [
            ("HU", 3, D(3)), ("US", 1, D("0.5"))]


def test_usage_of_an_unknown_user_exits_3(alice: Any) -> None:
    assert alice("usage", "nobody").exit_code == 3


# -- concurrency (core) -------------------------------------------------------------------


def run_threads(db_url: str, user: str, threads: int = 8, each: int = 20,
                ids: bool = False) -> list[Any]:
    results: list[Any] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def work() -> None:
        handle = open_db(db_url, actor="tester")
        try:
            charger = Charger(handle)
            barrier.wait()
            for i in range(each):
                msg_id = f"same-{i}" if ids else None
                r = charger.charge(ChargeRequest(user, TO, parts=1, id=msg_id))
                with lock:
                    results.append(r)
        finally:
            handle.dispose()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == threads * each
    return results


def charged_events(db: Any, user: str) -> list[Any]:
    return reads.query_events(db, user, kinds=["message.charged"], limit=10_000,
                               credit_only=True)


def test_concurrent_chargers_never_overdraw(db: Any, db_url: str) -> None:
    from smscredits import pricing

    pricing.set_price(db, "default", "1")
    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", initial=50_000)
    results = run_threads(db_url, "alice")
    charged = [r for r in results if r.status == "charged"]
    assert len(charged) == 50
    assert {r.reason for r in results if r.status != "charged"} == {"insufficient_credits"}
    assert min(r.balance for r in charged) == 0
    assert sorted(r.balance for r in charged) == list(range(50))
    assert ledger.get_account(db, "alice").balance == 0
    events = charged_events(db, "alice")
    assert len(events) == 50 and sum(e.amount for e in events) == -50
    log = reads.query_events(db, "alice", credit_only=True, limit=10_000)
    assert sum(e.amount for e in log) == 0


def test_concurrent_chargers_never_exceed_a_daily_limit(db: Any, db_url: str) -> None:
    from smscredits import pricing

    pricing.set_price(db, "default", "1")
    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", initial=1_000_000)
    ledger.set_limits(db, "alice", {"day": 30_000})
    results = run_threads(db_url, "alice")
    assert len([r for r in results if r.status == "charged"]) == 30
    assert {r.reason for r in results if r.status != "charged"} == {"daily_limit"}
    assert ledger.get_account(db, "alice").balance == 970
    day = reads.show_limits(db, "alice").windows[0]
    assert (day.window, day.spent, day.remaining) == ("day", 30, 0)
    assert sum(e.amount for e in charged_events(db, "alice")) == -30


def test_concurrent_retries_of_the_same_ids_charge_each_once(db: Any, db_url: str) -> None:
    from smscredits import pricing

    pricing.set_price(db, "default", "1")
    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", initial=1_000_000)
    results = run_threads(db_url, "alice", ids=True)
    assert {r.status for r in results} == {"charged"}
    assert len([r for r in results if not r.replayed]) == 20
    assert ledger.get_account(db, "alice").balance == 980
    assert sorted(e.ref for e in charged_events(db, "alice")) == sorted(
        f"same-{i}" for i in range(20))


def test_charges_racing_top_ups_are_charged_or_refused_never_crash(db: Any, db_url: str) -> None:
    from smscredits import pricing

    pricing.set_price(db, "default", "1")
    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", initial=0)
    done = threading.Event()
    outcomes: list[Any] = []
    lock = threading.Lock()

    def charge_until_done() -> None:
        handle = open_db(db_url, actor="tester")
        try:
            charger = Charger(handle)
            while not done.is_set():
                try:
                    r: Any = charger.charge(ChargeRequest("alice", TO, parts=1))
                except Exception as e:  # a refused charge must be a result, not a crash
                    r = e
                with lock:
                    outcomes.append(r)
        finally:
            handle.dispose()

    workers = [threading.Thread(target=charge_until_done) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        for _ in range(300):
            ledger.add_credits(db, "alice", 1_000)
    finally:
        done.set()
        for w in workers:
            w.join()
    crashes = [repr(r) for r in outcomes if isinstance(r, Exception)]
    assert crashes == []
    charged = [r for r in outcomes if r.status == "charged"]
    assert {r.reason for r in outcomes if r.status != "charged"} <= {"insufficient_credits"}
    assert all(r.balance >= 0 for r in charged)
    assert ledger.get_account(db, "alice").balance == 300 - len(charged)
    assert len(charged_events(db, "alice")) == len(charged)
