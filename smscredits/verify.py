"""Recompute every balance and limit-window counter from the journal; check the hash chains.

The journal is the source of truth: a balance is the sum of its account's event amounts; the
current day/week/month counters are the costs of the ``message.charged`` events in those
windows less the refunds of those messages; each account event's hash must cover its content
and the previous event's hash, and the last one must be the account's ``last_hash``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, text

from smscredits import clock, schedule
from smscredits.amounts import to_decimal
from smscredits.journal import HASHED_COLUMNS, hash_of
from smscredits.limits import WINDOWS, window_keys
from smscredits.storage import blocks, queries
from smscredits.storage.engine import Db
from smscredits.storage.tables import events, powers, users


@dataclass(frozen=True, slots=True)
class Problem:
    check: str  # balance | window | chain
    user: str
    detail: str
    expected: Any = None
    found: Any = None
    event_id: int | None = None


@dataclass(frozen=True, slots=True)
class Report:
    accounts: int
    events: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(db: Db) -> Report:
    problems: list[Problem] = []
    with db.read() as conn:
        accounts = conn.execute(
            select(powers, users.c.name, users.c.tz).join(users, users.c.id == powers.c.user_id)
            .order_by(powers.c.id)
        ).mappings().all()
        sums = dict(conn.execute(
            select(events.c.power_id, func.coalesce(func.sum(events.c.amount), 0))
            .where(events.c.power_id.is_not(None)).group_by(events.c.power_id)
        ).all())
        total = conn.execute(select(func.count()).select_from(events)).scalar_one()
        window_events = _window_events(text(blocks.up_to(queries.top_block(conn))))
        chains = _chains(conn, accounts)
        for acc in accounts:
            expected = int(sums.get(acc["id"], 0))
            if expected != acc["balance"]:
                problems.append(Problem(
                    "balance", acc["name"], "balance differs from the sum of its journal",
                    to_decimal(expected), to_decimal(acc["balance"]),
                ))
            problems.extend(_windows(conn, acc, acc["tz"] or db.default_tz, window_events))
            problems.extend(chains[acc["id"]])
    return Report(len(accounts), total, problems)


def _window_events(every_block: Any) -> Any:
    """One account's charges and refunds since an instant, oldest first: one statement for
    every account (made once, its values bound per account)."""
    return (
        select(events.c.kind, events.c.amount, events.c.ref, events.c.at)
        .where(every_block, events.c.user_id == bindparam("uid"),
               events.c.power_id == bindparam("pid"), events.c.at >= bindparam("since"),
               events.c.kind.in_(("message.charged", "message.refunded")))
        .order_by(events.c.id)
    )


def _windows(conn: Connection, acc: Any, tz: str, window_events: Any) -> list[Problem]:
    """Counters of the windows stored on the row, recomputed from the journal."""
    if acc["month_key"] == 0:  # never charged: the counters must still be at zero
        return [Problem("window", acc["name"], f"{w} counter set on an account never charged",
                        0, to_decimal(acc[f"{w}_spent"])) for w in WINDOWS if acc[f"{w}_spent"]]
    month_start = schedule.window_reset("month", acc["month_key"] - 1, tz)
    # The week can start in the month before; a window starts where the previous one ends.
    week_start = schedule.window_reset("week", acc["week_key"] - 7, tz)
    since = clock.to_us(min(month_start, week_start))
    rows = conn.execute(window_events,
                        {"uid": acc["user_id"], "pid": acc["id"], "since": since}).all()
    spent = dict.fromkeys(WINDOWS, 0)
    charged_keys: dict[str, tuple[int, int, int]] = {}
    for kind, amount, ref, at in rows:
        if kind == "message.charged":
            keys = charged_keys[ref] = window_keys(at, tz)
            sign = 1
        elif ref in charged_keys:
            keys, sign = charged_keys[ref], -1
        else:
            continue  # a refund of a message charged before these windows
        for window, key in zip(WINDOWS, keys, strict=True):
            if key == acc[f"{window}_key"]:
                spent[window] += sign * abs(amount)
    return [
        Problem("window", acc["name"], f"{window} counter differs from its journal",
                to_decimal(spent[window]), to_decimal(acc[f"{window}_spent"]))
        for window in WINDOWS
        if spent[window] != acc[f"{window}_spent"]
    ]


class _Chain:
    """One account's hash chain, followed event by event."""

    __slots__ = ("broken", "last_id", "prev")

    def __init__(self) -> None:
        self.prev: str | None = None
        self.last_id: int | None = None
        self.broken: int | None = None  # the first event whose hash does not follow


def _chains(conn: Connection, accounts: Any) -> dict[int, list[Problem]]:
    """Every account's chain, in one pass over the journal in id order (one index seek per
    account and block would cost more than reading each event once)."""
    chains = {acc["id"]: _Chain() for acc in accounts}
    hashed = [events.c[c] for c in HASHED_COLUMNS]
    result = conn.execution_options(yield_per=5000).execute(
        select(events.c.id, events.c.hash, *hashed)
        .where(events.c.power_id.is_not(None)).order_by(events.c.id)
    )
    power_at = 2 + HASHED_COLUMNS.index("power_id")
    for row in result:
        chain = chains.get(row[power_at])
        if chain is None or chain.broken is not None:
            continue  # a deleted account's events, or a chain already found broken
        if row[1] != hash_of(chain.prev, row[2:]):
            chain.broken = row[0]
            continue
        chain.prev, chain.last_id = row[1], row[0]
    found: dict[int, list[Problem]] = {}
    for acc in accounts:
        chain = chains[acc["id"]]
        if chain.broken is not None:
            found[acc["id"]] = [Problem("chain", acc["name"], "event altered, removed or "
                                        "reordered", event_id=chain.broken)]
        elif chain.prev != acc["last_hash"]:
            found[acc["id"]] = [Problem("chain", acc["name"], "latest events missing from "
                                        "the journal", event_id=chain.last_id)]
        else:
            found[acc["id"]] = []
    return found
