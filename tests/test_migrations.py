"""The shipped migrations build exactly the schema the models describe, and a database made
by an older smscredits upgrades in place, its data kept."""

from __future__ import annotations

import json
from typing import Any

import pytest

from smscredits.storage.engine import HEAD, open_db
from smscredits.storage.migrate import head


# Alembic cannot compare an index on an expression; test_account_index checks that one.
@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_migrations_build_the_schema_of_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from smscredits.storage.models import metadata

    handle = open_db(db_url)
    try:
        with handle.read() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        handle.dispose()
    assert diffs == []
    assert head() == HEAD


def _downgrade(db_url: str, revision: str) -> None:
    from alembic import command

    from smscredits.storage.migrate import alembic_config

    handle = open_db(db_url, check=False)
    try:
        with handle.write() as conn:
            command.downgrade(alembic_config(conn), revision)
    finally:
        handle.dispose()


def test_a_database_of_the_first_schema_upgrades_with_its_messages(cli: Any,
                                                                   db_url: str) -> None:
    for args in (["user", "add", "alice"],
                 ["power", "create", "alice", "credits", "--initial", "10"],
                 ["price", "set", "default", "1"],
                 ["charge", "alice", "--to", "+36301234567", "--parts", "3", "--id", "m-1"]):
        assert cli(*args).exit_code == 0
    _downgrade(db_url, "0001")  # as the first release left it
    refused = cli("usage", "alice")
    assert refused.exit_code != 0 and "db upgrade" in refused.stderr
    assert cli("db", "upgrade").exit_code == 0
    rows = json.loads(cli("usage", "alice", "--json").stdout)
    assert [(r["messages"], r["parts"], r["spent"]) for r in rows] == [(1, 3, 3)]
    assert json.loads(cli("credits", "balance", "alice", "--json").stdout)["balance"] == 7


def test_schema_0004_keeps_deleted_ids_unused_and_stamps_each_account(cli: Any,
                                                                     db_url: str) -> None:
    for args in (["user", "add", "a"], ["user", "add", "b"],
                 ["power", "create", "a", "credits", "--initial", "10"],
                 ["power", "create", "b", "credits", "--initial", "5"],
                 ["power", "delete", "b", "credits", "--force"]):
        assert cli(*args).exit_code == 0
    _downgrade(db_url, "0003")
    handle = open_db(db_url, check=False)
    try:
        with handle.write() as conn:
            if handle.is_sqlite:  # as a database made before 0004: no id counter kept
                conn.exec_driver_sql("DELETE FROM sqlite_sequence")
    finally:
        handle.dispose()
    assert cli("db", "upgrade").exit_code == 0
    assert cli("power", "create", "b", "credits").exit_code == 0
    powers = {p["user"]: p["power_id"] for p in cli("power", "list", "--json").json()}
    assert powers == {"a": 1, "b": 3}
    assert cli("verify").exit_code == 0
    handle = open_db(db_url)
    try:
        with handle.read() as conn:
            last_at, latest = conn.exec_driver_sql(
                "SELECT last_at, (SELECT max(at) FROM events WHERE power_id = 1) "
                "FROM powers WHERE id = 1").one()
    finally:
        handle.dispose()
    assert last_at == latest > 0
