"""Hot statements: SQLAlchemy Core, compiled once, executed on the driver's cursor.

A charge batch writes hundreds of rows; going through ``Connection.execute`` costs about
100 µs of statement-cache and result machinery per call, several times the work of the
database itself. The statements are still written in Core and compiled by SQLAlchemy for
the connection's dialect; only their execution skips the per-call overhead, on the very
connection (and in the very transaction) that SQLAlchemy began.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from json.encoder import encode_basestring_ascii as _quote_ascii
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    Update,
    bindparam,
    exc,
    func,
    insert,
    update,
)
from sqlalchemy.sql import Executable


@contextlib.contextmanager
def driver_errors(conn: Connection, sql: str) -> Iterator[None]:
    """The driver's exceptions as the ones ``Connection.execute`` raises, so callers handle
    one kind."""
    error = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except error as e:
        raise exc.DBAPIError.instance(sql, None, e, error) from e


def _copy_sql(conn: Connection, table: Table, columns: tuple[str, ...]) -> str:
    quote = conn.dialect.identifier_preparer.quote
    return f"COPY {quote(table.name)} ({', '.join(quote(c) for c in columns)}) FROM STDIN"


class HotStatement:
    def __init__(self, conn: Connection, stmt: Executable) -> None:
        self.sql, self.pick = _compiled(stmt, conn.dialect.name, conn.dialect)
        self.conn = conn
        self.cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]

    def once(self, params: Mapping[str, Any]) -> None:
        with driver_errors(self.conn, self.sql):
            self.cursor.execute(self.sql, self.pick(params) if self.pick else params)

    def rows(self, params: Mapping[str, Any]) -> Sequence[tuple[Any, ...]]:
        self.once(params)
        return self.cursor.fetchall()

    def columns(self) -> list[str]:
        """Names of the result columns of the last ``rows``."""
        return [d[0] for d in self.cursor.description]



def bulk_insert(conn: Connection, table: Table, columns: tuple[str, ...],
                rows: list[tuple[Any, ...]]) -> None:
    """Insert many rows, each a tuple of ``columns`` in that order: one ``executemany`` on
    SQLite, one ``COPY`` on Postgres (a pipelined INSERT per row costs ~50 µs of driver
    Python there; COPY streams the rows)."""
    if conn.dialect.name != "postgresql":
        _executemany(conn, _positional_insert(table, columns, conn.dialect), rows)
        return
    sql = _copy_sql(conn, table, columns)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    with driver_errors(conn, sql), cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)


class CopyStream:
    """Rows sent to Postgres as they are made, by one ``COPY`` that stays open: the server
    inserts them while the client goes on working. Nothing else may run on the connection
    until ``close``; ``abort`` ends it after a failure."""

    def __init__(self, conn: Connection, table: Table, columns: tuple[str, ...]) -> None:
        self.conn, self.sql = conn, _copy_sql(conn, table, columns)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        self._block = cursor.copy(self.sql)
        with driver_errors(conn, self.sql):
            self.write = self._block.__enter__().write_row

    def close(self) -> None:
        """Send the rest and wait until the server has inserted every row."""
        with driver_errors(self.conn, self.sql):
            self._block.__exit__(None, None, None)

    def abort(self, e: BaseException) -> None:
        with contextlib.suppress(Exception):
            self._block.__exit__(type(e), e, e.__traceback__)


@lru_cache(maxsize=16)
def _positional_insert(table: Table, columns: tuple[str, ...], dialect: Any) -> str:
    """An INSERT of ``columns`` compiled by SQLAlchemy, whose ``?`` take a row tuple."""
    return _positional(insert(table).values({name: bindparam(name) for name in columns}),
                       columns, dialect)


def _positional(stmt: Executable, order: tuple[str, ...], dialect: Any) -> str:
    """The SQL of ``stmt`` for a qmark driver, checked to take its parameters in ``order``
    (so that plain row tuples can be passed to ``executemany``)."""
    compiled = stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
    if list(compiled.positiontup or ()) != list(order):
        raise AssertionError(f"unexpected parameter order in {compiled.string!r}")
    return compiled.string


def prepared_update(conn: Connection, table: Table, key: str, columns: tuple[str, ...],
                    rows: list[tuple[Any, ...]]) -> Callable[[], None]:
    """Set ``columns`` of the rows whose ``key`` column is each tuple's last value (the
    tuples are ``(*columns, key)``), when the returned function is called; its parameters
    are made now. One ``executemany`` on SQLite, one set-based ``UPDATE .. FROM
    json_to_recordset(..)`` on Postgres, whose one JSON parameter costs the driver a
    fraction of what one array per column does."""
    if conn.dialect.name != "postgresql":
        sql = _keyed_update(table, key, columns, conn.dialect)
        return lambda: _executemany(conn, sql, rows)
    stmt = HotStatement(conn, _recordset_update(table, key, columns))
    params = {"rows": _json_records(table, (*columns, key), rows)}
    return lambda: stmt.once(params)


def _json_records(table: Table, names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    """A JSON array of one object per row: the table's non-integer (string) columns as JSON
    strings or null, the others as integers or null (anything else is refused)."""
    texts = [i for i, n in enumerate(names) if table.c[n].type.python_type is not int]
    fast = "{" + ",".join(f"{_quote_ascii(n)}:{'%s' if i in texts else '%d'}"
                          for i, n in enumerate(names)) + "}"
    slow = "{" + ",".join(f"{_quote_ascii(n)}:%s" for n in names) + "}"
    out = []
    for row in rows:
        values = list(row)
        for i in texts:
            v = values[i]
            values[i] = "null" if v is None else _quote_ascii(v)
        if None in values:  # a NULL integer
            out.append(slow % tuple("null" if v is None else v if i in texts else f"{v:d}"
                                    for i, v in enumerate(values)))
        else:
            out.append(fast % tuple(values))
    return "[" + ",".join(out) + "]"


@lru_cache(maxsize=16)
def _keyed_update(table: Table, key: str, columns: tuple[str, ...], dialect: Any) -> str:
    stmt = update(table).where(table.c[key] == bindparam("pid")).values(
        {name: bindparam(name) for name in columns})
    return _positional(stmt, (*columns, "pid"), dialect)


def _executemany(conn: Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    with driver_errors(conn, sql):
        cursor.executemany(sql, rows)


@lru_cache(maxsize=16)
def _recordset_update(table: Table, key: str, columns: tuple[str, ...]) -> Update:
    from sqlalchemy import column
    from sqlalchemy.dialects.postgresql import JSON

    names = (*columns, key)
    source = (func.json_to_recordset(bindparam("rows", type_=JSON))
              .table_valued(*(column(n, table.c[n].type) for n in names))
              .render_derived(name="v", with_types=True))
    return update(table).where(table.c[key] == source.c[key]).values(
        {name: source.c[name] for name in columns})


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
        pick: Callable[[Mapping[str, Any]], Any] | None = (
            None
            if not order
            else itemgetter(*order)
            if len(order) > 1
            else (lambda p, _n=order[0]: (p[_n],))
        )
        # Values written into the statement itself (``kind == "credits"``) are binds too.
        fixed = {k: v for k, v in compiled.params.items() if v is not None}
        if fixed:
            inner = pick or (lambda p: p)
            pick = lambda p, _f=fixed, _i=inner: _i({**_f, **p})  # noqa: E731
        _CACHE[key] = (compiled.string, pick)
    return _CACHE[key]
