"""Refunds: a charged message's credits given back once, with the windows it was counted
in while they are current (``limits.moved``)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import (
    update,
)

from smscredits import clock, journal, limits
from smscredits.amounts import MAX_MILLIS, format_amount, to_decimal
from smscredits.errors import (
    BadInput,
    Conflict,
    NotFound,
)
from smscredits.storage import charge_sql
from smscredits.storage.engine import (
    Db,
)
from smscredits.storage.tables import messages, powers
from smscredits.thresholds import rearm


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    user: str
    amount: Decimal
    balance: Decimal
    event_id: int


def refund(db: Db, msg_id: str, *, note: str | None = None) -> Refund:
    """Give a charged message's credits back, once, and free the windows it was charged in
    while they are current."""
    with db.write() as conn:
        msg = charge_sql.message_for_update(conn, msg_id)
        if msg is None or msg["status"] == "rejected":
            raise NotFound(f"no charged message {msg_id!r}", code="unknown_message")
        if msg["status"] == "refunded":
            raise Conflict(f"message {msg_id!r} was already refunded", code="already_refunded")
        if msg["power_id"] is None:
            raise Conflict(f"message {msg_id!r} was not metered: nothing to refund",
                           code="not_metered")
        cost = msg["cost"]
        power = charge_sql.power_for_update(conn, msg["power_id"])
        if power is None:
            raise Conflict(f"the credits power of message {msg_id!r} was deleted",
                           code="no_power")
        balance = power["balance"] + cost
        if balance > MAX_MILLIS:
            raise BadInput(f"refund of {msg_id!r} refused: the balance after it, "
                           f"{format_amount(balance)}, would be above "
                           f"{format_amount(MAX_MILLIS)}", code="amount_out_of_range")
        # The message's windows in the user's zone now: after `user set-tz` the counters
        # hold the new zone's windows (the keys stored with the message are the old zone's).
        keys = limits.keys_at(msg["at"], power["tz"] or db.default_tz)
        spent = limits.moved((power["day_key"], power["week_key"], power["month_key"]),
                             (power["day_spent"], power["week_spent"], power["month_spent"]),
                             keys, -cost)
        conn.execute(update(powers).where(powers.c.id == power["id"]).values(
            balance=balance, day_spent=spent[0], week_spent=spent[1], month_spent=spent[2]))
        rearm(conn, msg["user_id"], balance)
        conn.execute(update(messages).where(messages.c.id == msg_id).values(status="refunded"))
        event_id = journal.record(
            conn, at=clock.now_us(), kind="message.refunded", actor=db.actor,
            user_id=msg["user_id"], power_id=msg["power_id"], amount=cost,
            balance_after=balance, ref=msg_id, note=note,
        )
    return Refund(msg_id, msg["name"], to_decimal(cost), to_decimal(balance), event_id)
