"""Acts on a recorded message, inside a charge batch: settle, void, refund, a delivery
report, expiry (the rules are ``holds``'s).

Each act reads the message as the batch holds it (recorded before, or made earlier in the
same batch) and its account's power row, held by the batch: two acts on one message, in
one batch or in two racing ones, see each other's outcome, so a hold is settled or released
once. An act that finds its work already done answers with the message as it stands
(``replayed``); an act that cannot apply is an error naming why.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from smscredits import clock, holds, journal
from smscredits.amounts import MAX_MILLIS, format_amount, to_decimal
from smscredits.charging.model import ChargeResult, MessageOp
from smscredits.errors import BadInput
from smscredits.limits import keys_at
from smscredits.validate import is_message_id

if TYPE_CHECKING:
    from smscredits.charging.batch import Batch
    from smscredits.charging.rule import HeldPower

FINAL = frozenset({"settled", "voided", "refunded"})


def act(batch: Batch, op: MessageOp) -> ChargeResult:
    """One act: its checks, then the move it makes."""
    if type(op.id) is not str or not is_message_id(op.id):
        return _error(op, "bad_input", f"bad message id {str(op.id)[:40]!r}: 1-128 printable "
                      "ASCII characters, no spaces")
    row = batch.message(op.id)
    if row is None or (row["status"] == "rejected" and op.op != "dlr"):
        what = "charged " if op.op == "refund" else "held " if op.op != "dlr" else ""
        return _error(op, "unknown_message", f"no {what}message {op.id!r}")
    if op.user is not None and op.user != row["user_name"]:
        return _error(op, "conflict", f"message {op.id!r} is not {op.user!r}'s")
    kind = op.op
    if kind == "dlr":
        try:
            kind = holds.dlr_action(batch.rules(), op.source or "", op.status or "")
        except BadInput as e:
            return _error(op, e.code, e.message)
        if row["status"] != "held":
            # A report twice, or late: the message stays as it is (only `void` refunds).
            return _as_it_stands(row, op, replayed=row["status"] in FINAL)
        if kind == holds.IGNORE:
            return _as_it_stands(row, op, replayed=False)
    return _ACTS[kind](batch, op, row)


def _settle(batch: Batch, op: MessageOp, row: dict[str, Any]) -> ChargeResult:
    status = row["status"]
    if status in FINAL:
        return _as_it_stands(row, op, replayed=True)
    if status != "held":
        return _error(op, "not_held", f"message {op.id!r} was charged, not held: nothing "
                      "to settle")
    parts = row["parts"] if op.parts is None else op.parts
    if type(parts) is not int or not 1 <= parts <= 255:
        return _error(op, "bad_input", f"bad parts {parts!r}: must be 1-255")
    return _end(batch, op, row, "settled", cost=(row["price"] or 0) * parts, parts=parts)


def _void(batch: Batch, op: MessageOp, row: dict[str, Any]) -> ChargeResult:
    status = row["status"]
    if status == "settled" and op.op == "void":
        if not op.refunds:
            return _error(op, "already_settled", f"message {op.id!r} was settled: only an "
                          "admin may refund it")
        if batch.rules().void_settled == "refuse":
            return _error(op, "already_settled", f"message {op.id!r} was settled: refund it, "
                          "or set void_settled to refund")
        return _refund(batch, op, row)
    if status in FINAL:
        return _as_it_stands(row, op, replayed=True)
    if status != "held":
        return _error(op, "not_held", f"message {op.id!r} was charged, not held: refund it "
                      "instead")
    return _end(batch, op, row, "voided", cost=0, parts=row["parts"])


def _expire(batch: Batch, op: MessageOp, row: dict[str, Any]) -> ChargeResult:
    due = (row["expires_at"] or 0) <= batch.now or (op.before is not None
                                                    and row["at"] <= op.before)
    if row["status"] != "held" or not due:
        return _as_it_stands(row, op, replayed=False)  # settled meanwhile, or not due
    settle = batch.rules().expiry == holds.SETTLE
    return _end(batch, op, row, "settled" if settle else "voided",
                cost=row["cost"] if settle else 0, parts=row["parts"], expired=True)


def _refund(batch: Batch, op: MessageOp, row: dict[str, Any]) -> ChargeResult:
    status = row["status"]
    if status == "refunded":
        return _error(op, "already_refunded", f"message {op.id!r} was already refunded")
    if status in ("held", "voided"):
        return _error(op, "not_held" if status == "voided" else "still_held",
                      f"message {op.id!r} is {status}, nothing was taken: "
                      + ("void it to release the hold" if status == "held"
                         else "nothing to refund"))
    if row["power_id"] is None:
        return _error(op, "not_metered", f"message {op.id!r} was not metered: nothing to "
                      "refund")
    power = batch.powers.get(row["power_id"])
    if power is None:
        return _no_power(op)
    cost = row["cost"]
    if power.balance + cost > MAX_MILLIS:
        return _error(op, "amount_out_of_range", f"refund of {op.id!r} refused: the balance "
                      f"after it, {format_amount(power.balance + cost)}, would be above "
                      f"{format_amount(MAX_MILLIS)}")
    power.give_back(cost, _keys(batch, row, power))
    batch.chain(power, batch.now, kind="message.refunded", user_id=row["user_id"],
                amount=cost, balance_after=power.balance, ref=op.id, note=op.note)
    batch.change(op.id, row, status="refunded")
    batch.raised(row["user_id"], power)
    return _result(row, "refunded", power, cost=cost)


def _end(batch: Batch, op: MessageOp, row: dict[str, Any], status: str, *, cost: int,
         parts: int, expired: bool = False) -> ChargeResult:
    """A hold settled at ``cost`` (0: voided). More than held is taken only if balance,
    overdraft and limits allow it; else the hold's amount is (``settled_at_held``)."""
    held, power = row["cost"], None
    reason = None
    if row["power_id"] is not None:
        power = batch.powers.get(row["power_id"])
        if power is None:
            return _no_power(op)
        keys = _keys(batch, row, power)
        if cost > held and not power.can_take_more(cost - held, keys, _keys(batch, {
                "at": max(batch.now, power.last_at)}, power)):
            cost, parts, reason = held, row["parts"], "settled_at_held"
        power.release(held, cost, keys)
        detail = journal.release_detail(
            _amount_text(held), parts=parts if status == "settled" else None,
            outcome=status if expired else None, settled_at_held=reason is not None)
        batch.chain(power, batch.now,
                    kind="message.expired" if expired else f"message.{status}",
                    user_id=row["user_id"], amount=-cost if cost else None,
                    balance_after=power.balance, ref=op.id, note=op.note, detail=detail)
    else:
        cost = 0
    if power is not None and cost and power.refill_below is not None \
            and power.balance < power.refill_below:
        batch.refill(batch.owners[power.id], power)
        power = batch.powers[power.id]  # read again after the plan moved it
    # Recorded with the balance the caller is told (after a refill it fired), so that a
    # replay tells the same.
    batch.change(op.id, row, status=status, cost=cost, parts=parts,
                 reason="expired" if expired else reason,
                 balance_after=power.balance if power is not None else None)
    result = _result({**row, "parts": parts}, status, power, cost=cost, held=held)
    if reason is not None:
        result.reason = reason
        result.message = (f"settled at the held {format_amount(held)}: the {op.parts} "
                          "part(s) cost more than balance, overdraft or a limit allow")
    elif expired:
        result.reason, result.message = "expired", f"hold expired: {status}"
    return result


def _keys(batch: Batch, row: dict[str, Any], power: HeldPower) -> tuple[int, int, int]:
    """The windows a message was counted in, in its user's zone now: after `user set-tz`
    the counters hold the new zone's windows (the keys stored with the message are the old
    zone's)."""
    owner = batch.owners.get(power.id)
    return keys_at(row["at"], owner.tz if owner is not None else batch.db.default_tz)


def _result(row: dict[str, Any], status: str, power: HeldPower | None, *, cost: int,
            held: int | None = None) -> ChargeResult:
    return ChargeResult(
        status, row["id"], row["user_name"], row["to_number"], cost=_amount(cost),
        parts=row["parts"] or None, encoding=row["encoding"],
        price=None if row["price"] is None else _amount(row["price"]), rule=row["rule"],
        country=row["country"],
        balance=None if power is None else to_decimal(power.balance),
        metered=power is not None, held=None if held is None else _amount(held))


# Costs and prices recur from message to message: each made a Decimal (and text) once, and
# the same object each time (which the result line's writer keeps the JSON text of).
_amount = lru_cache(maxsize=4096)(to_decimal)
_amount_text = lru_cache(maxsize=4096)(format_amount)


def _as_it_stands(row: dict[str, Any], op: MessageOp, *, replayed: bool) -> ChargeResult:
    """The message as it is: an act already done (a report twice, a settle after a void),
    or one that changes nothing (a report that is not final, a hold not yet due)."""
    status = row["status"]
    held = status == "held"
    return ChargeResult(
        status if replayed else "ignored", row["id"], row["user_name"], row["to_number"],
        cost=None if row["cost"] is None else to_decimal(row["cost"]),
        parts=row["parts"] or None, encoding=row["encoding"],
        price=None if row["price"] is None else to_decimal(row["price"]), rule=row["rule"],
        country=row["country"],
        balance=None if row["balance_after"] is None else to_decimal(row["balance_after"]),
        metered=row["power_id"] is not None, replayed=replayed,
        message=(f"already {status}: first result returned, nothing changed" if replayed
                 else f"{op.op} {op.status or ''}".rstrip() + f": message {status}, unchanged"),
        held=to_decimal(row["cost"]) if held and row["cost"] is not None else None,
        expires_at=clock.iso(row["expires_at"]) if held else None)


def _no_power(op: MessageOp) -> ChargeResult:
    return _error(op, "no_power", f"the credits power of message {op.id!r} was deleted")


def _error(op: MessageOp, reason: str, message: str) -> ChargeResult:
    return ChargeResult("error", op.id if type(op.id) is str else None, op.user, None,
                        reason=reason, message=message)


_ACTS = {"settle": _settle, "void": _void, "refund": _refund, "expire": _expire}
