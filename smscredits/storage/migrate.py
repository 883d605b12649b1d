"""Alembic, driven from code: the migration scripts ship inside the package."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection

from smscredits.errors import DatabaseError

if TYPE_CHECKING:  # engine imports this module (to create a schema), not the reverse
    from smscredits.storage.engine import Db

SCRIPTS = Path(__file__).with_name("migrations")


def alembic_config(conn: object | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    # The connection travels in attributes, never the URL in an option: Alembic's option
    # interpolation chokes on a '%' in a password and prints it in the error.
    cfg.attributes["connection"] = conn
    return cfg


def head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


@contextmanager
def _keys_checked_at_end(db: Db, conn: Connection) -> Iterator[None]:
    """On SQLite, foreign keys off while tables are rebuilt (a parent table dropped and
    renamed back would fail its children's keys half-way) and checked as a whole before the
    transaction commits. SQLite only lets the setting change outside a transaction."""
    if not db.is_sqlite:
        yield
        return
    dbapi: Any = conn.connection.dbapi_connection
    dbapi.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        dbapi.execute("PRAGMA foreign_keys = ON")


def upgrade(db: Db, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema to ``revision``; returns (before, after)."""
    before = db.schema_version()
    try:
        with db.engine.connect() as conn, _keys_checked_at_end(db, conn), db.transaction(conn):
            command.upgrade(alembic_config(conn), revision)
    except CommandError:
        raise DatabaseError(
            f"database {db.shown} is at schema {before}, which this smscredits does not "
            "know: it was upgraded by a newer smscredits"
        ) from None
    return before, db.schema_version()
