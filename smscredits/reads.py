"""The read side: the credit log and journal, accounts, limit windows and refill plans.

Everything here is plain Python over plain rows (mappings keyed by column name), so the same
functions serve both storage paths: SQLAlchemy Core (``storage.queries``) for every database,
and the stdlib ``sqlite3`` (``storage.lite``) for read commands on an existing SQLite file,
which then start without importing SQLAlchemy at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from smscredits import clock, limits
from smscredits.amounts import format_amount, to_decimal
from smscredits.errors import BadInput, NotFound
from smscredits.limits import LIMIT_COLUMN, WINDOWS

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from types import ModuleType

    from smscredits.parts import Parts
    from smscredits.schedule import Rule

# Read by column name; keyed by Any because SQLAlchemy's RowMapping also takes Column keys.
Row = Mapping[Any, Any]

ACTIVE, PAUSED, CANCELLED = "active", "paused", "cancelled"


class Source(Protocol):
    """An open database: ``storage.engine.Db`` or ``storage.lite.LiteDb``."""

    default_tz: str

    def read(self) -> AbstractContextManager[Any]: ...


def _queries(db: Source) -> ModuleType:
    """The module that runs the read queries on this handle's connections."""
    from smscredits.storage import lite

    if isinstance(db, lite.LiteDb):
        return lite
    from smscredits.storage import queries  # SQLAlchemy: only for the Core path

    return queries


# -- errors both paths raise ---------------------------------------------------------------


def unknown_user(name: str) -> NotFound:
    return NotFound(f"unknown user {name!r}", code="unknown_user")


def no_power(name: str, kind: str = "credits") -> NotFound:
    return NotFound(f"user {name!r} has no {kind} power", code="no_power")


def _user_id(q: ModuleType, conn: Any, name: str) -> int:
    row = q.user_row(conn, name)
    if row is None:
        raise unknown_user(name)
    return int(row["id"])


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    user_id: int
    power_id: int
    kind: str
    balance: Decimal
    held: Decimal  # reserved by open holds (see ``holds``)
    overdraft: Decimal | None  # None: unlimited
    available: Decimal | None  # balance - held + overdraft; None: unlimited
    disabled: bool
    tz: str


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    at: str
    user: str | None
    kind: str
    amount: Decimal | None
    balance_after: Decimal | None
    ref: str | None
    note: str | None
    actor: str | None
    # What the event says beyond its amount: a message's number and parts, a change's new
    # values and, under "old", the values they replaced (amounts as exact text).
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Window:
    window: str  # day | week | month
    limit: Decimal | None
    spent: Decimal
    remaining: Decimal | None
    resets_at: str


@dataclass(frozen=True, slots=True)
class Limits:
    user: str
    user_id: int
    tz: str
    windows: list[Window]


@dataclass(frozen=True, slots=True)
class Plan:
    id: int
    user: str
    user_id: int
    rule: str  # in words
    action: str  # "add 10" / "top up to 50"
    status: str
    next_due_at: str | None  # ISO 8601 UTC, like every instant in JSON; tables show local time
    last_applied_at: str | None
    armed: bool | None  # threshold plans only
    tz: str  # the zone of the plan's rule (its user's)


def dec(millis: int | None) -> Decimal | None:
    return None if millis is None else to_decimal(millis)


def account_of(row: Row, default_tz: str) -> Account:
    """An account from a powers row joined with its user's name, disabled flag and zone."""
    od = row["overdraft"]
    return Account(
        user=row["name"],
        user_id=row["user_id"],
        power_id=row["id"],
        kind=row["kind"],
        balance=to_decimal(row["balance"]),
        held=to_decimal(row["held"]),
        overdraft=dec(od),
        available=None if od is None else to_decimal(row["balance"] - row["held"] + od),
        disabled=bool(row["disabled"]),  # sqlite3 gives the stored 0/1
        tz=row["tz"] or default_tz,
    )


def event_of(row: Row) -> EventRow:
    """An event from an events row joined with its user's name."""
    return EventRow(
        id=row["id"], at=clock.iso(row["at"]) or "", user=row["name"], kind=row["kind"],
        amount=dec(row["amount"]), balance_after=dec(row["balance_after"]), ref=row["ref"],
        note=row["note"], actor=row["actor"], detail=_detail(row["detail"]),
    )


def _detail(text: str | None) -> dict[str, Any] | None:
    """An event's stored detail, or what it holds when that is not a JSON object (an edited
    row: shown as it is rather than refused, ``verify`` names it)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"text": text}


# -- limit windows -------------------------------------------------------------------------


def windows_of(row: Row, tz: str, at_us: int) -> list[Window]:
    # A reader's clock may be behind the writer's that opened the account's newest window.
    keys = limits.keys_at(max(at_us, row["last_at"]), tz)
    held = (row["day_key"], row["week_key"], row["month_key"])
    spent = limits.spent_in(held, (row["day_spent"], row["week_spent"], row["month_spent"]),
                            keys)
    result = []
    for window, key, now in zip(WINDOWS, keys, spent, strict=True):
        limit = row[LIMIT_COLUMN[window]]
        result.append(Window(
            window=window,
            limit=None if limit is None else to_decimal(limit),
            spent=to_decimal(now),
            remaining=None if limit is None else to_decimal(max(limit - now, 0)),
            resets_at=clock.iso(limits.ends_at(window, key, tz)) or "",
        ))
    return result


# -- refill plans --------------------------------------------------------------------------


def rule_of(row: Row, default_tz: str) -> Rule:
    from smscredits import schedule

    return schedule.Rule(row["every"], row["on_day"], row["at_minute"], row["tz"] or default_tz)


def plan_of(row: Row, default_tz: str, now: datetime) -> Plan:
    """A plan from a refill_plans row joined with its user's name and zone."""
    from smscredits import schedule

    action = (f"add {format_amount(row['add_amount'])}" if row["add_amount"] is not None
              else f"top up to {format_amount(row['top_up_to'])}")
    tz = row["tz"] or default_tz
    if row["every"] is None:
        rule_text, due = f"when the balance drops below {format_amount(row['below'])}", None
    else:
        rule = rule_of(row, default_tz)
        rule_text = schedule.describe(rule)
        due = None if row["status"] != ACTIVE else clock.iso(
            clock.to_us(schedule.next_due(rule, now)))
    return Plan(
        id=row["id"], user=row["name"], user_id=row["user_id"], rule=rule_text, action=action,
        status=row["status"],
        next_due_at=due, last_applied_at=clock.iso(row["last_applied_at"]),
        armed=bool(row["armed"]) if row["every"] is None else None, tz=tz,
    )


# -- queries -------------------------------------------------------------------------------


def query_events(
    db: Source,
    user: str | None = None,
    *,
    since: int | None = None,
    until: int | None = None,
    kinds: list[str] | None = None,
    before: int | None = None,
    limit: int = 50,
    credit_only: bool = False,
) -> list[EventRow]:
    """Events newest first; page on with ``before`` = the last id shown (keyset paging)."""
    if limit < 1:
        raise BadInput(f"bad limit {limit}: must be at least 1")
    q = _queries(db)
    with db.read() as conn:
        user_id = None if user is None else _user_id(q, conn, user)
        rows = q.event_rows(conn, user_id=user_id, since=since, until=until, kinds=kinds or None,
                            before=before, limit=limit, credit_only=credit_only)
    return [event_of(r) for r in rows]


def get_account(db: Source, user: str, kind: str = "credits") -> Account:
    q = _queries(db)
    with db.read() as conn:
        rows = q.account_rows(conn, user, kind)
        if not rows:
            _user_id(q, conn, user)  # unknown user is its own error
            raise no_power(user, kind)
    return account_of(rows[0], db.default_tz)


def list_accounts(db: Source, user: str | None = None) -> list[Account]:
    q = _queries(db)
    with db.read() as conn:
        if user is not None:
            _user_id(q, conn, user)
        rows = q.account_rows(conn, user, None)
    return [account_of(r, db.default_tz) for r in rows]


def accounts_with_windows(db: Source, at: datetime | None = None
                          ) -> list[tuple[Account, list[Window]]]:
    """Every credits account with its limit windows as they stand at ``at``: one query."""
    at_us = clock.to_us(at or clock.now())
    q = _queries(db)
    with db.read() as conn:
        rows = q.account_rows(conn, None, "credits")
    found = []
    for row in rows:
        account = account_of(row, db.default_tz)
        found.append((account, windows_of(row, account.tz, at_us)))
    return found


@dataclass(frozen=True, slots=True)
class UserWindow:
    """One limit window of one user, as the gateway-wide view lists it."""

    user: str
    user_id: int
    tz: str
    window: str
    limit: Decimal | None
    spent: Decimal
    remaining: Decimal | None
    resets_at: str


def every_window(db: Source, at: datetime | None = None) -> list[UserWindow]:
    """Every credits account's windows, least left first; windows without a limit last (by
    what they spent, most first), then by user name and day, week, month."""
    found = [
        UserWindow(account.user, account.user_id, account.tz, w.window, w.limit, w.spent,
                   w.remaining, w.resets_at)
        for account, windows in accounts_with_windows(db, at) for w in windows
    ]

    def order(w: UserWindow) -> tuple[Any, ...]:
        unlimited = w.remaining is None
        return (unlimited, -w.spent if unlimited else w.remaining, w.user,
                WINDOWS.index(w.window))

    return sorted(found, key=order)


def show_limits(db: Source, user: str, at: datetime | None = None) -> Limits:
    at_us = clock.to_us(at or clock.now())
    q = _queries(db)
    with db.read() as conn:
        rows = q.account_rows(conn, user, "credits")
        if not rows:
            _user_id(q, conn, user)
            raise no_power(user)
    tz = rows[0]["tz"] or db.default_tz
    return Limits(user, rows[0]["user_id"], tz, windows_of(rows[0], tz, at_us))


def list_plans(db: Source, user: str | None = None, *, all_: bool = False) -> list[Plan]:
    q = _queries(db)
    with db.read() as conn:
        user_id = None if user is None else _user_id(q, conn, user)
        rows = q.plan_rows(conn, user_id=user_id, all_=all_)
    now = clock.now()
    return [plan_of(r, db.default_tz, now) for r in rows]


# -- holds ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenHold:
    id: str
    user: str
    user_id: int | None
    to: str
    held: Decimal
    parts: int
    at: str
    expires_at: str | None


def open_holds(db: Any, user: str | None = None, *, before: int | None = None
               ) -> list[OpenHold]:
    """Messages still held, oldest first: of one user, held before ``before`` (µs)."""
    from sqlalchemy import select

    from smscredits.storage.tables import messages, users

    stmt = (select(messages, users.c.name)
            .outerjoin(users, users.c.id == messages.c.user_id)
            .where(messages.c.status == "held").order_by(messages.c.at, messages.c.id))
    if before is not None:
        stmt = stmt.where(messages.c.at < before)
    with db.read() as conn:
        if user is not None:
            _user_id(_queries(db), conn, user)  # an unknown user is its own error
            stmt = stmt.where(users.c.name == user)
        rows = conn.execute(stmt).mappings().all()
    return [OpenHold(r["id"], r["name"] or r["user_name"], r["user_id"], r["to_number"],
                     to_decimal(r["cost"] or 0), r["parts"], clock.iso(r["at"]) or "",
                     clock.iso(r["expires_at"])) for r in rows]


def quote(db: Source, to: str, parts: Parts, *, counted: bool, user: str | None = None
          ) -> dict[str, Any]:
    """What a message of ``parts`` to ``to`` would cost (``price quote``): its price rule,
    the rules that nearly matched and, for ``user``, the limits left. ``counted``: the parts
    were counted from a text (not given), so the encoding and units are known."""
    from smscredits.pricing import PriceBook, Rejected, destination, kind_of

    with db.read() as conn:
        book = PriceBook.load(conn)
    try:
        q = book.quote(to, parts)
    except Rejected as r:
        error = NotFound if r.reason == "no_price" else BadInput
        raise error(r.message, code=r.reason) from None
    data: dict[str, Any] = {
        "to": q.to, "country": q.country,
        "encoding": parts.encoding if counted else None,
        "units": parts.units if counted else None, "parts": q.parts,
        "rule": q.rule, "price": to_decimal(q.price), "cost": to_decimal(q.cost),
        "matched": {"rule": q.rule, "kind": kind_of(q.rule), "country": q.country},
        "near_misses": book.near_misses(destination(q.to), q.rule),
    }
    if user is not None:
        data["limits"] = show_limits(db, user).windows
    return data
