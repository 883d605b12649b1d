"""Alembic, driven from code: the migration scripts ship inside the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

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


def upgrade(db: Db, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema to ``revision``; returns (before, after)."""
    before = db.schema_version()
    with db.write() as conn:
        command.upgrade(alembic_config(conn), revision)
    return before, db.schema_version()
