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
    RowMapping,
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
STATE_COLUMNS = ("balance", "overdraft", "daily_limit", "weekly_limit", "monthly_limit",
                 "day_key", "day_spent", "week_key", "week_spent", "month_key", "month_spent",
                 "last_hash", "refill_below", "last_at")
# ... and what a batch writes back.
WRITTEN_COLUMNS = ("balance", "day_key", "day_spent", "week_key", "week_spent", "month_key",
                   "month_spent", "last_hash", "last_at")
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
            return Lookups(accounts.where(member(users.c.name, "names")),
                            select(messages).where(member(messages.c.id, "ids")), None, None)
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
        held = (select(*ACCOUNT_COLUMNS, *STATE)
                .select_from(users.join(powers, and_(powers.c.user_id == users.c.id,
                                                     powers.c.kind == "credits")))
                .where(any_of(users.c.name, "names"))
                .order_by(powers.c.id).with_for_update(of=users, read=True)
                .suffix_with("FOR UPDATE OF powers"))
        return Lookups(select(*ACCOUNT_COLUMNS).select_from(joined)
                        .where(any_of(users.c.name, "names")),
                        select(messages).where(any_of(messages.c.id, "ids")), lock, held)


def listed(values: list[Any], postgres: bool) -> Any:
    return values if postgres else json.dumps(values)




def message_for_update(conn: Connection, msg_id: str) -> RowMapping | None:
    """A message row with its user's name: locked on Postgres, since a refund changes it
    (a second refund of it waits, then finds it refunded)."""
    stmt = (select(messages, users.c.name).outerjoin(users, users.c.id == messages.c.user_id)
            .where(messages.c.id == msg_id))
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(of=messages)
    return conn.execute(stmt).mappings().first()


def power_for_update(conn: Connection, power_id: int) -> RowMapping | None:
    """A power row with its user's zone, locked in the charge path's order: the user's row
    shared, then the power row. A refund that waited for ``user set-tz`` thus reads the new
    zone along with the windows recounted in it."""
    stmt = (select(powers, users.c.tz).join(users, users.c.id == powers.c.user_id)
            .where(powers.c.id == power_id))
    if conn.dialect.name == "postgresql":
        stmt = (stmt.with_for_update(of=users, read=True)
                .suffix_with("FOR UPDATE OF powers"))
    return conn.execute(stmt).mappings().first()


def sqlite_data_version(dbapi: Any) -> int:
    """SQLite's count of commits by other connections (``PRAGMA data_version``): unchanged,
    nothing but this connection wrote since it was last read."""
    return int(dbapi.execute("PRAGMA data_version").fetchone()[0])
