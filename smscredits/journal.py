"""The append-only event journal, with a hash chain per account.

Each account event's hash covers its content and the hash of the account's previous event
(kept on the power row as ``last_hash``), so ``verify`` can find an edited, deleted or
reordered row. Events without an account (users, prices) are not chained.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii as _quote
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection

# SQLAlchemy is imported by the writers below, not here: `log` and `events` read KINDS and
# stay on the light read path.

# Every kind of event, by what it is about. A change (of a price, a limit, an overdraft, a
# plan's status) keeps the old value beside the new one in its detail: see ``change``.
KINDS = (
    "user.added", "user.renamed", "user.tz_changed", "user.disabled", "user.enabled",
    "user.deleted",
    "power.created", "power.overdraft", "power.deleted",
    "credits.added", "credits.subtracted", "credits.set",
    "limits.set", "price.set", "price.deleted",
    "message.charged", "message.unmetered", "message.refunded",
    "message.held", "message.settled", "message.voided", "message.expired",
    "refill.scheduled", "refill.paused", "refill.resumed", "refill.cancelled",
    "refill.applied", "refill.skipped",
)


def change(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """The detail of a change: the new values, and under ``old`` what each was before
    (``{"day": "30", "old": {"day": "20"}}``), so that the journal alone says what changed."""
    return {**new, "old": {k: old.get(k) for k in new}}


# The fields an account event's hash covers, after the previous hash, in this order.
HASHED_COLUMNS = ("at", "user_id", "power_id", "kind", "amount", "balance_after", "ref", "note",
                  "actor", "detail")


def hash_of(prev: str | None, fields: tuple[Any, ...]) -> str:
    """The hash of an event whose ``HASHED_COLUMNS`` are ``fields``, chained to ``prev``:
    of their text joined by \x1f, a NULL as nothing. Written out as one f-string (a join of
    a list costs every charge a few microseconds more)."""
    at, user, power, kind, amount, after, ref, note, actor, detail = fields
    text = (f"{prev or ''}\x1f{'' if at is None else at}\x1f{'' if user is None else user}"
            f"\x1f{'' if power is None else power}\x1f{'' if kind is None else kind}"
            f"\x1f{'' if amount is None else amount}\x1f{'' if after is None else after}"
            f"\x1f{'' if ref is None else ref}\x1f{'' if note is None else note}"
            f"\x1f{'' if actor is None else actor}\x1f{'' if detail is None else detail}")
    return hashlib.sha256(text.encode()).hexdigest()


def dump_detail(detail: Mapping[str, Any] | None) -> str | None:
    """The stored text of an event's detail: compact JSON with sorted keys."""
    return json.dumps(detail, separators=(",", ":"), sort_keys=True) if detail else None


def message_detail(to: str, parts: int, rule: str) -> str:
    """``dump_detail({"to": to, "parts": parts, "rule": rule})``, written directly: one per
    charge."""
    return f'{{"parts":{int(parts)},"rule":{_quote(rule)},"to":{_quote(to)}}}'


def hold_detail(message: str, held: str, expires_at: str) -> str:
    """``dump_detail`` of a hold: ``message_detail``'s keys with ``held`` and ``expires_at``
    (which sort before them), written directly: one per hold."""
    return f'{{"expires_at":{_quote(expires_at)},"held":{_quote(held)},{message[1:]}'


def release_detail(held: str, *, parts: int | None = None, outcome: str | None = None,
                   settled_at_held: bool = False) -> str:
    """``dump_detail`` of a hold's end (settled, voided, expired): what it held, and the
    parts it was settled at, its outcome by expiry, whether it was settled at the held
    amount, each only when there is one; written directly (one per settle or void)."""
    text = f'{{"held":{_quote(held)}'
    if outcome is not None:
        text += f',"outcome":{_quote(outcome)}'
    if parts is not None:
        text += f',"parts":{int(parts)}'
    return text + (',"settled_at_held":true}' if settled_at_held else "}")


# The columns of an event row, in the order of ``EventTuple``: ``HASHED_COLUMNS``, the hash.
EVENT_COLUMNS = (*HASHED_COLUMNS, "hash")
EventTuple = tuple[int, int | None, int | None, str, int | None, int | None, str | None,
                   str | None, str | None, str | None, str | None]


def event(
    *,
    at: int,
    kind: str,
    actor: str,
    user_id: int | None = None,
    power_id: int | None = None,
    amount: int | None = None,
    balance_after: int | None = None,
    ref: str | None = None,
    note: str | None = None,
    detail: Mapping[str, Any] | str | None = None,
    prev_hash: str | None = None,
) -> EventTuple:
    """An event row (``EVENT_COLUMNS``), chained to ``prev_hash`` when it belongs to an
    account. Every event is made here, a charge's too (``detail`` then comes as its stored
    text, ``message_detail``)."""
    text = detail if detail is None or isinstance(detail, str) else dump_detail(detail)
    fields = (at, user_id, power_id, kind, amount, balance_after, ref, note, actor, text)
    return (*fields, None if power_id is None else hash_of(prev_hash, fields))


def charged(at: int, user_id: int, power_id: int, amount: int, balance_after: int, ref: str,
            actor: str, detail: str, prev_hash: str | None) -> EventTuple:
    """``event(kind="message.charged", ...)`` of a charge, written out: one per message.
    Its fields are never NULL but ``note``, so the hash's text is one f-string of them."""
    text = (f"{prev_hash or ''}\x1f{at}\x1f{user_id}\x1f{power_id}\x1fmessage.charged"
            f"\x1f{amount}\x1f{balance_after}\x1f{ref}\x1f\x1f{actor}\x1f{detail}")
    return (at, user_id, power_id, "message.charged", amount, balance_after, ref, None, actor,
            detail, hashlib.sha256(text.encode()).hexdigest())


def as_row(event: EventTuple) -> dict[str, Any]:
    """An event as the mapping an INSERT takes."""
    return dict(zip(EVENT_COLUMNS, event, strict=True))


def record(conn: Connection, **fields: Any) -> int:
    """Write one event in the caller's transaction; an account event is chained.

    An account event takes its account's chain head (``last_hash``, ``last_at``) with the
    power row locked, as a charge batch does, so that every writer of one chain (charges,
    refunds, refills, admin commands) queues on the same lock and none chains onto a stale
    head. Its instant is no earlier than the head's (see ``stamp``).
    """
    from sqlalchemy import insert, update

    from smscredits.storage.tables import events, powers

    power_id = fields.get("power_id")
    if power_id is not None:
        last_hash, last_at = head(conn, power_id)
        fields["prev_hash"], fields["at"] = last_hash, stamp(fields["at"], last_at)
    row = as_row(event(**fields))
    event_id = conn.execute(insert(events).returning(events.c.id), row).scalar_one()
    if row["hash"] is not None:
        conn.execute(update(powers).where(powers.c.id == power_id)
                     .values(last_hash=row["hash"], last_at=row["at"]))
    return event_id


def stamp(now: int, last_at: int) -> int:
    """An account event's instant: now, or the account's latest event's if that is later.

    A transaction stamped before another that commits first (or a host whose clock is behind
    another's) then joins the newer instant, and with it the newer limit windows: an
    account's events never go back in time and its window counters never move backwards.
    """
    return now if now >= last_at else last_at


def head(conn: Connection, power_id: int) -> tuple[str | None, int]:
    """The account's chain head, its power row locked until the transaction ends (Postgres;
    a SQLite write transaction holds the whole database)."""
    from sqlalchemy import select

    from smscredits.storage.tables import powers

    stmt = select(powers.c.last_hash, powers.c.last_at).where(powers.c.id == power_id)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None:
        raise LookupError(f"no power {power_id}: its row must exist to chain an event")
    return row[0], row[1]
