"""The read queries of ``storage.sql`` give the same rows through both runners: SQLAlchemy
(``storage.queries``) and the stdlib ``sqlite3`` (``storage.lite``) on the same SQLite file,
and SQLAlchemy on Postgres over the same history; with the same keys, in the same order, and
values of the same types (booleans as bool through SQLAlchemy on every database)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from smscredits.storage import engine, lite, queries, sql
from smscredits.storage.engine import open_db
from tests.test_read_path import seed

BOOLEANS = {"disabled", "armed"}
ALICE, BOB, CAROL = 1, 2, 3  # user ids, in the order SEED adds them

NO_FILTER: dict[str, Any] = {"user_id": None, "since": None, "until": None, "kinds": None,
                             "before": None, "limit": 50, "credit_only": False}
# Seed step k runs at 09:30:00 + 61 k seconds (in microseconds since the epoch).
AT_3 = 1_795_599_183_000_000

# (function, arguments) of each query, as the read API calls them and beyond.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("user_row", {"name": "alice"}), ("user_row", {"name": "bob"}),
    ("user_row", {"name": "nobody"}),
    *[("account_rows", {"user": user, "kind": kind})
      for user in (None, "alice", "bob", "carol", "nobody") for kind in (None, "credits", "sms")],
    *[("event_rows", {**NO_FILTER, **case}) for case in (
        {}, {"limit": 1}, {"limit": 3, "before": 12}, {"before": 1}, {"before": 10_000},
        {"user_id": ALICE}, {"user_id": BOB, "limit": 2}, {"user_id": CAROL},
        {"user_id": ALICE, "before": 9, "limit": 2}, {"user_id": 99},
        {"kinds": ["message.charged"]}, {"kinds": ["refill.applied", "message.charged"]},
        {"user_id": BOB, "kinds": ["refill.applied", "message.charged"]},
        {"credit_only": True}, {"user_id": ALICE, "credit_only": True, "limit": 4},
        {"since": AT_3}, {"until": AT_3}, {"since": AT_3, "until": AT_3 + 300_000_000},
        {"user_id": ALICE, "since": AT_3, "kinds": ["credits.added"], "credit_only": True},
    )],
    *[("plan_rows", {"user_id": user_id, "all_": all_})
      for user_id in (None, ALICE, BOB, CAROL) for all_ in (False, True)],
]


def plain(rows: Any) -> list[dict[str, Any]]:
    """Rows of either runner as dicts, keys in the columns' order."""
    if rows is None:
        return []
    rows = rows if isinstance(rows, list) else [rows]
    # keys(): iterating a sqlite3.Row gives its values
    return [{key: row[key] for key in row.keys()} for row in rows]  # noqa: SIM118


def assert_same(core: list[dict[str, Any]], light: list[dict[str, Any]], what: Any) -> None:
    assert [list(r) for r in core] == [list(r) for r in light], what
    assert core == light, what  # True == 1: the types are checked below
    for c, l_ in zip(core, light, strict=True):
        for key, value in c.items():
            if key in BOOLEANS:
                assert isinstance(value, bool) and l_[key] in (0, 1), (what, key)
            else:
                assert type(value) is type(l_[key]), (what, key, value, l_[key])


@pytest.fixture
def both(db_url: str, cli: Any, plain_cli: Any, tmp_path: Path
         ) -> Iterator[Callable[[str, dict[str, Any]], tuple[Any, Any]]]:
    """The same history in the engine's database and in a SQLite file (the engine's own when
    it is SQLite); runs a query through SQLAlchemy on the engine's database and through
    sqlite3 on the SQLite file."""
    light_file = db_url if not db_url.startswith("postgresql") else str(tmp_path / "light.db")
    seed(cli)
    if light_file != db_url:
        seed(lambda *args: plain_cli("--db", light_file, *args))
    light = lite.open_lite(light_file)
    assert light is not None
    core = open_db(db_url)

    def run(name: str, args: dict[str, Any]) -> tuple[Any, Any]:
        with core.read() as conn:
            core_rows = plain(getattr(queries, name)(conn, **args))
        with light.read() as conn:
            light_rows = plain(getattr(lite, name)(conn, **args))
        return core_rows, light_rows

    yield run
    light.close()
    core.dispose()


def test_every_query_gives_the_same_rows_through_both_runners(both: Any) -> None:
    for name, args in CASES:
        core, light = both(name, args)
        assert_same(core, light, (name, args))
    # The cases find something: each kind of row, and pages cut short.
    assert both("user_row", {"name": "bob"})[0][0]["disabled"] is True
    assert len(both("event_rows", {**NO_FILTER, "user_id": ALICE})[1]) > 8
    assert len(both("event_rows", {**NO_FILTER, "limit": 3, "before": 12})[1]) == 3
    assert {p["status"] for p in both("plan_rows", {"user_id": None, "all_": True})[1]} == {
        "active", "cancelled"}
    assert [type(p["armed"]) for p in both("plan_rows", {"user_id": BOB, "all_": True})[0]] == [
        bool]


def test_the_plan_and_user_queries_of_the_write_side(db_url: str, cli: Any) -> None:
    """By id, by status, and locked (``FOR UPDATE`` on Postgres, inside a write)."""
    seed(cli)
    db = open_db(db_url)
    try:
        with db.write() as conn:
            every = plain(queries.plan_rows(conn))
            assert [p["id"] for p in every] == [1, 2, 3]
            assert plain(queries.plan_rows(conn, plan_id=2, lock=True)) == [every[1]]
            assert plain(queries.plan_rows(conn, plan_id=4, lock=True)) == []
            assert plain(queries.plan_rows(conn, status="active")) == every[:2]
            assert plain(queries.plan_rows(conn, all_=False)) == every[:2]
            assert plain(queries.user_row(conn, "bob", lock=True)) == plain(
                queries.user_row(conn, "bob"))
            assert queries.top_block(conn) == 0
    finally:
        db.dispose()


def test_the_sql_of_a_query_is_one_text_with_named_parameters() -> None:
    text, params = sql.events(user_id=7, since=1, until=2, kinds=["a", "b"], before=9,
                              credit_only=True, limit=5, within="(events.id >> 15) IN (0)")
    assert text == (
        "SELECT events.*, users.name FROM events LEFT OUTER JOIN users ON users.id = "
        "events.user_id WHERE events.at >= :since AND events.at < :until AND events.kind IN "
        "(:kind_0, :kind_1) AND (events.amount IS NOT NULL OR events.kind IN ('message.held', "
        "'message.voided', 'message.expired')) AND events.id < :before AND "
        "events.user_id = :user_id AND (events.id >> 15) IN (0) ORDER BY events.id DESC "
        "LIMIT :limit")
    assert params == {"since": 1, "until": 2, "kind_0": "a", "kind_1": "b", "before": 9,
                      "user_id": 7, "limit": 5}
    assert sql.user("x", lock=True)[0].endswith(" FOR UPDATE")
    assert sql.plans(plan_id=1, lock=True)[0].endswith(
        "ORDER BY refill_plans.id FOR UPDATE OF refill_plans")


def test_the_light_path_does_not_import_sqlalchemy() -> None:
    import subprocess
    import sys

    code = ("import sys, smscredits.storage.lite, smscredits.storage.sql, smscredits.reads\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# -- one way of showing a database ------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "sqlite:///credits.db", "sqlite:////abs/dir with space/c.db", "sqlite:///odd%20name%25.db",
    "sqlite:///ü.db", "sqlite://", "sqlite:///:memory:", "sqlite+pysqlite:///a+b.db",
    "sqlite:///file:x.db?mode=ro&uri=true",
    "postgresql+psycopg://gw:s%40cret@db1:5433/sms?sslmode=require&application_name=a%20b",
    "postgresql+psycopg://gw@[::1]/sms", "postgresql+psycopg://db1/sms?options=-c%20x&options=y",
    "postgresql+psycopg://u:p@h/d?password=x&sslkey=/k&z=1",
])
def test_a_url_is_shown_as_sqlalchemy_renders_it(url: str) -> None:
    """``lite.render_url`` replaces ``URL.render_as_string``: every output naming a database
    keeps its text, masked or not."""
    from smscredits import config

    parsed = make_url(url)
    parts = {"user": parsed.username, "password": parsed.password, "host": parsed.host,
             "port": parsed.port, "query": parsed.query}
    for hide in (True, False):
        assert lite.render_url(parsed.drivername, parsed.database, **parts,
                               hide_password=hide) == parsed.render_as_string(hide_password=hide)
    assert engine.describe(parsed) == config.mask_url(parsed.render_as_string())
