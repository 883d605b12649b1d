"""The charge path's statements, per dialect: each batch lookup is one constant statement
whose one parameter is the batch's whole list (a JSON array on SQLite, an array on Postgres),
and the lock order that keeps concurrent writers from deadlocking."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    any_,
    bindparam,
    func,
    literal_column,
    outerjoin,
    select,
)
from sqlalchemy.sql import Executable

from smscredits.storage.tables import messages, powers, users

# The power row's state that a charge reads and moves, in this order.
STATE_COLUMNS = ("balance", "held", "overdraft", "daily_limit", "weekly_limit", "monthly_limit",
                 "day_key", "day_spent", "week_key", "week_spent", "month_key", "month_spent",
                 "last_hash", "refill_below", "last_at")
# ... and what a batch writes back.
WRITTEN_COLUMNS = ("balance", "held", "day_key", "day_spent", "week_key", "week_spent",
                   "month_key", "month_spent", "last_hash", "last_at")
# ... or, while no window rolled over and no hold moved (a batch of charges), only these.
SPENT_COLUMNS = ("balance", "day_spent", "week_spent", "month_spent", "last_hash", "last_at")


STATE = [powers.c[name] for name in STATE_COLUMNS]
ACCOUNT_COLUMNS = (users.c.name, users.c.id, users.c.disabled, users.c.tz,
                    powers.c.id.label("power_id"))
RELOAD_POWER = select(*STATE).where(powers.c.id == bindparam("pid"))


@dataclass(frozen=True)
class Lookups:
    """A batch's reads, each one constant statement whose one parameter is the batch's whole
    list (a JSON array on SQLite, an array on Postgres): compiled once, run on the driver."""

    accounts: Executable
    known: Executable
    lock: Executable | None  # Postgres only
    held: Executable | None  # Postgres only
    # The accounts of the messages a batch settles, voids or refunds, by power id (on
    # Postgres with the batch's accounts by name, locked in one statement and one order).
    by_power: Executable
    # Those messages, read again once their accounts are held (locked on Postgres).
    acted_on: Executable

    @staticmethod
    @lru_cache(maxsize=2)
    def of(dialect: str) -> Lookups:
        joined = outerjoin(users, powers, and_(powers.c.user_id == users.c.id,
                                               powers.c.kind == "credits"))
        if dialect != "postgresql":
            def member(col: Any, name: str) -> Any:
                return col.in_(select(literal_column("value"))
                               .select_from(func.json_each(bindparam(name))))

            # The write transaction holds the whole database: the state comes along.
            accounts = select(*ACCOUNT_COLUMNS, *STATE).select_from(joined)
            known = select(messages).where(member(messages.c.id, "ids"))
            return Lookups(accounts.where(member(users.c.name, "names")), known, None, None,
                           accounts.where(member(powers.c.id, "pids")), known)
        from sqlalchemy.dialects.postgresql import ARRAY

        def any_of(col: Any, name: str) -> Any:
            return col == any_(bindparam(name, type_=ARRAY(col.type)))

        # The power rows are locked in one fixed order (two batches sharing accounts then
        # queue instead of deadlocking) and read as they are once locked.
        lock = (select(powers.c.id, *STATE).where(any_of(powers.c.id, "ids"))
                .order_by(powers.c.id).with_for_update())
        # The usual case in one query: accounts with a credits power, that row locked. The
        # user's row is share-locked first, as `user set-tz` takes it before the power row:
        # a charge waiting for a zone change then reads the new zone with the recounted
        # windows (an unlocked row would be read as it was before the wait).
        both = (select(*ACCOUNT_COLUMNS, *STATE)
                .select_from(users.join(powers, and_(powers.c.user_id == users.c.id,
                                                     powers.c.kind == "credits"))))
        held, by_power = (
            stmt.order_by(powers.c.id).with_for_update(of=users, read=True)
            .suffix_with("FOR UPDATE OF powers")
            for stmt in (both.where(any_of(users.c.name, "names")),
                         both.where(any_of(users.c.name, "names") | any_of(powers.c.id, "pids"))))
        return Lookups(select(*ACCOUNT_COLUMNS).select_from(joined)
                       .where(any_of(users.c.name, "names")),
                       select(messages).where(any_of(messages.c.id, "ids")), lock, held,
                       by_power,
                       select(messages).where(any_of(messages.c.id, "ids"))
                       .with_for_update(of=messages))


def listed(values: list[Any], postgres: bool) -> Any:
    return values if postgres else json.dumps(values)




def sqlite_data_version(dbapi: Any) -> int:
    """SQLite's count of commits by other connections (``PRAGMA data_version``): unchanged,
    nothing but this connection wrote since it was last read."""
    return int(dbapi.execute("PRAGMA data_version").fetchone()[0])


def due_holds(conn: Connection, now: int, limit: int, before: int | None = None,
              after: str = "") -> list[str]:
    """The ids of held messages whose expiry has come (or, with ``before``, held before
    it), by id from ``after`` on: a page of them (the partial index of the held ones serves
    it; a hold that cannot end does not stop the pages after it)."""
    due = messages.c.expires_at <= now
    if before is not None:
        due = due | (messages.c.at <= before)
    return list(conn.execute(
        select(messages.c.id).where(messages.c.status == "held", due, messages.c.id > after)
        .order_by(messages.c.id).limit(limit)).scalars())


