"""The read queries of ``storage.sql``, run through SQLAlchemy on every database.

``storage.lite`` runs the same text on the stdlib ``sqlite3``; both take an open connection
and return plain rows, which ``smscredits.reads`` turns into records.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Connection, RowMapping, text

from smscredits.storage import blocks, sql

# The boolean columns, by name (a query without them ignores them): SQLite stores 0/1, and
# callers get bool on every database, as from the tables' Core columns (``user disable``
# writes the old flag into the journal's hashed detail).
_BOOLEANS = {"disabled": Boolean, "armed": Boolean}


def _runner(conn: Connection) -> sql.Run[RowMapping]:
    def run(statement: str, params: sql.Params) -> list[RowMapping]:
        typed = text(statement).columns(**_BOOLEANS)
        return list(conn.execute(typed, params).mappings().all())

    return run


def user_row(conn: Connection, name: str, *, lock: bool = False) -> RowMapping | None:
    rows = _runner(conn)(*sql.user(name, lock=lock and conn.dialect.name == "postgresql"))
    return rows[0] if rows else None


def account_rows(conn: Connection, user: str | None, kind: str | None) -> list[RowMapping]:
    """Powers with their user's name, disabled flag and zone; by user name, then kind."""
    return _runner(conn)(*sql.accounts(user, kind))


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
    """Events with their user's name, newest first (``sql.event_rows``)."""
    return sql.event_rows(_runner(conn), user_id=user_id, since=since, until=until,
                          kinds=kinds, before=before, limit=limit, credit_only=credit_only)


def top_block(conn: Connection) -> int:
    """The newest block holding events; -1 when there are none."""
    return blocks.top(sql.newest_event(_runner(conn)))


def plan_rows(conn: Connection, *, user_id: int | None = None, all_: bool = True,
              plan_id: int | None = None, status: str | None = None,
              lock: bool = False) -> list[RowMapping]:
    """Refill plans with their user's name and zone, oldest first (``sql.plans``); ``lock``
    holds their rows until the transaction ends (on Postgres; SQLite's write transaction
    holds the whole database)."""
    return _runner(conn)(*sql.plans(user_id=user_id, all_=all_, plan_id=plan_id, status=status,
                                    lock=lock and conn.dialect.name == "postgresql"))
