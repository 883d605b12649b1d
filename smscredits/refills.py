"""Automatic refill plans: periodic (every day/week/month) and threshold ("when below N").

Exactly once: each application inserts its key (plan, period) into ``refill_applications``
with ON CONFLICT DO NOTHING in the same transaction as the balance change and its event, so
a second run, an overlapping run on another host, or a re-run after a crash finds the key
taken and applies nothing. Missed periods are caught up: ``--add`` once per missed period,
``--top-up-to`` once (for the latest).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, RowMapping, func, select, update

from smscredits import clock, journal, schedule
from smscredits.amounts import format_amount, to_decimal
from smscredits.errors import BadInput, Conflict, NotFound
from smscredits.ledger import _power_row, _user_row

# Plans as shown (and list_plans) are in reads, importable without SQLAlchemy.
from smscredits.reads import ACTIVE, CANCELLED, PAUSED, Plan, plan_of, rule_of
from smscredits.reads import list_plans as list_plans
from smscredits.storage.engine import Db
from smscredits.storage.queries import plan_rows_where
from smscredits.storage.tables import powers, refill_applications, refill_plans


@dataclass(frozen=True, slots=True)
class Application:
    plan: int
    user: str
    period: str
    amount: Decimal
    balance: Decimal | None
    applied: bool  # False in a dry run, or when a top-up found the balance at target


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
    if add is not None and add <= 0:
        raise BadInput(f"bad --add {format_amount(add)}: must be more than 0")
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
        urow = _user_row(conn, user)
        _power_row(conn, urow["id"], user)  # a plan refills a credits power: it must exist
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


def sync_threshold(conn: Connection, user_id: int) -> None:
    """Keep ``powers.refill_below`` = the highest threshold of the user's armed plans."""
    highest = (
        select(func.max(refill_plans.c.below))
        .where(refill_plans.c.user_id == user_id, refill_plans.c.below.is_not(None),
               refill_plans.c.status == ACTIVE, refill_plans.c.armed)
        .scalar_subquery()
    )
    conn.execute(update(powers).where(powers.c.user_id == user_id).values(refill_below=highest))


def rearm(conn: Connection, user_id: int, balance: int) -> None:
    """After a balance rose: threshold plans whose threshold it reached fire again later."""
    done = conn.execute(
        update(refill_plans)
        .where(refill_plans.c.user_id == user_id, refill_plans.c.below.is_not(None),
               refill_plans.c.below <= balance, refill_plans.c.armed.is_(False))
        .values(armed=True)
    ).rowcount
    if done:
        sync_threshold(conn, user_id)


def get_plan(db: Db, plan_id: int) -> Plan:
    with db.read() as conn:
        rows = plan_rows_where(conn, refill_plans.c.id == plan_id)
    if not rows:
        raise NotFound(f"no refill plan {plan_id}", code="unknown_plan")
    return plan_of(rows[0], db.default_tz, clock.now())


def set_status(db: Db, plan_id: int, status: str) -> Plan:
    """Pause, resume or cancel a plan. A resumed plan does not catch up the paused time."""
    with db.write() as conn:
        rows = plan_rows_where(conn, refill_plans.c.id == plan_id)
        if not rows:
            raise NotFound(f"no refill plan {plan_id}", code="unknown_plan")
        row = rows[0]
        if row["status"] == CANCELLED:
            raise Conflict(f"refill plan {plan_id} is cancelled")
        now = clock.now_us()
        values: dict[str, Any] = {"status": status}
        if status == ACTIVE and row["status"] == PAUSED:
            values["start_after"] = now  # periods due while paused are skipped, not caught up
        conn.execute(update(refill_plans).where(refill_plans.c.id == plan_id).values(**values))
        kind = {ACTIVE: "refill.resumed", PAUSED: "refill.paused", CANCELLED: "refill.cancelled"}
        journal.record(conn, at=now, kind=kind[status], actor=db.actor, user_id=row["user_id"],
                       ref=f"plan:{plan_id}", detail={"plan": plan_id})
        sync_threshold(conn, row["user_id"])
    return get_plan(db, plan_id)


# -- applying ----------------------------------------------------------------------------


def _claim(conn: Connection, plan_id: int, period: int, now: int, amount: int) -> bool:
    """Take the (plan, period) key; False when another run already has it."""
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


def apply(conn: Connection, plan: RowMapping, period: int, *, actor: str,
          label: str) -> tuple[int, int] | None:
    """Apply one period of a plan in the caller's transaction: (amount, balance after), or None
    if this period was already applied."""
    power = _lock_power(conn, plan["user_id"])
    if power is None:
        return None
    if plan["add_amount"] is not None:
        amount = plan["add_amount"]
    else:
        amount = max(plan["top_up_to"] - power["balance"], 0)
    now = clock.now_us()
    if not _claim(conn, plan["id"], period, now, amount):
        return None
    balance = power["balance"] + amount
    values: dict[str, Any] = {"last_period": period, "last_applied_at": now}
    if plan["every"] is None:
        values["armed"] = False
    conn.execute(update(refill_plans).where(refill_plans.c.id == plan["id"]).values(**values))
    if amount:
        conn.execute(update(powers).where(powers.c.id == power["id"])
                     .values(balance=powers.c.balance + amount))
        journal.record(
            conn, at=now, kind="refill.applied", actor=actor, user_id=plan["user_id"],
            power_id=power["id"], amount=amount,
            balance_after=balance, ref=f"plan:{plan['id']}",
            detail={"plan": plan["id"], "period": label},
        )
    if plan["every"] is None:
        sync_threshold(conn, plan["user_id"])
    rearm(conn, plan["user_id"], balance)
    return amount, balance


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
            balance = done[1]
    return balance


def period_label(every: str, period: int) -> str:
    from smscredits.usage import _label

    return _label(every, period)


def run(db: Db, *, dry_run: bool = False) -> list[Application]:
    """Apply every due period of every active plan, each exactly once."""
    now = clock.now()
    with db.read() as conn:
        plans = plan_rows_where(conn, refill_plans.c.status == ACTIVE)
        balances = dict(conn.execute(select(powers.c.user_id, powers.c.balance)).all())
    results: list[Application] = []
    for plan in plans:
        if plan["user_id"] not in balances:
            continue  # no credits power: nothing to refill
        for period, label in _due(plan, db.default_tz, now, balances[plan["user_id"]]):
            done = _run_one(db, plan, period, label, dry_run, balances)
            if done is not None:
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
    return [(p, period_label(plan["every"], p)) for p in due]


def _run_one(db: Db, plan: RowMapping, period: int, label: str, dry_run: bool,
             balances: dict[int, int]) -> Application | None:
    """One due period; None when another run applied it first."""
    balance = balances[plan["user_id"]]
    if dry_run:
        amount = plan["add_amount"] if plan["add_amount"] is not None else max(
            plan["top_up_to"] - balance, 0)
        balances[plan["user_id"]] = balance + amount
        return Application(plan["id"], plan["name"], label, to_decimal(amount),
                           to_decimal(balance + amount), False)
    with db.write() as conn:
        done = apply(conn, plan, period, actor=db.actor, label=label)
    if done is None:
        return None
    balances[plan["user_id"]] = done[1]
    return Application(plan["id"], plan["name"], label, to_decimal(done[0]),
                       to_decimal(done[1]), done[0] > 0)
