"""Hot statements: SQLAlchemy Core, compiled once, executed on the driver's cursor.

The charge's UPDATE runs once per message; going through ``Connection.execute`` costs
about 100 µs of statement-cache and result machinery per call, several times the work of
the database itself. The statement is still written in Core and compiled by SQLAlchemy for
the connection's dialect; only its execution skips the per-call overhead, on the very
connection (and in the very transaction) that SQLAlchemy began.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Insert, Table, bindparam, exc, insert
from sqlalchemy.sql import Executable


class HotStatement:
    def __init__(self, conn: Connection, stmt: Executable) -> None:
        self.sql, self.pick = _compiled(stmt, conn.dialect.name, conn.dialect)
        self.cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        self.driver_error = conn.dialect.loaded_dbapi.Error

    def _run(self, method: Any, args: Any) -> None:
        try:
            method(self.sql, args)
        except self.driver_error as e:
            # The same exceptions as Connection.execute raises, so callers handle one kind.
            raise exc.DBAPIError.instance(self.sql, None, e, self.driver_error) from e

    def _args(self, params: Mapping[str, Any]) -> Any:
        return self.pick(params) if self.pick else params

    def first(self, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        self._run(self.cursor.execute, self._args(params))
        row = self.cursor.fetchone()
        self.cursor.fetchall()  # SQLite finishes an UPDATE .. RETURNING only when drained
        return row

    def pipelined(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...] | None]:
        """Run once per row in one psycopg pipeline; the first result row of each."""
        if not rows:
            return []
        conn = self.cursor.connection
        cursors = []
        try:
            with conn.pipeline():
                for row in rows:
                    cursor = conn.cursor()
                    cursor.execute(self.sql, self._args(row))
                    cursors.append(cursor)
            return [cursor.fetchone() for cursor in cursors]
        except self.driver_error as e:
            raise exc.DBAPIError.instance(self.sql, None, e, self.driver_error) from e

    def many(self, rows: list[dict[str, Any]]) -> None:
        self._run(self.cursor.executemany, [self._args(row) for row in rows])


def insert_rows(table: Table, columns: list[str]) -> Insert:
    """An INSERT of exactly these columns, each a bind parameter of its own name."""
    return insert(table).values({name: bindparam(name) for name in columns})


_CACHE: dict[tuple[int, str], tuple[str, Any]] = {}


def _compiled(stmt: Executable, name: str, dialect: Any) -> tuple[str, Any]:
    """SQL text and parameter picker, compiled once per statement and dialect (a compile
    costs ~0.4 ms: too much for a one-line batch)."""
    key = (id(stmt), name)
    if key not in _CACHE:
        compiled = stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
        # qmark (SQLite) takes a tuple in order; pyformat (psycopg) takes the dict itself.
        order = compiled.positiontup if compiled.positional else None
        # itemgetter of one name returns a bare value, not a 1-tuple.
        pick = (
            None
            if not order
            else itemgetter(*order)
            if len(order) > 1
            else (lambda p, _n=order[0]: (p[_n],))
        )
        _CACHE[key] = (compiled.string, pick)
    return _CACHE[key]
