"""Refunds by hand (``smscredits refund``): a charged or settled message's credits given
back once, with the windows it was counted in while they are current. The move itself is
the batch's (``charging.acts``), as in a stream; this is its one-call form with errors."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func, select

from smscredits.charging.charger import Charger
from smscredits.errors import BadInput, Conflict, NotFound, SmsCreditsError
from smscredits.storage.engine import Db
from smscredits.storage.tables import events


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
    with Charger(db) as charger:
        r = charger.refund(msg_id, note=note)
    if r.status != "refunded":
        raise error_of(r.reason or "", r.message or "")
    with db.read() as conn:
        event_id = conn.execute(select(func.max(events.c.id)).where(
            events.c.ref == msg_id, events.c.kind == "message.refunded")).scalar_one()
    assert r.cost is not None and r.balance is not None and r.user is not None
    return Refund(msg_id, r.user, r.cost, r.balance, event_id)


_NOT_FOUND = frozenset({"unknown_message"})
_BAD = frozenset({"bad_input", "amount_out_of_range", "unknown_status"})


def error_of(reason: str, message: str) -> SmsCreditsError:
    """An act's error result as the exception a one-call command raises (its exit code)."""
    kind = NotFound if reason in _NOT_FOUND else BadInput if reason in _BAD else Conflict
    return kind(message, code=reason)
