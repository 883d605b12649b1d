"""Read commands on an existing SQLite file, through the stdlib ``sqlite3`` alone.

Importing SQLAlchemy costs a read command more than its whole query; so when the database
setting names a SQLite file that already exists, ``log``, ``events`` and ``credits balance``
open it here, read-only, and run the SQL text of ``storage.sql`` (which ``storage.queries``
runs through SQLAlchemy). Anything else (Postgres, a file still to be created, ``:memory:``,
a URL with query options) gets None, and the caller takes the SQLAlchemy path of
``storage.engine``.

How a database is shown (``describe``) and a failure worded (``explain``) are defined here,
without SQLAlchemy, and ``storage.engine`` uses them. ``sqlite_file`` is a light reading of
the setting that only says which plain SQLite file it names, and leaves anything else to the
engine's parser; tests hold the two together. A file the engine would refuse (unreadable,
or at another schema) is left to the engine, so its errors are the engine's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, unquote

from smscredits import config
from smscredits.errors import DatabaseError
from smscredits.storage import sql

if TYPE_CHECKING:
    import sqlite3

# The schema head this code expects, and the busy timeout: storage.engine uses these too.
HEAD = "0005"
BUSY_TIMEOUT_MS = 30_000
_DRIVERS = ("sqlite", "sqlite+pysqlite")


def sqlite_file(setting: str) -> tuple[str, str] | None:
    """(driver, database path) when a database setting names a SQLite file, as
    ``engine.to_url`` and ``engine.sqlite_path`` read it; None for anything else."""
    if "://" not in setting:
        # A "file:" name is a SQLite URI, which the engine refuses in this form.
        return None if setting.startswith("file:") else ("sqlite", str(Path(setting).expanduser()))
    for driver in _DRIVERS:
        prefix = driver + ":///"  # no user, host or port: what follows is the database
        if setting.startswith(prefix):
            rest = setting[len(prefix):]
            if "?" in rest:  # connection options: leave them to SQLAlchemy
                return None
            database = unquote(rest)
            return None if database in ("", ":memory:") or database.startswith("file:") else (
                driver, database)
    return None


def render_url(
    driver: str,
    database: str | None,
    *,
    user: str | None = None,
    password: str | None = None,
    host: str | None = None,
    port: int | None = None,
    query: Mapping[str, str | Sequence[str]] | None = None,
    hide_password: bool = True,
) -> str:
    """A database URL as text, written exactly as SQLAlchemy's ``URL.render_as_string``
    writes it, so that every output naming a database reads as it always has (a test
    compares the two)."""
    text = driver + "://"
    if user is not None:
        text += quote(user, safe=" +")
        if password is not None:
            text += ":" + ("***" if hide_password else quote(str(password), safe=" +"))
        text += "@"
    if host is not None:
        text += f"[{host}]" if ":" in host else host
    if port is not None:
        text += f":{port}"
    if database is not None:
        text += "/" + quote(database, safe=" +/")
    if query:
        text += "?" + "&".join(f"{quote_plus(key)}={quote_plus(value)}"
                               for key in sorted(query) for value in _listed(query[key]))
    return text


def _listed(value: str | Sequence[str]) -> list[str]:
    """A query option's values: one, or the several a repeated option has."""
    return [value] if isinstance(value, str) else list(value)


def describe(driver: str, database: str | None, **parts: Any) -> str:
    """The database as every output shows it: the URL (``render_url``, taking its other
    parts) with its secrets masked (``config.mask_url``)."""
    return config.mask_url(render_url(driver, database, **parts))


def explain(e: BaseException, shown: str, *, said: str | None = None,
            url: str = "") -> DatabaseError:
    """A one-line, secret-free message for a database failure: what the driver ``said``
    (by default, what ``e`` says), its secrets and those of ``url`` masked."""
    raw = str(e) if said is None else said
    first = " ".join(line.strip() for line in raw.strip().splitlines()[:2]) or type(e).__name__
    # The driver may quote any part of the connection settings (a passfile's path, a key).
    first = config.mask_text(first, url)
    if "readonly" in first or "read-only" in first:
        return DatabaseError(f"database {shown} is read-only: {first}")
    return DatabaseError(f"database {shown} unavailable: {first}")


class LiteDb:
    """An existing SQLite file at this code's schema, opened read-only."""

    def __init__(self, conn: sqlite3.Connection, shown: str, *, default_tz: str) -> None:
        self.conn = conn
        self.shown = shown
        self.default_tz = default_tz

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction (a consistent snapshot, as ``Db.read`` gives)."""
        import sqlite3

        try:
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise explain(e, self.shown) from None

    def close(self) -> None:
        self.conn.close()


def open_lite(db: str | None = None) -> LiteDb | None:
    """The database the settings point to, if it is an existing SQLite file at this code's
    schema; else None.

    A file that cannot be read, or whose schema is not ``HEAD`` (older, missing, or newer
    than this copy of the constant), is left to ``engine.open_db``: its check is the one
    that decides and words the error, so both paths fail alike, and a ``HEAD`` bumped in
    the engine alone costs speed, never a wrong refusal.
    """
    found = sqlite_file(config.resolve("db", db).value or "")
    if found is None or not Path(found[1]).is_file():
        return None
    import sqlite3

    # Read-only: a read command can never write, whatever happens, nor create the file.
    uri = Path(os.path.abspath(found[1])).as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = _schema_version(conn)
    except sqlite3.Error:
        version = None
    if version != HEAD:
        conn.close()
        return None
    conn.row_factory = sqlite3.Row
    return LiteDb(conn, describe(*found),
                  default_tz=config.resolve("default_tz").value or "UTC")


def _schema_version(conn: sqlite3.Connection) -> str | None:
    """The Alembic revision stored in the file, read as ``Db.schema_version`` reads it."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                          "AND name = 'alembic_version'").fetchone()
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone() if exists else None
    return None if row is None else row[0]


# -- the queries of storage.sql, on sqlite3 ---------------------------------------------------


def _runner(conn: sqlite3.Connection) -> sql.Run[sqlite3.Row]:
    def run(statement: str, params: sql.Params) -> list[sqlite3.Row]:
        return conn.execute(statement, params).fetchall()

    return run


def user_row(conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
    rows = _runner(conn)(*sql.user(name))
    return rows[0] if rows else None


def account_rows(conn: sqlite3.Connection, user: str | None,
                 kind: str | None) -> list[sqlite3.Row]:
    return _runner(conn)(*sql.accounts(user, kind))


def event_rows(
    conn: sqlite3.Connection,
    *,
    user_id: int | None,
    since: int | None,
    until: int | None,
    kinds: list[str] | None,
    before: int | None,
    limit: int,
    credit_only: bool,
) -> list[sqlite3.Row]:
    return sql.event_rows(_runner(conn), user_id=user_id, since=since, until=until,
                          kinds=kinds, before=before, limit=limit, credit_only=credit_only)


def plan_rows(conn: sqlite3.Connection, *, user_id: int | None,
              all_: bool) -> list[sqlite3.Row]:
    return _runner(conn)(*sql.plans(user_id=user_id, all_=all_))
