"""The read queries in SQLAlchemy Core, for every database.

``storage.lite`` runs the same queries as SQL text on the stdlib ``sqlite3``; both take an
open connection and return plain rows, which ``smscredits.reads`` turns into records.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, RowMapping, Select, and_, func, select, text

from smscredits.storage import blocks
from smscredits.storage.tables import events, powers, refill_plans, users


def user_row(conn: Connection, name: str, *, lock: bool = False) -> RowMapping | None:
    stmt = select(users).where(users.c.name == name)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return conn.execute(stmt).mappings().first()


def accounts_stmt() -> Select[Any]:
    return select(powers, users.c.name, users.c.disabled, users.c.tz).join(
        users, users.c.id == powers.c.user_id
    )


def account_rows(conn: Connection, user: str | None, kind: str | None) -> list[RowMapping]:
    """Powers with their user's name, disabled flag and zone; by user name, then kind."""
    stmt = accounts_stmt().order_by(users.c.name, powers.c.kind)
    if user is not None:
        stmt = stmt.where(users.c.name == user)
    if kind is not None:
        stmt = stmt.where(powers.c.kind == kind)
    return list(conn.execute(stmt).mappings().all())


def event_rows(
    conn: Connection,
    *,
    user_id: int | None,
    since: int | None,
    until: int | None,
    kinds: list[str] | None,
    before: int | None,
    limit: int,
    credit_only: bool,
) -> list[RowMapping]:
    """Events with their user's name, newest first; one user's by the blocks of the
    account index, newest block first (``storage.blocks``)."""
    stmt = (
        select(events, users.c.name)
        .outerjoin(users, users.c.id == events.c.user_id)
        .order_by(events.c.id.desc())
    )
    conds: list[Any] = []
    if since is not None:
        conds.append(events.c.at >= since)
    if until is not None:
        conds.append(events.c.at < until)
    if kinds:
        conds.append(events.c.kind.in_(kinds))
    if credit_only:
        conds.append(events.c.amount.is_not(None))
    if before is not None:
        conds.append(events.c.id < before)
    stmt = stmt.where(*conds)
    if user_id is None:
        return list(conn.execute(stmt.limit(limit)).mappings().all())
    stmt = stmt.where(events.c.user_id == user_id)

    def fetch(within: str, n: int) -> list[RowMapping]:
        return list(conn.execute(stmt.where(text(within)).limit(n)).mappings().all())

    return blocks.newest_page(_newest_id(conn), before, limit, fetch)


def _newest_id(conn: Connection) -> int | None:
    return conn.execute(select(func.max(events.c.id))).scalar()


def top_block(conn: Connection) -> int:
    """The newest block holding events; -1 when there are none."""
    return blocks.top(_newest_id(conn))


def plan_rows_where(conn: Connection, where: Any = None) -> list[RowMapping]:
    """Refill plans with their user's name and zone, oldest first."""
    stmt = (
        select(refill_plans, users.c.name, users.c.tz)
        .join(users, users.c.id == refill_plans.c.user_id)
        .order_by(refill_plans.c.id)
    )
    if where is not None:
        stmt = stmt.where(where)
    return list(conn.execute(stmt).mappings())


def plan_rows(conn: Connection, *, user_id: int | None, all_: bool) -> list[RowMapping]:
    """One user's plans (or everyone's), the cancelled ones only with ``all_``."""
    conds = [] if all_ else [refill_plans.c.status != "cancelled"]
    if user_id is not None:
        conds.append(refill_plans.c.user_id == user_id)
    return plan_rows_where(conn, and_(*conds) if conds else None)
