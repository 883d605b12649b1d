"""Refill plans: periodic plans across DST, month ends and missed runs, exactly-once under
concurrent `refill run`, threshold plans fired by charges, and refused inputs; on SQLite and
Postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from smscredits.storage.tables import events
from tests.helpers import balance, credit_log, data, doc, ok

D = Decimal
BUD = ZoneInfo("Europe/Budapest")
TO = "+36301234567"


def local(*args: int) -> datetime:
    """A wall time in Budapest (an aware datetime)."""
    return datetime(*args, tzinfo=BUD)


def setup_user(cli: Any, initial: str = "10", tz: str = "Europe/Budapest",
               name: str = "alice") -> None:
    ok(cli("user", "add", name, "--tz", tz))
    ok(cli("power", "create", name, "credits", "--initial", initial))


def schedule(cli: Any, *args: str, user: str = "alice") -> int:
    return data(cli("refill", "schedule", user, *args, "--json"))["id"]


def run(cli: Any, *args: str) -> list[dict[str, Any]]:
    return data(cli("refill", "run", *args, "--json"))


def periods(cli: Any, plan: int | None = None) -> list[str]:
    """Periods applied by one `refill run` (of one plan, if given)."""
    return [a["period"] for a in run(cli) if plan is None or a["plan_id"] == plan]


def refill_events(cli: Any, plan: int, user: str = "alice") -> list[dict[str, Any]]:
    """The plan's refill.applied events in the credit log, oldest first."""
    rows = [e for e in credit_log(cli, user)
            if e["kind"] == "refill.applied" and e["ref"] == f"plan:{plan}"]
    return sorted(rows, key=lambda e: e["id"])


def event_periods(db: Any, plan: int) -> list[str]:
    """The period each refill.applied event of the plan names, oldest first."""
    with db.read() as conn:
        rows = conn.execute(
            select(events.c.detail).where(events.c.kind == "refill.applied",
                                          events.c.ref == f"plan:{plan}").order_by(events.c.id)
        ).scalars().all()
    return [json.loads(r)["period"] for r in rows]


def plans(cli: Any, *args: str) -> dict[int, dict[str, Any]]:
    return {p["id"]: p for p in data(cli("refill", "list", *args, "--json"))}


def runs_at(cli: Any, clock: Any, instants: list[datetime], plan: int) -> list[list[str]]:
    """Move to each instant, `refill run`, and collect the periods applied each time."""
    out = []
    for at in instants:
        clock.move_to(at)
        out.append(periods(cli, plan))
    return out


def flatten(runs: list[list[str]]) -> list[str]:
    return [p for r in runs for p in r]


# -- periodic plans on the calendar ------------------------------------------------------


@pytest.mark.parametrize(("scheduled", "days"), [
    (local(2026, 3, 27, 12, 0), [(2026, 3, d) for d in range(28, 32)]),  # 29 March: 02:00→03:00
    (local(2026, 10, 23, 12, 0), [(2026, 10, d) for d in range(24, 29)]),  # 25 Oct: 03:00→02:00
])
def test_daily_midnight_in_budapest_applies_once_per_local_day_across_dst(
        cli: Any, db: Any, scheduled: datetime, days: list[tuple[int, int, int]]) -> None:
    setup_user(cli)
    with freeze_time(scheduled) as clock:
        plan = schedule(cli, "--every", "day", "--at", "00:00", "--add", "1")
        for y, m, d in days:
            clock.move_to(local(y, m, d, 0, 0) - timedelta(minutes=1))  # 23:59 the day before
            assert periods(cli, plan) == []
            clock.move_to(local(y, m, d, 0, 30))
            assert periods(cli, plan) == [f"{y}-{m:02d}-{d:02d}"]
            clock.move_to(local(y, m, d, 23, 0))  # later the same local day (UTC may differ)
            assert periods(cli, plan) == []
    assert [e["amount"] for e in refill_events(cli, plan)] == [D(1)] * len(days)
    assert event_periods(db, plan) == [f"{y}-{m:02d}-{d:02d}" for y, m, d in days]
    assert balance(cli) == D(10 + len(days))


def test_daily_plan_through_both_dst_changes_of_2026(cli: Any, db: Any) -> None:
    setup_user(cli, "0")
    with freeze_time(local(2026, 3, 27, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--add", "1")
        spring = runs_at(cli, clock, [local(2026, 3, d, 0, 30) for d in range(28, 32)], plan)
        assert spring == [["2026-03-28"], ["2026-03-29"], ["2026-03-30"], ["2026-03-31"]]
        clock.move_to(local(2026, 10, 23, 0, 30))  # cron was down all summer: caught up
        summer = periods(cli, plan)
        assert summer[0] == "2026-04-01" and summer[-1] == "2026-10-23"
        assert len(summer) == len(set(summer)) == 206
        autumn = runs_at(cli, clock, [local(2026, 10, d, 0, 30) for d in range(24, 28)], plan)
        assert autumn == [["2026-10-24"], ["2026-10-25"], ["2026-10-26"], ["2026-10-27"]]
    assert balance(cli) == D(4 + 206 + 4)
    assert len(refill_events(cli, plan)) == 214
    assert event_periods(db, plan) == flatten(spring) + summer + flatten(autumn)


@pytest.mark.parametrize(("year", "feb_last"), [(2028, 29), (2027, 28)])
@pytest.mark.parametrize("on", ["31", "last"])
def test_monthly_on_31_or_last_falls_on_each_months_last_day(
        cli: Any, db: Any, year: int, feb_last: int, on: str) -> None:
    setup_user(cli)
    with freeze_time(local(year, 1, 15, 12, 0)) as clock:
        plan = schedule(cli, "--every", "month", "--on", on, "--add", "2")
        got = runs_at(cli, clock, [
            local(year, 1, 30, 23, 59), local(year, 1, 31, 0, 30),
            local(year, 2, feb_last, 0, 0) - timedelta(minutes=1), local(year, 2, feb_last, 0, 30),
            local(year, 3, 1, 12, 0),
            local(year, 3, 30, 23, 59), local(year, 3, 31, 0, 30),
            local(year, 4, 29, 23, 59), local(year, 4, 30, 0, 30), local(year, 5, 1, 12, 0),
        ], plan)
    assert got == [[], [f"{year}-01"], [], [f"{year}-02"], [], [], [f"{year}-03"],
                   [], [f"{year}-04"], []]
    assert event_periods(db, plan) == [f"{year}-0{m}" for m in range(1, 5)]
    assert balance(cli) == D(10 + 4 * 2)


def test_weekly_on_monday_applies_on_mondays_only(cli: Any, db: Any) -> None:
    setup_user(cli)
    with freeze_time(local(2026, 3, 4, 12, 0)) as clock:  # a Wednesday
        plan = schedule(cli, "--every", "week", "--on", "mon", "--at", "06:00", "--add", "3")
        days = [local(2026, 3, 4, 12, 0) + timedelta(days=n) for n in range(1, 22)]
        got = runs_at(cli, clock, days, plan)
    applied = {at.date().isoformat(): p for at, p in zip(days, got, strict=True) if p}
    assert applied == {"2026-03-09": ["2026-W11"], "2026-03-16": ["2026-W12"],
                       "2026-03-23": ["2026-W13"]}
    assert all(at.weekday() == 0 for at in days if at.date().isoformat() in applied)
    assert event_periods(db, plan) == ["2026-W11", "2026-W12", "2026-W13"]
    assert balance(cli) == D(19)


def test_weekly_plan_is_not_due_before_its_time_on_monday(cli: Any) -> None:
    setup_user(cli)
    with freeze_time(local(2026, 3, 4, 12, 0)) as clock:
        plan = schedule(cli, "--every", "week", "--on", "mon", "--at", "06:00", "--add", "3")
        assert runs_at(cli, clock, [local(2026, 3, 9, 5, 59), local(2026, 3, 9, 6, 0)],
                       plan) == [[], ["2026-W11"]]


def test_a_plan_does_not_apply_the_period_due_at_or_before_its_scheduling(cli: Any) -> None:
    setup_user(cli)
    with freeze_time(local(2026, 3, 10, 6, 0)):
        plan = schedule(cli, "--every", "day", "--at", "06:00", "--add", "1")
        assert periods(cli, plan) == []
    assert balance(cli) == D(10)


def test_daily_time_in_the_dst_gap_and_fold_applies_once_on_that_day(cli: Any,
                                                                     db: Any) -> None:
    setup_user(cli)
    with freeze_time(local(2026, 3, 27, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--at", "02:30", "--add", "1")
        spring = runs_at(cli, clock, [
            local(2026, 3, 28, 12, 0),
            datetime(2026, 3, 29, 0, 59, tzinfo=UTC),  # 01:59 CET: 02:30 not yet
            datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # 03:00 CEST: 02:30 never came, due now
            local(2026, 3, 29, 23, 0), local(2026, 3, 30, 12, 0),
        ], plan)
        assert spring == [["2026-03-28"], [], ["2026-03-29"], [], ["2026-03-30"]]
        clock.move_to(local(2026, 10, 24, 12, 0))
        assert len(periods(cli, plan)) == 208  # 31 March .. 24 October
        autumn = runs_at(cli, clock, [
            datetime(2026, 10, 25, 0, 29, tzinfo=UTC),  # 02:29 CEST
            datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 CEST: the first 02:30
            datetime(2026, 10, 25, 1, 30, tzinfo=UTC),  # 02:30 CET: the second, not again
            local(2026, 10, 25, 23, 0), local(2026, 10, 26, 12, 0),
        ], plan)
        assert autumn == [[], ["2026-10-25"], [], [], ["2026-10-26"]]
    got = event_periods(db, plan)
    assert len(got) == len(set(got)) == 3 + 208 + 2


# -- exactly once, catching up -----------------------------------------------------------


def test_second_run_in_the_same_period_applies_nothing(cli: Any) -> None:
    setup_user(cli)
    with freeze_time(local(2026, 5, 1, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--add", "5")
        clock.move_to(local(2026, 5, 2, 0, 10))
        assert periods(cli, plan) == ["2026-05-02"]
        clock.move_to(local(2026, 5, 2, 18, 0))
        again = cli("refill", "run")
        assert again.exit_code == 0, again.stderr
        assert "nothing due" in again.stdout + again.stderr
        assert run(cli) == []
    assert balance(cli) == D(15)
    assert len(refill_events(cli, plan)) == 1


def test_three_missed_days_with_add_are_caught_up_one_event_each(cli: Any, db: Any) -> None:
    setup_user(cli)
    with freeze_time(local(2026, 5, 1, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--at", "08:00", "--add", "5")
        clock.move_to(local(2026, 5, 4, 9, 0))
        done = run(cli)
    assert [(a["plan_id"], a["period"], a["amount"]) for a in done] == [
        (plan, "2026-05-02", D(5)), (plan, "2026-05-03", D(5)), (plan, "2026-05-04", D(5))]
    assert [a["balance"] for a in done] == [D(15), D(20), D(25)]
    assert balance(cli) == D(25)
    evs = refill_events(cli, plan)
    assert [(e["amount"], e["balance_after"]) for e in evs] == [(D(5), D(15)), (D(5), D(20)),
                                                               (D(5), D(25))]
    assert event_periods(db, plan) == ["2026-05-02", "2026-05-03", "2026-05-04"]


def test_three_missed_days_with_top_up_apply_once(cli: Any, db: Any) -> None:
    setup_user(cli)
    with freeze_time(local(2026, 5, 1, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--at", "08:00", "--top-up-to", "50")
        clock.move_to(local(2026, 5, 4, 9, 0))
        done = run(cli)
        assert run(cli) == []
    assert [(a["period"], a["amount"], a["balance"]) for a in done] == [
        ("2026-05-04", D(40), D(50))]
    assert balance(cli) == D(50)
    assert [e["amount"] for e in refill_events(cli, plan)] == [D(40)]
    assert event_periods(db, plan) == ["2026-05-04"]


def test_top_up_above_target_adds_nothing(cli: Any) -> None:
    setup_user(cli, "60")
    with freeze_time(local(2026, 5, 1, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--top-up-to", "50")
        clock.move_to(local(2026, 5, 2, 1, 0))
        done = run(cli)
        assert all(a["amount"] == 0 for a in done)
        assert run(cli) == []
    assert balance(cli) == D(60)
    assert refill_events(cli, plan) == []
    assert [e["kind"] for e in credit_log(cli)] == ["power.created"]


def test_top_up_adds_only_the_difference(cli: Any) -> None:
    setup_user(cli, "12.5")
    with freeze_time(local(2026, 5, 1, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--top-up-to", "50")
        clock.move_to(local(2026, 5, 2, 1, 0))
        assert [a["amount"] for a in run(cli)] == [D("37.5")]
    assert balance(cli) == D(50)
    assert [e["amount"] for e in refill_events(cli, plan)] == [D("37.5")]


def test_dry_run_shows_what_is_due_and_changes_nothing(cli: Any) -> None:
    setup_user(cli)
    with freeze_time(local(2026, 5, 1, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--add", "5")
        clock.move_to(local(2026, 5, 3, 1, 0))
        before = credit_log(cli)
        dry = run(cli, "--dry-run")
        assert [(a["plan_id"], a["period"], a["amount"]) for a in dry] == [
            (plan, "2026-05-02", D(5)), (plan, "2026-05-03", D(5))]
        table = ok(cli("refill", "run", "--dry-run"))
        assert "2026-05-02" in table.stdout and "2026-05-03" in table.stdout
        assert balance(cli) == D(10)
        assert credit_log(cli) == before
        assert plans(cli)[plan]["last_applied_at"] is None
        assert periods(cli, plan) == ["2026-05-02", "2026-05-03"]
    assert balance(cli) == D(20)
    assert len(refill_events(cli, plan)) == 2


# -- pause, resume, cancel ---------------------------------------------------------------


def test_paused_periods_are_skipped_not_caught_up(cli: Any, db: Any) -> None:
    setup_user(cli)
    with freeze_time(local(2026, 5, 1, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--at", "08:00", "--add", "5")
        clock.move_to(local(2026, 5, 2, 9, 0))
        assert periods(cli, plan) == ["2026-05-02"]
        ok(cli("refill", "pause", str(plan)))
        assert plans(cli)[plan]["status"] == "paused"
        clock.move_to(local(2026, 5, 4, 9, 0))
        assert periods(cli, plan) == []
        ok(cli("refill", "resume", str(plan)))
        assert plans(cli)[plan]["status"] == "active"
        assert periods(cli, plan) == []  # 3 and 4 May were due while paused
        clock.move_to(local(2026, 5, 5, 9, 0))
        assert periods(cli, plan) == ["2026-05-05"]
    assert balance(cli) == D(20)
    assert event_periods(db, plan) == ["2026-05-02", "2026-05-05"]


def test_cancelled_plan_is_never_applied_and_hidden_from_list(cli: Any) -> None:
    setup_user(cli)
    with freeze_time(local(2026, 5, 1, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--add", "5")
        other = schedule(cli, "--every", "week", "--add", "1")
        ok(cli("refill", "cancel", str(plan)))
        clock.move_to(local(2026, 5, 9, 12, 0))
        assert {a["plan_id"] for a in run(cli)} == {other}
        assert run(cli) == []
        assert list(plans(cli)) == [other]
        assert list(plans(cli, "alice")) == [other]
        everything = plans(cli, "--all")
        assert sorted(everything) == [plan, other]
        assert everything[plan]["status"] == "cancelled"
    assert refill_events(cli, plan) == []
    assert plans(cli, "--all")[plan]["status"] == "cancelled"


def test_a_cancelled_plan_cannot_be_resumed(cli: Any) -> None:
    setup_user(cli)
    plan = schedule(cli, "--every", "day", "--add", "5")
    ok(cli("refill", "cancel", str(plan)))
    resumed = cli("refill", "resume", str(plan))
    assert resumed.exit_code != 0
    assert plans(cli, "--all")[plan]["status"] == "cancelled"


# -- concurrent runs ---------------------------------------------------------------------


def test_concurrent_runs_apply_each_period_once(cli: Any, db_url: str) -> None:
    setup_user(cli, "0", tz="UTC")
    now = datetime.now(UTC)
    at = (now + timedelta(hours=12)).strftime("%H:%M")  # far from now: exactly 5 due
    env = {k: v for k, v in os.environ.items() if k != "SMSCREDITS_DB"}
    cmd = [sys.executable, "-m", "smscredits", "--db", db_url, "refill", "run", "--json"]
    total = D(0)
    for _ in range(3):
        with freeze_time(now - timedelta(days=5)):
            plan = schedule(cli, "--every", "day", "--at", at, "--add", "7")
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
        applied = [a for out, _ in outs for a in json.loads(out, parse_float=Decimal)
                   if a["plan_id"] == plan]
        assert len(applied) == 5
        assert len({a["period"] for a in applied}) == 5
        total += 5 * 7
        assert balance(cli) == total
        evs = refill_events(cli, plan)
        assert len(evs) == 5 and all(e["amount"] == D(7) for e in evs)


# -- plans changed while a run goes on ---------------------------------------------------


def hook_after(monkeypatch: Any, k: int, action: Any) -> list[int]:
    """Run ``action()`` right after the k-th period a `refill run` handles has committed, as
    another connection would (the hook wraps the function that handles one period). The
    returned list counts the periods handled."""
    from smscredits import refills

    real, seen = refills._run_one, []

    def hooked(*args: Any, **kwargs: Any) -> Any:
        done = real(*args, **kwargs)
        seen.append(1)
        if len(seen) == k:
            action()
        return done

    monkeypatch.setattr(refills, "_run_one", hooked)
    return seen


def kinds_after(cli: Any, kind: str, ref: str) -> list[str]:
    """The kinds of the journal's events of ``ref`` that come after its first ``kind``."""
    mine = sorted((e for e in journal(cli) if e["ref"] == ref), key=lambda e: e["id"])
    first = next(i for i, e in enumerate(mine) if e["kind"] == kind)
    return [e["kind"] for e in mine[first + 1:]]


@pytest.mark.parametrize("changes", [["cancelled"], ["paused"], ["paused", "active"]])
def test_a_plan_cancelled_or_paused_during_a_run_gets_nothing_after(
        cli: Any, db_url: str, monkeypatch: Any, changes: list[str]) -> None:
    """A catch-up run over 30 days; after its 3rd day another connection cancels, pauses,
    or pauses and resumes the plan (a resumed plan skips what came due while paused: here,
    everything up to now)."""
    from smscredits import refills
    from smscredits.storage.engine import open_db

    setup_user(cli, "0")
    other = open_db(db_url, actor="ops")
    with freeze_time(local(2026, 1, 1, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--add", "5")
        clock.move_to(local(2026, 1, 31, 12, 0))

        def change() -> None:
            for status in changes:
                refills.set_status(other, plan, status)

        hook_after(monkeypatch, 3, change)
        done = run(cli)
        assert [a["period"] for a in done] == ["2026-01-02", "2026-01-03", "2026-01-04"]
        assert run(cli) == []
    other.dispose()
    kind = "refill.paused" if changes[0] == "paused" else "refill.cancelled"
    assert "refill.applied" not in kinds_after(cli, kind, f"plan:{plan}")
    assert balance(cli) == D(15)
    assert len(refill_events(cli, plan)) == 3
    assert data(cli("verify", "--json"))["ok"] is True


def test_a_threshold_plan_cancelled_during_a_run_does_not_fire(
        alice7: Any, db_url: str, monkeypatch: Any) -> None:
    from smscredits import refills
    from smscredits.storage.engine import open_db

    cli = alice7
    with freeze_time(local(2026, 5, 1, 12, 0)) as clock:
        daily = schedule(cli, "--every", "day", "--add", "1")
        low = schedule(cli, "--when-below", "20", "--add", "10")  # 7: below it, armed
        clock.move_to(local(2026, 5, 3, 12, 0))
        other = open_db(db_url, actor="ops")
        hook_after(monkeypatch, 1, lambda: refills.set_status(other, low, "cancelled"))
        done = run(cli)
        other.dispose()
    assert [a["plan_id"] for a in done] == [daily, daily]
    assert refill_events(cli, low) == []
    assert balance(cli) == D(9)
    assert data(cli("verify", "--json"))["ok"] is True


def test_a_plan_whose_power_was_deleted_and_created_again_during_a_run_stops(
        cli: Any, db_url: str, monkeypatch: Any) -> None:
    """Deleting a power cancels its plans; the new power starts with no plan."""
    from smscredits import ledger
    from smscredits.storage.engine import open_db

    setup_user(cli, "0")
    setup_user(cli, "0", name="bob")  # alice's power is not the newest: its id is not reused
    other = open_db(db_url, actor="ops")
    with freeze_time(local(2026, 1, 1, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--add", "5")
        clock.move_to(local(2026, 1, 11, 12, 0))

        def replace_power() -> None:
            ledger.delete_power(other, "alice", force=True)
            ledger.create_power(other, "alice", initial=0)

        hook_after(monkeypatch, 2, replace_power)
        assert len(run(cli)) == 2
    other.dispose()
    assert balance(cli) == D(0)
    assert plans(cli, "--all")[plan]["status"] == "cancelled"
    assert data(cli("verify", "--json"))["ok"] is True


def wait_blocked_by(conn: Any, pid: int) -> None:
    """Return once some backend waits for a lock that backend ``pid`` holds (a condition,
    polled; not a timed wait)."""
    import time

    blocked = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
    deadline = time.monotonic() + 60
    while not conn.exec_driver_sql(blocked, (pid,)).scalar():
        assert time.monotonic() < deadline, "the cancel never waited for the charge"
        time.sleep(0.01)


def test_postgres_a_cancel_during_a_charge_that_fires_the_plan_waits_for_it(
        pg_schema_url: str, monkeypatch: Any) -> None:
    """The charge holds the account's row when its threshold plan fires; a cancel committed
    meanwhile queues behind it instead of deadlocking with it (it took the plan's row first,
    then waited for the account's: Postgres then aborted one of the two)."""
    import threading

    from smscredits import ledger, pricing, reads, refills, verify
    from smscredits.charging import Charger, ChargeRequest
    from smscredits.storage.engine import open_db
    from smscredits.storage.migrate import upgrade

    db = open_db(pg_schema_url, check=False, actor="tester")
    upgrade(db)
    other = open_db(pg_schema_url, actor="ops")
    pricing.set_price(db, "default", "1")
    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", initial=5_500)
    plan = refills.schedule_plan(db, "alice", below=5_000, add=10_000).id
    cancelled: list[Any] = []
    cancel = threading.Thread(target=lambda: cancelled.append(
        refills.set_status(other, plan, "cancelled")))
    real = refills.fire_thresholds

    def fire(conn: Any, *args: Any) -> int:
        cancel.start()
        with db.engine.connect() as watcher:
            wait_blocked_by(watcher, conn.exec_driver_sql("SELECT pg_backend_pid()").scalar())
        return real(conn, *args)

    monkeypatch.setattr(refills, "fire_thresholds", fire)
    try:
        result = Charger(db).charge(ChargeRequest("alice", TO, parts=1))
    finally:
        cancel.join(120)
    assert (result.status, result.balance) == ("charged", D("14.5"))
    assert [p.status for p in cancelled] == ["cancelled"]
    kinds = [e.kind for e in reversed(reads.query_events(db, "alice"))]
    assert kinds[-3:] == ["message.charged", "refill.applied", "refill.cancelled"]
    assert verify.verify(db).ok
    other.dispose()
    db.dispose()


# -- refills past the maximum balance ----------------------------------------------------

HUGE = "999999999999999"  # credits: one refill of it fits, a second would pass the maximum
BOUND = "999999999999999.999"


def skipped_events(db: Any, plan: int) -> list[dict[str, Any]]:
    """The plan's refill.skipped events: detail, amount and balance_after, oldest first."""
    with db.read() as conn:
        rows = conn.execute(
            select(events.c.detail, events.c.amount, events.c.balance_after)
            .where(events.c.kind == "refill.skipped", events.c.ref == f"plan:{plan}")
            .order_by(events.c.id)
        ).all()
    return [{**json.loads(d), "amount": a, "balance_after": b} for d, a, b in rows]


@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_a_refill_past_the_maximum_is_skipped_and_the_other_plans_run(
        cli: Any, db: Any, quiet: list[str]) -> None:
    """Was: the balance reached 8999999999999991, past the documented maximum, and every
    later run crashed."""
    setup_user(cli, "0")
    setup_user(cli, "0", name="bob")
    with freeze_time(local(2026, 1, 1, 12, 0)) as clock:
        huge = schedule(cli, "--every", "day", "--add", HUGE)
        small = schedule(cli, "--every", "day", "--add", "5", user="bob")
        clock.move_to(local(2026, 1, 13, 12, 0))
        first = cli("refill", "run", *quiet)
        assert first.exit_code == 1, first.stderr
        lines = first.stderr.splitlines()
        assert len(lines) == 11
        assert lines[0] == (f"Error: refill plan {huge} of 'alice' skipped for 2026-01-03: "
                            f"adding {HUGE} to the balance {HUGE} would exceed {BOUND} "
                            "(amount_out_of_range)")
        again = cli("refill", "run", "--json")  # each skipped period is decided once
        assert (again.exit_code, doc(again), again.stderr) == (0, [], "")
    assert balance(cli) == D(HUGE)
    assert balance(cli, "bob") == D(60)
    assert len(refill_events(cli, small, "bob")) == 12
    assert [e["period"] for e in skipped_events(db, huge)] == [
        f"2026-01-{d:02d}" for d in range(3, 14)]
    assert skipped_events(db, huge)[0] == {
        "plan": huge, "period": "2026-01-03", "reason": "amount_out_of_range",
        "amount": None, "balance_after": None}
    assert "refill.skipped" in {e["kind"] for e in journal(cli)}
    assert data(cli("verify", "--json"))["ok"] is True


def test_a_skipped_refill_is_in_the_json_and_a_dry_run_shows_it(cli: Any) -> None:
    setup_user(cli, HUGE)
    with freeze_time(local(2026, 1, 1, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--add", "1")
        clock.move_to(local(2026, 1, 2, 12, 0))
        dry = cli("refill", "run", "--dry-run", "--json")
        assert dry.exit_code == 1
        assert json.loads(dry.stderr)["error"]["code"] == "amount_out_of_range"
        assert "would be skipped" in json.loads(dry.stderr)["error"]["message"]
        before = journal(cli)
        done = cli("refill", "run", "--json")
        assert done.exit_code == 1
        assert [(a["plan_id"], a["amount"], a["balance"], a["applied"], a["skipped"])
                for a in doc(done)] == [(plan, D(1), D(HUGE), False, "amount_out_of_range")]
    assert len(journal(cli)) == len(before) + 1
    assert balance(cli) == D(HUGE)


def test_a_top_up_from_a_huge_debt_is_skipped(cli: Any, db: Any) -> None:
    """Topping up from -999999999999999 to 999999999999999 would add twice the maximum."""
    ok(cli("user", "add", "alice", "--tz", "Europe/Budapest"))
    ok(cli("power", "create", "alice", "credits", "--overdraft", "unlimited"))
    ok(cli("credits", "set", "alice", "-" + HUGE))
    with freeze_time(local(2026, 1, 1, 12, 0)) as clock:
        plan = schedule(cli, "--every", "day", "--top-up-to", HUGE)
        clock.move_to(local(2026, 1, 2, 12, 0))
        done = cli("refill", "run")
    assert done.exit_code == 1
    assert done.stderr == (f"Error: refill plan {plan} of 'alice' skipped for 2026-01-02: the "
                           f"refill 1999999999999998 is out of range (at most {BOUND}) "
                           "(amount_out_of_range)\n")
    assert balance(cli) == D("-" + HUGE)
    assert len(skipped_events(db, plan)) == 1
    assert data(cli("verify", "--json"))["ok"] is True


def test_a_threshold_refill_past_the_maximum_is_skipped_and_the_charge_goes_through(
        cli: Any, db: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    setup_user(cli, "999999999999998.999")
    plan = schedule(cli, "--when-below", HUGE, "--add", "10")
    assert charge(cli)["balance"] == D("999999999999997.999")  # below: fires, skipped
    assert charge(cli)["balance"] == D("999999999999996.999")  # disarmed: not again
    assert [e["period"] for e in skipped_events(db, plan)] == ["crossing 1"]
    assert plans(cli)[plan]["armed"] is False
    assert run(cli) == []
    assert data(cli("verify", "--json"))["ok"] is True


@pytest.mark.parametrize("option", ["add", "top_up_to", "below"])
def test_schedule_refuses_an_amount_out_of_range(db: Any, option: str) -> None:
    """Through the Python API (the CLI's parser refuses it first): was an OverflowError on
    SQLite, a bigint error on Postgres."""
    from smscredits import ledger, reads, refills
    from smscredits.errors import BadInput

    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice")
    rule: dict[str, Any] = {"below": 5_000} if option != "below" else {}
    action: dict[str, Any] = {"add": 1_000} if option == "below" else {}
    with pytest.raises(BadInput) as e:
        refills.schedule_plan(db, "alice", **rule, **action, **{option: 10**19})
    assert e.value.code == "amount_out_of_range"
    assert "999999999999999.999" in e.value.message
    assert reads.list_plans(db, all_=True) == []


# -- threshold plans ---------------------------------------------------------------------


def charge(cli: Any, parts: int = 1) -> dict[str, Any]:
    return data(cli("charge", "alice", "--to", TO, "--parts", str(parts), "--json"))


@pytest.fixture
def alice7(cli: Any) -> Any:
    """alice with 7 credits and a price of 1 per part."""
    ok(cli("price", "set", "default", "1"))
    setup_user(cli, "7")
    return cli


def test_threshold_fires_in_the_charge_that_crosses_it(alice7: Any) -> None:
    cli = alice7
    plan = schedule(cli, "--when-below", "5", "--add", "10")
    assert [charge(cli)["balance"] for _ in range(2)] == [D(6), D(5)]
    assert refill_events(cli, plan) == []
    result = charge(cli)
    assert result["balance"] == D(14)
    log = sorted(credit_log(cli), key=lambda e: e["id"])
    assert [e["kind"] for e in log[-2:]] == ["message.charged", "refill.applied"]
    charged, refill = log[-2:]
    assert charged["ref"] == result["id"] and charged["balance_after"] == D(4)
    assert refill["ref"] == f"plan:{plan}" and refill["amount"] == D(10)
    assert refill["balance_after"] == D(14)
    assert balance(cli) == D(14)
    assert run(cli) == []


def test_threshold_fires_once_per_crossing_and_rearms_at_threshold(alice7: Any) -> None:
    cli = alice7
    plan = schedule(cli, "--when-below", "5", "--add", "1")
    assert [charge(cli)["balance"] for _ in range(2)] == [D(6), D(5)]  # 5 is not below 5
    assert charge(cli, 2)["balance"] == D(4)  # 3: fires, refilled to 4 (still below)
    assert len(refill_events(cli, plan)) == 1
    assert [charge(cli)["balance"] for _ in range(2)] == [D(3), D(2)]
    assert run(cli) == []  # spent: `refill run` does not fire it either
    ok(cli("credits", "add", "alice", "1"))  # 3: still below 5, not re-armed
    assert charge(cli)["balance"] == D(2)
    assert len(refill_events(cli, plan)) == 1
    ok(cli("credits", "add", "alice", "3"))  # 5: back at the threshold, re-armed
    assert charge(cli, 2)["balance"] == D(4)  # 3: fires again, refilled to 4
    assert len(refill_events(cli, plan)) == 2
    assert charge(cli)["balance"] == D(3)
    assert len(refill_events(cli, plan)) == 2
    assert balance(cli) == D(3)


def test_threshold_not_refired_while_below(alice7: Any) -> None:
    cli = alice7
    plan = schedule(cli, "--when-below", "5", "--add", "0.5")
    assert charge(cli, 3)["balance"] == D("4.5")
    assert [charge(cli)["balance"] for _ in range(3)] == [D("3.5"), D("2.5"), D("1.5")]
    assert len(refill_events(cli, plan)) == 1


def test_refill_run_applies_an_armed_threshold_plan_below_it(alice7: Any, db: Any) -> None:
    cli = alice7
    plan = schedule(cli, "--when-below", "5", "--add", "10")
    ok(cli("credits", "add", "alice", "-3"))
    assert balance(cli) == D(4)
    assert refill_events(cli, plan) == []
    done = run(cli)
    assert [(a["plan_id"], a["amount"], a["balance"]) for a in done] == [(plan, D(10), D(14))]
    assert run(cli) == []
    assert balance(cli) == D(14)
    assert len(refill_events(cli, plan)) == 1
    assert len(event_periods(db, plan)) == 1


def test_threshold_top_up_brings_balance_to_target(alice7: Any) -> None:
    cli = alice7
    plan = schedule(cli, "--when-below", "5", "--top-up-to", "20")
    charge(cli, 3)
    assert balance(cli) == D(20)
    assert [e["amount"] for e in refill_events(cli, plan)] == [D(16)]


def test_threshold_fires_once_in_a_batch_and_the_journal_verifies(alice7: Any,
                                                                  tmp_path: Any) -> None:
    cli = alice7
    plan = schedule(cli, "--when-below", "5", "--add", "10")
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps({"user": "alice", "to": TO, "parts": 1}) + "\n"
                            for _ in range(5)))
    batch = ok(cli("charge", "--file", str(path)))
    out = [json.loads(x, parse_float=Decimal) for x in batch.stdout.splitlines() if x.strip()]
    assert [r["balance"] for r in out] == [D(6), D(5), D(14), D(13), D(12)]
    assert [e["amount"] for e in refill_events(cli, plan)] == [D(10)]
    assert balance(cli) == D(12)
    assert data(cli("verify", "--json"))["ok"] is True


def test_journal_verifies_after_periodic_and_threshold_refills(alice7: Any) -> None:
    cli = alice7
    with freeze_time(local(2026, 5, 1, 12, 0)) as clock:
        schedule(cli, "--every", "day", "--add", "1")
        schedule(cli, "--when-below", "5", "--top-up-to", "8")
        charge(cli, 3)
        clock.move_to(local(2026, 5, 4, 12, 0))
        assert len(run(cli)) == 3
        charge(cli, 7)
    assert balance(cli) == D(8)
    report = data(cli("verify", "--json"))
    assert report["ok"] is True, report["problems"]


@pytest.mark.parametrize("verb", ["pause", "cancel"])
def test_paused_or_cancelled_threshold_plan_does_not_fire(alice7: Any, verb: str) -> None:
    cli = alice7
    plan = schedule(cli, "--when-below", "5", "--add", "10")
    ok(cli("refill", verb, str(plan)))
    assert charge(cli, 3)["balance"] == D(4)
    assert run(cli) == []
    assert refill_events(cli, plan) == []


def test_resumed_threshold_plan_fires_again(alice7: Any) -> None:
    cli = alice7
    plan = schedule(cli, "--when-below", "5", "--add", "10")
    ok(cli("refill", "pause", str(plan)))
    ok(cli("refill", "resume", str(plan)))
    assert charge(cli, 3)["balance"] == D(14)
    assert len(refill_events(cli, plan)) == 1


def test_refund_back_to_threshold_rearms_plan(alice7: Any) -> None:
    cli = alice7
    plan = schedule(cli, "--when-below", "5", "--add", "1")
    first = charge(cli, 4)  # 3: fires, 4
    assert first["balance"] == D(4)
    ok(cli("refund", first["id"]))  # 8: re-armed
    assert charge(cli, 4)["balance"] == D(5)  # 4: fires again, 5
    assert len(refill_events(cli, plan)) == 2


def test_periodic_refill_back_above_threshold_rearms_it(alice7: Any) -> None:
    cli = alice7
    with freeze_time(local(2026, 5, 1, 12, 0)) as clock:
        low = schedule(cli, "--when-below", "5", "--add", "1")
        daily = schedule(cli, "--every", "day", "--top-up-to", "7")
        assert charge(cli, 4)["balance"] == D(4)  # 3: fires, 4
        assert charge(cli)["balance"] == D(3)  # spent: no fire
        clock.move_to(local(2026, 5, 2, 12, 0))
        assert [(a["plan_id"], a["balance"]) for a in run(cli)] == [(daily, D(7))]  # re-armed
        assert charge(cli, 4)["balance"] == D(4)
    assert len(refill_events(cli, low)) == 2


# -- refused inputs ----------------------------------------------------------------------


def journal(cli: Any) -> list[dict[str, Any]]:
    return data(cli("events", "--json", "--limit", "1000"))


@pytest.mark.parametrize(("args", "code"), [
    (["alice", "--every", "fortnight", "--add", "1"], 2),
    (["alice", "--every", "month", "--on", "32", "--add", "1"], 2),
    (["alice", "--every", "month", "--on", "0", "--add", "1"], 2),
    (["alice", "--every", "week", "--on", "funday", "--add", "1"], 2),
    (["alice", "--every", "day", "--on", "mon", "--add", "1"], 2),
    (["alice", "--every", "day", "--at", "25:00", "--add", "1"], 2),
    (["alice", "--every", "day", "--at", "12:60", "--add", "1"], 2),
    (["alice", "--every", "day", "--add", "1", "--top-up-to", "5"], 2),
    (["alice", "--every", "day"], 2),
    (["alice", "--every", "day", "--when-below", "5", "--add", "1"], 2),
    (["alice", "--when-below", "5", "--at", "06:00", "--add", "1"], 2),
    (["alice"], 2),
    (["alice", "--every", "day", "--add", "0"], 2),
    (["alice", "--every", "day", "--add", "-1"], 2),
    (["alice", "--every", "day", "--add", "abc"], 2),
    (["alice", "--when-below", "5", "--top-up-to", "3"], 2),
    (["alice", "--every", "day", "--add", "1000000000000000"], 2),
    (["alice", "--every", "day", "--top-up-to", "1000000000000000"], 2),
    (["alice", "--when-below", "1000000000000000", "--add", "1"], 2),
    (["nobody", "--every", "day", "--add", "1"], 3),
    (["bob", "--every", "day", "--add", "1"], 3),
])
def test_refused_schedule_changes_nothing(cli: Any, args: list[str], code: int) -> None:
    setup_user(cli)
    ok(cli("user", "add", "bob"))  # no credits power
    before = journal(cli)
    refused = cli("refill", "schedule", *args)
    assert refused.exit_code == code, (refused.stdout, refused.stderr)
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert plans(cli, "--all") == {}
    assert journal(cli) == before


@pytest.mark.parametrize("verb", ["cancel", "pause", "resume"])
def test_unknown_plan_exits_3(cli: Any, verb: str) -> None:
    setup_user(cli)
    plan = schedule(cli, "--every", "day", "--add", "1")
    before = journal(cli)
    refused = cli("refill", verb, str(plan + 100))
    assert refused.exit_code == 3, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert journal(cli) == before
    assert plans(cli)[plan]["status"] == "active"


def test_refill_list_of_unknown_user_exits_3(cli: Any) -> None:
    refused = cli("refill", "list", "nobody")
    assert refused.exit_code == 3
    assert len(refused.stderr.strip().splitlines()) == 1


# -- refill list -------------------------------------------------------------------------


def test_list_shows_rule_next_due_in_users_zone_and_last_applied(cli: Any) -> None:
    setup_user(cli)
    setup_user(cli, name="bob", tz="America/New_York")
    with freeze_time(local(2026, 3, 27, 12, 0)) as clock:  # a Friday
        plan = schedule(cli, "--every", "week", "--on", "mon", "--at", "06:30", "--add", "10")
        low = schedule(cli, "--when-below", "5", "--add", "10")
        nyc = schedule(cli, "--every", "month", "--on", "31", "--at", "09:15", "--add", "1",
                       user="bob")
        shown = plans(cli)
        p = shown[plan]
        assert p["user"] == "alice" and p["status"] == "active"
        assert "Monday" in p["rule"] and "06:30" in p["rule"] and "week" in p["rule"]
        assert "10" in p["action"] and "add" in p["action"]
        assert p["next_due_at"] == "2026-03-30T04:30:00Z"  # 06:30 CEST, after the change
        assert p["last_applied_at"] is None
        assert "5" in shown[low]["rule"] and "below" in shown[low]["rule"]
        assert shown[nyc]["next_due_at"] == "2026-03-31T13:15:00Z"  # 09:15 in New York (EDT)
        assert "31" in shown[nyc]["rule"]
        assert list(plans(cli, "bob")) == [nyc]
        clock.move_to(local(2026, 3, 30, 7, 0))
        assert periods(cli, plan) == ["2026-W14"]
        p = plans(cli)[plan]
        assert p["last_applied_at"] == "2026-03-30T05:00:00Z"
        assert p["next_due_at"] == "2026-04-06T04:30:00Z"
        # The table shows each plan's times in its user's zone, with the zone's abbreviation.
        table = cli("refill", "list").stdout
        row = next(line for line in table.splitlines() if line.split()[:2] == [str(plan), "alice"])
        assert "2026-04-06 06:30 CEST" in row and "2026-03-30 07:00 CEST" in row
        assert "2026-03-31 09:15 EDT" in table


def test_list_is_empty_without_plans(cli: Any) -> None:
    setup_user(cli)
    assert plans(cli) == {}
    table = cli("refill", "list")
    assert table.exit_code == 0
