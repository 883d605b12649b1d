"""Alembic, driven from code: the migration scripts ship inside the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from smscredits.errors import DatabaseError
from smscredits.storage.engine import Db, describe

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


def upgrade(db: Db, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema to ``revision``; returns (before, after)."""
    before = db.schema_version()
    try:
        with db.write() as conn:
            command.upgrade(alembic_config(conn), revision)
    except CommandError:
        raise DatabaseError(
            f"database {describe(db.url)} is at schema {before}, which this smscredits does not "
            "know: it was upgraded by a newer smscredits"
        ) from None
    return before, db.schema_version()
