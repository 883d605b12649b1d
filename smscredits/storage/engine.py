"""Engines: URL resolution, SQLite pragmas and locking, schema version check, error mapping."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url

from smscredits import config
from smscredits.errors import DatabaseError

# How a database is shown and a failure worded, HEAD (the Alembic head this code expects: a
# test checks it against the migration scripts, so that the per-command schema check needs
# no Alembic import) and the busy timeout live in storage.lite, whose read path must not
# import this module.
from smscredits.storage import lite
from smscredits.storage.hot import driver_errors
from smscredits.storage.lite import BUSY_TIMEOUT_MS, HEAD

if TYPE_CHECKING:
    from smscredits.holds import Rules

CACHE_KIB = 65_536


# What the pysqlite driver takes from a URL's query; the rest it ignores without uri=true.
_PYSQLITE_OPTIONS = frozenset({"uri", "timeout", "isolation_level", "detect_types",
                               "check_same_thread", "cached_statements"})
_URI_FORM = "give the file's path, or a SQLite URI as sqlite:///file:PATH?mode=ro&uri=true"


def to_url(text_: str) -> URL:
    """A database URL from a URL or a plain SQLite file path."""
    if "://" not in text_:
        if text_.startswith("file:"):  # SQLite would read it as a URI, or not, by build
            raise DatabaseError(f"unsupported database {config.mask_url(text_)!r}: a SQLite "
                                f"URI filename needs the URL form: {_URI_FORM}")
        return URL.create("sqlite", database=str(Path(text_).expanduser()))
    try:
        url = make_url(text_)
    except (exc.ArgumentError, ValueError):
        raise DatabaseError(f"malformed database URL {config.mask_url(text_)!r}") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise DatabaseError(
            f"unsupported database {url.drivername!r} in {config.mask_url(text_)!r}: "
            "use a SQLite path or postgresql+psycopg://"
        )
    if url.get_backend_name() == "sqlite":
        _check_sqlite_form(url, text_)
    return url


def _check_sqlite_form(url: URL, text_: str) -> None:
    """Refuse the SQLite URLs that would open another file than the one meant, or drop an
    option such as mode=ro without a word."""
    database = url.database or ""
    ignored = sorted(set(url.query) - _PYSQLITE_OPTIONS)
    if is_sqlite_uri(url):
        why = "" if database.startswith("file:") else "uri=true needs a file: name"
    elif database.startswith("file:"):
        why = "a file: name needs uri=true"
    else:
        why = f"option(s) {', '.join(ignored)} need a SQLite URI" if ignored else ""
    if why:
        raise DatabaseError(
            f"unsupported database {config.mask_url(text_)!r}: {why}; {_URI_FORM}")


def is_sqlite_uri(url: URL) -> bool:
    """Whether a SQLite URL names its file as a URI (``sqlite:///file:x.db?mode=ro&uri=true``)."""
    from sqlalchemy.util import asbool

    uri = url.query.get("uri", "false")
    return url.get_backend_name() == "sqlite" and asbool(uri if isinstance(uri, str) else uri[-1])


def describe(url: URL) -> str:
    """The URL as every output shows it: its secrets masked (``lite.describe``)."""
    return lite.describe(url.drivername, url.database, **_parts(url))


def _parts(url: URL) -> dict[str, Any]:
    """The URL's parts besides its driver and database, as ``lite.render_url`` takes them."""
    return {"user": url.username, "password": url.password, "host": url.host,
            "port": url.port, "query": url.query}


def sqlite_path(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if is_sqlite_uri(url):  # file:x.db, file:///abs/x.db: the path SQLite opens
        from urllib.parse import unquote, urlsplit

        return Path(unquote(urlsplit(url.database).path))
    return Path(url.database)


def _exists(path: Path) -> bool:
    """Whether the file exists; when that cannot be told (a directory we may not search),
    SQLite's own error says what is wrong."""
    try:
        return path.exists()
    except OSError:
        return True


def create_sqlite_file(path: Path) -> bool:
    """Create the file owner-only (0600 in a 0700 directory); True if it was new."""
    if path.exists():
        return False
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as e:
        raise DatabaseError(f"cannot create database file {path}: {e.strerror}") from None
    os.close(fd)
    import sqlite3

    # WAL lets readers run beside the writer; it persists in the file. Set it here, outside
    # any transaction, where SQLite allows it.
    # An absolute name, as the engine opens it: a relative "file:..." would be read as a URI.
    try:
        with closing(sqlite3.connect(os.path.abspath(path))) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
    except sqlite3.Error as e:
        path.unlink(missing_ok=True)
        raise DatabaseError(f"cannot create database file {path}: {e}") from None
    return True


def make_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, connect_args={"connect_timeout": 10})


def _sqlite_connect(dbapi_conn: object, _record: object) -> None:
    # Take transactions into our own hands: pysqlite's implicit BEGIN is deferred, and a
    # deferred read-then-write transaction fails with "database is locked" under load.
    dbapi_conn.isolation_level = None  # type: ignore[attr-defined]
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys = ON")
    # Up to 64 MiB of pages in memory (SQLite's default is 2 MiB), taken only as pages are
    # read: a charge batch touches pages all over the account table and the journal's
    # indexes, which a small cache reads again from the OS batch after batch. Measured on
    # batches of 1000: a quarter off on a 1M-event journal; no change on a 10M one, whose
    # index is far bigger than any cache.
    cur.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock up front so that concurrent writers queue on the busy
    # timeout instead of failing; readers stay deferred so they never block writers.
    sql = "BEGIN" if conn.get_execution_options().get("readonly") else "BEGIN IMMEDIATE"
    # On the driver: a one-message charge is a transaction, and the statement machinery
    # around `exec_driver_sql` costs more than BEGIN itself.
    dbapi: Any = conn.connection.dbapi_connection
    with driver_errors(conn, sql):
        dbapi.execute(sql)


# WAL pages between checkpoints: SQLite's default, and the one for runs of big batches.
CHECKPOINT_PAGES = 1_000
BULK_CHECKPOINT_PAGES = 10_000


def set_checkpoint_pages(conn: Connection, pages: int) -> None:
    """How often this SQLite connection checkpoints its WAL.

    Big charge batches rewrite the same account pages; checkpointing every ~40 MB instead
    of every 4 MB copies them into the database file once for many batches (measured: 9 %
    off a bulk charge, 17 % with a 1M-event journal). Small commits keep the default: the
    WAL file then stops growing early, and a commit into a file that grows costs its fsync
    more (0.15 ms of a one-message charge).
    """
    conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint = {int(pages)}")


def explain(e: exc.DBAPIError, url: URL) -> DatabaseError:
    """A one-line, secret-free message for a database failure (``lite.explain``)."""
    secrets = lite.render_url(url.drivername, url.database, **_parts(url), hide_password=False)
    return lite.explain(e, describe(url), said=None if e.orig is None else str(e.orig),
                        url=secrets)


# Postgres' deadlock_detected and serialization_failure: the transaction was rolled back.
TRANSIENT_STATES = frozenset(("40P01", "40001"))


class Db:
    """An open database: the engine plus who acts and how to run a transaction."""

    def __init__(self, engine: Engine, url: URL, *, actor: str, default_tz: str) -> None:
        self.engine = engine
        self.url = url
        self.actor = actor
        self.default_tz = default_tz
        self.is_sqlite = url.get_backend_name() == "sqlite"
        self._hold_rules: Rules | None = None

    @property
    def hold_rules(self) -> Rules:
        """The hold settings in force (``holds.rules_from_config``), read once."""
        if self._hold_rules is None:
            from smscredits.holds import rules_from_config

            self._hold_rules = rules_from_config()
        return self._hold_rules

    @hold_rules.setter
    def hold_rules(self, rules: Rules) -> None:
        self._hold_rules = rules

    @property
    def shown(self) -> str:
        """The database as every output names it (``describe``: secrets masked)."""
        return describe(self.url)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction: committed when the block ends, rolled back on error."""
        with self._explained(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def transaction(self, conn: Connection) -> Iterator[Connection]:
        """A write transaction on a connection the caller keeps (``write`` takes one from
        the pool for each): committed when the block ends, rolled back on error."""
        with self._explained(), conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """One read-only transaction whose statements all see the same snapshot, however
        many commits land meanwhile (``verify`` compares tables with the journal). SQLite's
        deferred transaction in WAL mode is one by itself; on Postgres it takes REPEATABLE
        READ, which costs nothing more: the driver puts it in the same BEGIN, and a
        read-only transaction never meets a serialization failure."""
        with self._explained(), self.engine.connect() as conn:
            if self.is_sqlite:
                conn = conn.execution_options(readonly=True)
            else:
                conn = conn.execution_options(readonly=True, isolation_level="REPEATABLE READ",
                                              postgresql_readonly=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _explained(self) -> Iterator[None]:
        """A database failure as one password-free line (``explain``)."""
        try:
            yield
        except (exc.OperationalError, exc.InterfaceError) as e:
            error = explain(e, self.url)
            error.transient = (e.connection_invalidated
                               or getattr(e.orig, "sqlstate", None) in TRANSIENT_STATES)
            raise error from None

    def schema_version(self) -> str | None:
        exists = (
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            if self.is_sqlite
            else "SELECT to_regclass('alembic_version') IS NOT NULL"
        )
        with self.read() as conn:
            if not conn.exec_driver_sql(exists).scalar():
                return None
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()

    def check_schema(self) -> None:
        version = self.schema_version()
        if version == HEAD:
            return
        if version is None:
            raise DatabaseError(
                f"database {describe(self.url)} has no smscredits schema: "
                "run `smscredits db upgrade`"
            )
        raise DatabaseError(
            f"database {describe(self.url)} is at schema {version}, this smscredits needs "
            f"{HEAD}: run `smscredits db upgrade`"
        )

    def dispose(self) -> None:
        self.engine.dispose()


def open_db(
    db: str | None = None,
    *,
    actor: str | None = None,
    check: bool = True,
    create: bool = True,
) -> Db:
    """Open the database the settings point to. A missing SQLite file is created and migrated
    with ``create``; without it, it is a DatabaseError naming the file, so that a mistyped
    path fails instead of working on a new, empty database."""
    url = to_url(config.resolve("db", db).value or "")
    path = sqlite_path(url)
    if path is not None and not _exists(path):
        if is_sqlite_uri(url):  # mode=ro, mode=rw...: a URI is for a file that exists
            raise DatabaseError(f"database file {path} does not exist (a SQLite URI opens an "
                                "existing file only): check the database setting")
        if not create:
            raise DatabaseError(
                f"database file {path} does not exist: check the database setting (smscredits "
                "config show), or create it with `smscredits db upgrade` or `smscredits user "
                "add`")
    is_new = create_sqlite_file(path) if path is not None else False
    handle = Db(
        make_engine(url),
        url,
        actor=actor or config.resolve("actor").value or "unknown",
        default_tz=config.resolve("default_tz").value or "UTC",
    )
    try:
        if is_new:
            from smscredits.storage.migrate import upgrade

            upgrade(handle)
        elif check:
            handle.check_schema()
    except exc.DBAPIError as e:
        handle.dispose()
        raise explain(e, url) from None
    return handle
