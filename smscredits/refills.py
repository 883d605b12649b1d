"""Automatic refill plans: periodic (every day/week/month) and threshold ("when below N").

Exactly once: each application inserts its key (plan, period) into ``refill_applications``
with ON CONFLICT DO NOTHING in the same transaction as the balance change and its event, so
a second run, an overlapping run on another host, or a re-run after a crash finds the key
taken and applies nothing. Missed periods are caught up: ``--add`` once per missed period,
``--top-up-to`` once (for the latest).

A period is applied only if the plan, read again under its row lock in that transaction, is
still active and the period still due: a cancel, pause or resume committed while a run goes
on stops it at the next period. Both take the account's power row before the plan's row, as
a charge that fires a plan does, so these transactions queue instead of deadlocking. A
period whose refill would take the balance past ``MAX_MILLIS`` is skipped once, with a
``refill.skipped`` event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, RowMapping, Table, select, update

from smscredits import clock, journal, schedule
from smscredits.amounts import MAX_MILLIS, format_amount, to_decimal
from smscredits.errors import BadInput, Conflict, NotFound
from smscredits.ledger import power_row, user_row

# Plans as shown (and their reads) are in reads, importable without SQLAlchemy.
from smscredits.reads import ACTIVE, CANCELLED, PAUSED, Plan, plan_of, rule_of
from smscredits.storage.engine import Db
from smscredits.storage.queries import plan_rows
from smscredits.storage.tables import powers, refill_applications, refill_plans
from smscredits.thresholds import rearm, sync_threshold

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite

OUT_OF_RANGE = "amount_out_of_range"


@dataclass(frozen=True, slots=True)
class Application:
    plan_id: int
    user: str
    period: str
    amount: Decimal
    balance: Decimal | None
    applied: bool  # False in a dry run, when a top-up found the balance at target, or skipped
    skipped: str | None = None  # why nothing was added (amount_out_of_range)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one period did to the balance: ``amount`` added (or, skipped, not added)."""

    amount: int
    balance: int
    skipped: str | None = None


# -- scheduling --------------------------------------------------------------------------


def schedule_plan(
    db: Db,
    user: str,
    *,
    every: str | None = None,
    on: str | None = None,
    at: str | None = None,
    below: int | None = None,
    add: int | None = None,
    top_up_to: int | None = None,
) -> Plan:
    if (add is None) == (top_up_to is None):
        raise BadInput("give exactly one of --add and --top-up-to")
    if (every is None) == (below is None):
        raise BadInput("give exactly one of --every and --when-below")
    for what, value in (("--add", add), ("--top-up-to", top_up_to), ("--when-below", below)):
        if value is not None and abs(value) > MAX_MILLIS:
            raise BadInput(f"bad {what} {format_amount(value)}: out of range (at most "
                           f"{format_amount(MAX_MILLIS)})", code=OUT_OF_RANGE)
    if add is not None and add <= 0:
        raise BadInput(f"bad --add {format_amount(add)}: must be more than 0")
    if top_up_to is not None and top_up_to <= 0:  # a plan that could never add anything
        raise BadInput(f"bad --top-up-to {format_amount(top_up_to)}: must be more than 0")
    if top_up_to is not None and below is not None and top_up_to < below:
        raise BadInput("--top-up-to must be at least --when-below, or the plan fires forever")
    on_day, at_minute = None, 0
    if every is not None:
        if every not in schedule.KINDS:
            raise BadInput(f"bad --every {every!r}: expected day, week or month")
        try:
            on_day, at_minute = schedule.parse_on(every, on), schedule.parse_at(at)
        except ValueError as e:
            raise BadInput(str(e)) from None
    elif on is not None or at is not None:
        raise BadInput("--on and --at go with --every, not --when-below")
    now = clock.now_us()
    with db.write() as conn:
        urow = user_row(conn, user)
        power_row(conn, urow["id"], user)  # a plan refills a credits power: it must exist
        plan_id = conn.execute(
            refill_plans.insert().returning(refill_plans.c.id),
            {"user_id": urow["id"], "every": every, "on_day": on_day, "at_minute": at_minute,
             "below": below, "add_amount": add, "top_up_to": top_up_to, "status": ACTIVE,
             "armed": True, "start_after": now, "created_at": now},
        ).scalar_one()
        journal.record(
            conn, at=now, kind="refill.scheduled", actor=db.actor, user_id=urow["id"],
            ref=f"plan:{plan_id}", detail={"plan": plan_id},
        )
        sync_threshold(conn, urow["id"])
    return get_plan(db, plan_id)


def get_plan(db: Db, plan_id: int) -> Plan:
    with db.read() as conn:
        rows = plan_rows(conn, plan_id=plan_id)
    if not rows:
        raise NotFound(f"no refill plan {plan_id}", code="unknown_plan")
    return plan_of(rows[0], db.default_tz, clock.now())


def set_status(db: Db, plan_id: int, status: str) -> Plan:
    """Pause, resume or cancel a plan. A resumed plan does not catch up the paused time."""
    with db.write() as conn:
        user_id = conn.execute(
            select(refill_plans.c.user_id).where(refill_plans.c.id == plan_id)).scalar()
        if user_id is not None:
            _lock_power(conn, user_id)  # first, as every writer does: see the module's doc
        row = _locked_plan(conn, plan_id)
        if row is None:
            raise NotFound(f"no refill plan {plan_id}", code="unknown_plan")
        if row["status"] == CANCELLED:
            raise Conflict(f"refill plan {plan_id} is cancelled")
        now = clock.now_us()
        values: dict[str, Any] = {"status": status}
        if status == ACTIVE and row["status"] == PAUSED:
            values["start_after"] = now  # periods due while paused are skipped, not caught up
        conn.execute(update(refill_plans).where(refill_plans.c.id == plan_id).values(**values))
        kind = {ACTIVE: "refill.resumed", PAUSED: "refill.paused", CANCELLED: "refill.cancelled"}
        journal.record(conn, at=now, kind=kind[status], actor=db.actor, user_id=row["user_id"],
                       ref=f"plan:{plan_id}", detail={"plan": plan_id, **journal.change(
                           {"status": status}, {"status": row["status"]})})
        sync_threshold(conn, row["user_id"])
    return get_plan(db, plan_id)


# -- applying ----------------------------------------------------------------------------


def _claim(conn: Connection, plan_id: int, period: int, now: int, amount: int) -> bool:
    """Take the (plan, period) key; False when another run already has it."""
    insert: Callable[[Table], postgresql.Insert | sqlite.Insert]
    # Imported here: loading the Postgres dialect costs a SQLite read command ~15 ms.
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(refill_applications).values(
        plan_id=plan_id, period=period, at=now, amount=amount
    ).on_conflict_do_nothing(index_elements=["plan_id", "period"])
    # RETURNING rather than rowcount: psycopg reports -1 for an INSERT .. ON CONFLICT here.
    return conn.execute(stmt.returning(refill_applications.c.plan_id)).first() is not None


def _lock_power(conn: Connection, user_id: int) -> RowMapping | None:
    stmt = select(powers).where(powers.c.user_id == user_id, powers.c.kind == "credits")
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return conn.execute(stmt).mappings().first()


def _locked_plan(conn: Connection, plan_id: int) -> RowMapping | None:
    """The plan as committed now, with its user's name and zone, its row locked until the
    transaction ends (on Postgres; SQLite's write transaction holds the whole database).
    A cancel or pause committed meanwhile is seen here, or waits for this transaction."""
    rows = plan_rows(conn, plan_id=plan_id, lock=True)
    return rows[0] if rows else None


def _still_due(plan: RowMapping, period: int, balance: int, default_tz: str) -> bool:
    """Whether ``period`` is due for the plan as it is now (read under its lock)."""
    if plan["status"] != ACTIVE:
        return False
    if plan["every"] is None:
        return (bool(plan["armed"]) and balance < plan["below"]
                and period == (plan["last_period"] or 0) + 1)
    if plan["last_period"] is not None and period <= plan["last_period"]:
        return False  # another run went past it
    # A resume moves start_after on: what came due while paused is skipped.
    return schedule.occurrence(rule_of(plan, default_tz), period) > clock.from_us(
        plan["start_after"])


def _amount(plan: RowMapping, balance: int) -> int:
    if plan["add_amount"] is not None:
        return int(plan["add_amount"])
    return max(plan["top_up_to"] - balance, 0)


def _out_of_range(amount: int, balance: int) -> bool:
    return amount > MAX_MILLIS or balance + amount > MAX_MILLIS


def apply(conn: Connection, seen: RowMapping, period: int, *, actor: str, label: str,
          default_tz: str = "UTC") -> Outcome | None:
    """Apply one period of a plan (``seen``: its row as read before) in the caller's
    transaction; None if the plan is no longer active, the period no longer due or already
    applied."""
    plan_id = seen["id"]
    power = _lock_power(conn, seen["user_id"])
    plan = _locked_plan(conn, plan_id)
    if power is None or plan is None or not _still_due(plan, period, power["balance"],
                                                       default_tz):
        return None
    amount = _amount(plan, power["balance"])
    skipped = OUT_OF_RANGE if _out_of_range(amount, power["balance"]) else None
    now = clock.now_us()
    if not _claim(conn, plan_id, period, now, 0 if skipped else amount):
        return None
    balance = power["balance"] if skipped else power["balance"] + amount
    values: dict[str, Any] = {"last_period": period}
    if not skipped:
        values["last_applied_at"] = now
    if plan["every"] is None:
        values["armed"] = False  # once per crossing, applied or skipped
    conn.execute(update(refill_plans).where(refill_plans.c.id == plan_id).values(**values))
    if skipped:
        journal.record(
            conn, at=now, kind="refill.skipped", actor=actor, user_id=plan["user_id"],
            power_id=power["id"], ref=f"plan:{plan_id}",
            detail={"plan": plan_id, "period": label, "reason": skipped},
        )
    elif amount:
        conn.execute(update(powers).where(powers.c.id == power["id"])
                     .values(balance=powers.c.balance + amount))
        journal.record(
            conn, at=now, kind="refill.applied", actor=actor, user_id=plan["user_id"],
            power_id=power["id"], amount=amount,
            balance_after=balance, ref=f"plan:{plan_id}",
            detail={"plan": plan_id, "period": label},
        )
    if plan["every"] is None:
        sync_threshold(conn, plan["user_id"])
    rearm(conn, plan["user_id"], balance)
    return Outcome(amount, balance, skipped)


def fire_thresholds(conn: Connection, user_id: int, balance: int, actor: str) -> int:
    """Apply the user's armed threshold plans above ``balance``; the new balance."""
    plans = conn.execute(
        select(refill_plans).where(
            refill_plans.c.user_id == user_id, refill_plans.c.below.is_not(None),
            refill_plans.c.status == ACTIVE, refill_plans.c.armed,
            refill_plans.c.below > balance,
        ).order_by(refill_plans.c.id)
    ).mappings().all()
    for plan in plans:
        period = (plan["last_period"] or 0) + 1
        done = apply(conn, plan, period, actor=actor, label=f"crossing {period}")
        if done is not None:
            balance = done.balance
    return balance


def run(db: Db, *, dry_run: bool = False) -> list[Application]:
    """Apply every due period of every active plan, each exactly once."""
    now = clock.now()
    with db.read() as conn:
        plans = plan_rows(conn, status=ACTIVE)
        balances = dict(conn.execute(select(powers.c.user_id, powers.c.balance)).all())
    results: list[Application] = []
    for plan in plans:
        if plan["user_id"] not in balances:
            continue  # no credits power: nothing to refill
        for period, label in _due(plan, db.default_tz, now, balances[plan["user_id"]]):
            done = _run_one(db, plan, period, label, dry_run, balances)
            if done is None:
                # Cancelled, paused or resumed since the plans were read (its later periods
                # are not due either), or another run is ahead: it applies the rest.
                break
            results.append(done)
    return results


def _due(plan: RowMapping, default_tz: str, now: datetime, balance: int) -> list[tuple[int, str]]:
    if plan["every"] is None:
        if plan["armed"] and balance < plan["below"]:
            period = (plan["last_period"] or 0) + 1
            return [(period, f"crossing {period}")]
        return []
    rule = rule_of(plan, default_tz)
    after = clock.from_us(plan["start_after"])
    if plan["last_period"] is not None:
        after = max(after, schedule.occurrence(rule, plan["last_period"]))
    due = schedule.due_periods(rule, after, now)
    if plan["top_up_to"] is not None:
        due = due[-1:]  # a top-up catches up once
    return [(p, schedule.period_label(plan["every"], p)) for p in due]


def _run_one(db: Db, plan: RowMapping, period: int, label: str, dry_run: bool,
             balances: dict[int, int]) -> Application | None:
    """One due period, in a transaction of its own; None when the plan is no longer active,
    the period no longer due, or another run applied it first."""
    user_id, balance = plan["user_id"], balances[plan["user_id"]]
    if dry_run:
        amount = _amount(plan, balance)
        done = Outcome(amount, balance, OUT_OF_RANGE) if _out_of_range(amount, balance) else (
            Outcome(amount, balance + amount))
    else:
        with db.write() as conn:
            found = apply(conn, plan, period, actor=db.actor, label=label,
                          default_tz=db.default_tz)
        if found is None:
            return None
        done = found
    balances[user_id] = done.balance
    return Application(plan["id"], plan["name"], label, to_decimal(done.amount),
                       to_decimal(done.balance),
                       not dry_run and done.skipped is None and done.amount > 0, done.skipped)
