"""Spend and message counts per day, week, month, country or user, from the message records.

Periods are the calendar days, ISO weeks and months of one zone: the user's for one user,
the configured default zone for the whole gateway. They are counted from each message's
instant (not from the window keys stored with it, which are the zone's of the charge
time), so a period starts and ends at its local midnight even across a DST change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text

from smscredits import clock, limits, schedule
from smscredits.amounts import to_decimal
from smscredits.errors import BadInput
from smscredits.ledger import user_row
from smscredits.storage import blocks, queries
from smscredits.storage.engine import Db
from smscredits.storage.tables import events, messages, users

BY = ("day", "week", "month", "country", "user")
PERIODS = ("day", "week", "month")
# The one event each sent message has.
MESSAGE_EVENTS = ("message.charged", "message.unmetered", "message.held")
MINUTE = 60_000_000  # µs; every zone's offset is whole minutes, so is every period boundary


@dataclass(frozen=True, slots=True)
class UsageRow:
    period: str  # 2026-11-25, 2026-W48, 2026-11, a country code or a user name
    messages: int
    parts: int
    spent: Decimal  # charged, settled and still held
    refunded: int
    # Holds: still held, settled, voided, and of those two how many by expiry.
    held: int
    settled: int
    voided: int
    expired: int
    since: str | None  # ISO UTC: the period's start (by country/user: the asked range)
    until: str | None  # ISO UTC: its end, exclusive


@dataclass(slots=True)
class _Sums:
    messages: int = 0
    parts: int = 0
    spent: int = 0
    refunded: int = 0
    held: int = 0
    settled: int = 0
    voided: int = 0
    expired: int = 0

    def add(self, row: Any) -> None:
        self.messages += row.n
        self.parts += int(row.parts or 0)
        self.spent += int(row.spent or 0)
        self.refunded += row.refunded
        self.held += row.held
        self.settled += row.settled
        self.voided += row.voided
        self.expired += row.expired


def usage(db: Db, user: str | None = None, by: str = "day", limit: int = 31, *,
          since: datetime | None = None, until: datetime | None = None) -> list[UsageRow]:
    """Newest periods first (countries and users: most spent first); refunded messages count
    as messages but not as spend. Without ``user``: the whole gateway."""
    if by not in BY:
        raise BadInput(f"bad --by {by!r}: expected one of {', '.join(BY)}")
    if by == "user" and user is not None:
        raise BadInput("--by user needs no USER: it lists every user")
    if limit < 1:
        raise BadInput(f"bad limit {limit}: must be at least 1")
    if by in PERIODS:
        col = messages.c.at // MINUTE  # grouped to periods below, in the zone
    else:
        col = messages.c.country if by == "country" else messages.c.user_id
    stmt = _grouped(col)
    if since is not None:
        stmt = stmt.where(messages.c.at >= clock.to_us(since))
    if until is not None:
        stmt = stmt.where(messages.c.at < clock.to_us(until))
    if by not in PERIODS:
        stmt = stmt.order_by(func.sum(messages.c.cost).desc(), col).limit(limit)
    with db.read() as conn:
        if user is None:
            tz = db.default_tz
            rows = conn.execute(stmt.select_from(messages)).all()
        else:
            urow = user_row(conn, user)
            tz = urow["tz"] or db.default_tz
            rows = _of_user(conn, stmt, urow["id"])
        names = _names(conn, [r.k for r in rows]) if by == "user" else {}
    if by in PERIODS:
        return _periods(rows, by, tz, limit)
    lo = None if since is None else clock.iso(clock.to_us(since))
    hi = None if until is None else clock.iso(clock.to_us(until))
    return [_row(names.get(r.k, "-") if by == "user" else r.k or "-", _one(r), lo, hi)
            for r in rows]


def _grouped(col: Any) -> Any:
    # A hold counts in spend while it holds, at what it holds; a void gives it back.
    spent = messages.c.status.in_(("charged", "held", "settled"))
    status = messages.c.status
    return (
        select(
            col.label("k"),
            func.count().label("n"),
            func.sum(messages.c.parts).label("parts"),
            func.sum(func.coalesce(messages.c.cost, 0)).filter(spent).label("spent"),
            func.count().filter(status == "refunded").label("refunded"),
            func.count().filter(status == "held").label("held"),
            func.count().filter(status == "settled").label("settled"),
            func.count().filter(status == "voided").label("voided"),
            func.count().filter(messages.c.reason == "expired").label("expired"),
        )
        .where(messages.c.status != "rejected")
        .group_by(col)
    )


def _of_user(conn: Any, stmt: Any, user_id: int) -> list[Any]:
    """A user's messages are found through their events (the account index, every block):
    each charged or unmetered message has exactly one such event; a rejected one none."""
    every_block = text(blocks.up_to(queries.top_block(conn)))
    return list(conn.execute(
        stmt.select_from(events.join(messages, messages.c.id == events.c.ref))
        .where(events.c.kind.in_(MESSAGE_EVENTS), every_block, events.c.user_id == user_id,
               messages.c.user_id == user_id)
    ).all())


def _names(conn: Any, user_ids: list[Any]) -> dict[Any, str]:
    """Current names; a deleted user's messages keep the name they were sent under."""
    ids = [i for i in user_ids if i is not None]
    found = dict(conn.execute(select(users.c.id, users.c.name).where(users.c.id.in_(ids))).all())
    missing = [i for i in ids if i not in found]
    if missing:
        found.update(conn.execute(
            select(messages.c.user_id, func.max(messages.c.user_name))
            .where(messages.c.user_id.in_(missing)).group_by(messages.c.user_id)).all())
    return found


def _one(row: Any) -> _Sums:
    sums = _Sums()
    sums.add(row)
    return sums


def _row(label: str, sums: _Sums, since: str | None, until: str | None) -> UsageRow:
    return UsageRow(label, sums.messages, sums.parts, to_decimal(sums.spent), sums.refunded,
                    sums.held, sums.settled, sums.voided, sums.expired, since, until)


def _periods(rows: Iterable[Any], by: str, tz: str, limit: int) -> list[UsageRow]:
    """Minutes summed into the zone's periods, newest first."""
    index = PERIODS.index(by)
    sums: dict[int, _Sums] = {}
    for row in rows:
        key = limits.keys_at(int(row.k) * MINUTE, tz)[index]
        sums.setdefault(key, _Sums()).add(row)
    return [
        _row(schedule.period_label(by, key), sums[key],
             clock.iso(limits.starts_at(by, key, tz)), clock.iso(limits.ends_at(by, key, tz)))
        for key in sorted(sums, reverse=True)[:limit]
    ]
