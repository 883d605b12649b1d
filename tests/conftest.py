"""Shared fixtures: every test gets its own database, on SQLite and (when configured) Postgres.

Postgres tests need ``SMSCREDITS_TEST_PG`` (e.g. ``postgresql+psycopg://postgres@127.0.0.1/test``);
each test gets a schema of its own, dropped afterwards. Without the variable they are skipped
with that reason; with it, an unreachable server is an error, never a skip.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.serve_server"]  # its fixtures (`funded`) for every test file

PG_ENV = "SMSCREDITS_TEST_PG"
PG_SKIP = f"{PG_ENV} not set: Postgres tests skipped"
ENGINES = ["sqlite", "postgres"]


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test reads or writes the real config file, data dir or environment settings."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("SMSCREDITS_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg-config"))
    for name in ("SMSCREDITS_DB", "SMSCREDITS_DEFAULT_TZ", "SMSCREDITS_ACTOR", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "120")


def pg_base_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(PG_SKIP)
    return url


def _pg_conninfo(url: str) -> str:
    """A libpq conninfo from a SQLAlchemy URL (drops the +psycopg driver part)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A fresh, empty Postgres schema for one test, as a database URL."""
    import psycopg

    base = pg_base_url()
    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(_pg_conninfo(base), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(_pg_conninfo(base), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database URL on each engine."""
    if request.param == "sqlite":
        url = str(tmp_path / "credits.db")
    else:
        url = request.getfixturevalue("pg_schema_url")
    from smscredits.storage.engine import open_db
    from smscredits.storage.migrate import upgrade

    handle = open_db(url, check=False, actor="tester")
    upgrade(handle)
    handle.dispose()
    return url


@pytest.fixture
def db(db_url: str) -> Iterator[Any]:
    """The core's handle on a fresh database (actor ``tester``)."""
    from smscredits.storage.engine import open_db

    handle = open_db(db_url, actor="tester")
    yield handle
    handle.dispose()


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def jsonl(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


@pytest.fixture
def cli(db_url: str, monkeypatch: pytest.MonkeyPatch):
    """Run ``smscredits ARGS`` in-process through the CLI runner against the test database."""
    from typer.testing import CliRunner

    from smscredits.cli import app

    monkeypatch.setenv("SMSCREDITS_DB", db_url)
    monkeypatch.setenv("SMSCREDITS_ACTOR", "tester")
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Run:
        result = runner.invoke(app, list(args), input=input)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Run(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def plain_cli(monkeypatch: pytest.MonkeyPatch):
    """Run the CLI in-process with no database configured: each test passes ``--db`` itself.
    Returns the runner's result."""
    from typer.testing import CliRunner

    from smscredits.cli import app

    monkeypatch.setenv("SMSCREDITS_ACTOR", "tester")
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return run
