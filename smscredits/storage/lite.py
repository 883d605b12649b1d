"""Read commands on an existing SQLite file, through the stdlib ``sqlite3`` alone.

Importing SQLAlchemy costs a read command more than its whole query; so when the database
setting names a SQLite file that already exists, ``log``, ``events`` and ``credits balance``
open it here, read-only, and run the queries of ``storage.queries`` as the equivalent SQL
text. Anything else (Postgres, a file still to be created, ``:memory:``, a URL with query
options) gets None, and the caller takes the SQLAlchemy path of ``storage.engine``.

The URL resolution and the wording of a failed read repeat those of ``storage.engine``
without its SQLAlchemy import; tests hold the two together. A file the engine would refuse
(unreadable, or at another schema) is left to the engine, so its errors are the engine's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from smscredits import config
from smscredits.errors import DatabaseError
from smscredits.storage import blocks

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


def describe(driver: str, database: str) -> str:
    """The URL as ``engine.describe`` shows it (secrets masked by ``config.mask_url``)."""
    return config.mask_url(f"{driver}:///{quote(database, safe=' +/')}")


def explain(e: Exception, shown: str) -> DatabaseError:
    """A one-line message for a failure, as ``engine.explain`` words it."""
    raw = str(e)
    first = " ".join(line.strip() for line in raw.strip().splitlines()[:2]) or type(e).__name__
    first = config.mask_text(first)
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


# -- the queries of storage.queries, as SQL text -------------------------------------------


def user_row(conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
    return conn.execute("SELECT users.* FROM users WHERE users.name = ?", (name,)).fetchone()


def account_rows(conn: sqlite3.Connection, user: str | None,
                 kind: str | None) -> list[sqlite3.Row]:
    where, params = _where([("users.name = ?", user)] if user is not None else [],
                           [("powers.kind = ?", kind)] if kind is not None else [])
    return conn.execute(
        "SELECT powers.*, users.name, users.disabled, users.tz "
        f"FROM powers JOIN users ON users.id = powers.user_id{where} "
        "ORDER BY users.name, powers.kind", params,
    ).fetchall()


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
    # The conditions in the order storage.queries writes them.
    where, params = _where(
        [("events.at >= ?", since)] if since is not None else [],
        [("events.at < ?", until)] if until is not None else [],
        [(f"events.kind IN ({', '.join('?' * len(kinds))})", *kinds)] if kinds else [],
        [("events.amount IS NOT NULL",)] if credit_only else [],
        [("events.id < ?", before)] if before is not None else [],
        [("events.user_id = ?", user_id)] if user_id is not None else [],
    )
    sql = ("SELECT events.*, users.name "
           f"FROM events LEFT OUTER JOIN users ON users.id = events.user_id{where}")
    if user_id is None:
        return conn.execute(f"{sql} ORDER BY events.id DESC LIMIT ?", [*params, limit]).fetchall()
    # One user's events by the blocks of the account index, as storage.queries finds them.
    newest = conn.execute("SELECT max(events.id) FROM events").fetchone()[0]

    def fetch(within: str, n: int) -> list[sqlite3.Row]:
        return conn.execute(f"{sql} AND {within} ORDER BY events.id DESC LIMIT ?",
                            [*params, n]).fetchall()

    return blocks.newest_page(newest, before, limit, fetch)


def plan_rows(conn: sqlite3.Connection, *, user_id: int | None,
              all_: bool) -> list[sqlite3.Row]:
    where, params = _where(
        [] if all_ else [("refill_plans.status != ?", "cancelled")],
        [("refill_plans.user_id = ?", user_id)] if user_id is not None else [],
    )
    return conn.execute(
        "SELECT refill_plans.*, users.name, users.tz "
        f"FROM refill_plans JOIN users ON users.id = refill_plans.user_id{where} "
        "ORDER BY refill_plans.id", params,
    ).fetchall()


def _where(*terms: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """`` WHERE a AND b`` of the given conditions, each ``(sql, *values)``, and the values."""
    used = [term for group in terms for term in group]
    if not used:
        return "", []
    return (" WHERE " + " AND ".join(sql for sql, *_ in used),
            [value for _, *values in used for value in values])
