"""Daily, weekly and monthly spending limits.

Spending is kept as counters of the current day, ISO week and calendar month (in the user's
time zone) on the power row, updated by the charge's own conditional UPDATE; a check never
sums the history. A counter whose key is not the current window's reads as 0 spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache

from sqlalchemy import RowMapping, select, update

from smscredits import clock, journal, schedule
from smscredits.amounts import format_amount, to_decimal
from smscredits.errors import BadInput, NotFound
from smscredits.ledger import _user_row
from smscredits.storage.engine import Db
from smscredits.storage.tables import powers, users

WINDOWS = ("day", "week", "month")
LIMIT_COLUMN = {"day": "daily_limit", "week": "weekly_limit", "month": "monthly_limit"}
REASON = {"day": "daily_limit", "week": "weekly_limit", "month": "monthly_limit"}
UNSET = object()  # "leave this limit as it is"


@lru_cache(maxsize=4096)
def _keys_at_minute(tz: str, minute: int) -> tuple[int, int, int]:
    # Every zone's offset is a whole number of minutes, so keys are constant within a minute.
    return schedule.window_keys(clock.from_us(minute * 60_000_000), tz)


def window_keys(at_us: int, tz: str) -> tuple[int, int, int]:
    """The (day, week, month) window keys of an instant in a zone."""
    return _keys_at_minute(tz, at_us // 60_000_000)


def spent_now(row: RowMapping | dict, window: str, key: int) -> int:
    return row[f"{window}_spent"] if row[f"{window}_key"] == key else 0


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
    tz: str
    windows: list[Window]


def set_limits(db: Db, user: str, changes: dict[str, int | None]) -> Limits:
    """Set (millis) or clear (None) limits; windows not in ``changes`` are left alone."""
    if not changes:
        raise BadInput("nothing to set: give --daily, --weekly and/or --monthly")
    with db.write() as conn:
        urow = _user_row(conn, user)
        values = {LIMIT_COLUMN[w]: v for w, v in changes.items()}
        row = conn.execute(
            update(powers).where(powers.c.user_id == urow["id"], powers.c.kind == "credits")
            .values(**values).returning(powers.c.id, powers.c.last_hash)
        ).first()
        if row is None:
            raise NotFound(f"user {user!r} has no credits power", code="no_power")
        journal.record(
            conn, at=clock.now_us(), kind="limits.set", actor=db.actor, user_id=urow["id"],
            power_id=row.id, prev_hash=row.last_hash,
            detail={w: format_amount(v) for w, v in changes.items()},
        )
    return show_limits(db, user)


def show_limits(db: Db, user: str, at: datetime | None = None) -> Limits:
    at_us = clock.to_us(at or clock.now())
    with db.read() as conn:
        row = conn.execute(
            select(powers, users.c.tz).join(users, users.c.id == powers.c.user_id)
            .where(users.c.name == user, powers.c.kind == "credits")
        ).mappings().first()
        if row is None:
            _user_row(conn, user)
            raise NotFound(f"user {user!r} has no credits power", code="no_power")
    tz = row["tz"] or db.default_tz
    return Limits(user, tz, windows_of(row, tz, at_us))


def windows_of(row: RowMapping | dict, tz: str, at_us: int) -> list[Window]:
    keys = window_keys(at_us, tz)
    result = []
    for window, key in zip(WINDOWS, keys, strict=True):
        limit = row[LIMIT_COLUMN[window]]
        spent = spent_now(row, window, key)
        result.append(Window(
            window=window,
            limit=None if limit is None else to_decimal(limit),
            spent=to_decimal(spent),
            remaining=None if limit is None else to_decimal(max(limit - spent, 0)),
            resets_at=clock.iso(clock.to_us(schedule.window_reset(window, key, tz))) or "",
        ))
    return result
