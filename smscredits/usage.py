"""Spend and message counts per day, week, month or country, from the message records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import func, select, text

from smscredits.amounts import to_decimal
from smscredits.errors import BadInput
from smscredits.ledger import _user_row
from smscredits.storage import blocks, queries
from smscredits.storage.engine import Db
from smscredits.storage.tables import events, messages

BY = ("day", "week", "month", "country")
# The one event each sent message has.
MESSAGE_EVENTS = ("message.charged", "message.unmetered")


@dataclass(frozen=True, slots=True)
class UsageRow:
    period: str
    messages: int
    parts: int
    spent: Decimal
    refunded: int


def _label(by: str, key: int | str | None) -> str:
    if key is None:
        return "-"
    if by == "country":
        return str(key)
    if by == "month":
        year, month = divmod(int(key), 12)
        return f"{year}-{month + 1:02d}"
    day = date.fromordinal(int(key))
    if by == "week":
        iso = day.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    return day.isoformat()


def usage(db: Db, user: str, by: str = "day", limit: int = 31) -> list[UsageRow]:
    """Newest periods first; refunded messages count as messages but not as spend."""
    if by not in BY:
        raise BadInput(f"bad --by {by!r}: expected one of {', '.join(BY)}")
    col = messages.c.country if by == "country" else messages.c[f"{by}_key"]
    charged = messages.c.status == "charged"
    # A user's messages are found through their events (the account index, every block):
    # each charged or unmetered message has exactly one such event; a rejected one none.
    stmt = (
        select(
            col.label("k"),
            func.count().label("n"),
            func.sum(messages.c.parts).label("parts"),
            func.sum(func.coalesce(messages.c.cost, 0)).filter(charged).label("spent"),
            func.count().filter(messages.c.status == "refunded").label("refunded"),
        )
        .select_from(events.join(messages, messages.c.id == events.c.ref))
        .where(events.c.kind.in_(MESSAGE_EVENTS), messages.c.status != "rejected")
        .group_by(col)
        .order_by(func.sum(messages.c.cost).desc() if by == "country" else col.desc())
        .limit(limit)
    )
    with db.read() as conn:
        uid = _user_row(conn, user)["id"]
        every_block = text(blocks.up_to(queries.top_block(conn)))
        rows = conn.execute(stmt.where(every_block, events.c.user_id == uid,
                                       messages.c.user_id == uid)).all()
    return [UsageRow(_label(by, r.k), r.n, int(r.parts or 0), to_decimal(int(r.spent or 0)),
                     r.refunded) for r in rows]
