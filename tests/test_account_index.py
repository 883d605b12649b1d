"""A user's events are found through the block-led account index: every page of ``log`` and
``events``, ``usage`` and ``verify`` see exactly the user's events, across blocks, on both
engines; and the index is the one the queries use."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from sqlalchemy import text

from smscredits.storage import blocks
from smscredits.storage.engine import open_db

BLOCK = 1 << blocks.BITS


def _sql(db_url: str, sql: str, **params: Any) -> list[Any]:
    handle = open_db(db_url, actor="tester")
    try:
        with handle.write() as conn:
            result = conn.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        handle.dispose()


def _jump_ids(db_url: str, to: int) -> None:
    """Make the next event's id ``to`` or more, leaving the blocks between empty."""
    if db_url.startswith("postgresql"):
        _sql(db_url, "SELECT setval(pg_get_serial_sequence('events', 'id'), :to)", to=to)
    else:  # SQLite numbers a row after the highest id: leave one there
        _sql(db_url, "INSERT INTO events (id, at, kind, actor) VALUES (:to, 0, 'price.set', 'x')",
             to=to)


def _ids(rows: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in rows]


@pytest.fixture
def spread(cli: Any, db_url: str) -> dict[str, Any]:
    """alice's and bob's events in blocks 0, 2, 3, 5 and 9 (the others empty)."""
    for args in (["user", "add", "alice"], ["user", "add", "bob"],
                 ["power", "create", "alice", "credits", "--initial", "1000"],
                 ["power", "create", "bob", "credits", "--initial", "1000"],
                 ["price", "set", "default", "1"]):
        assert cli(*args).exit_code == 0, args
    n = 0
    for block in (2, 3, 5, 9):
        _jump_ids(db_url, block * BLOCK + 7)
        for who in ("alice", "bob", "alice", "alice", "bob"):
            n += 1
            done = cli("charge", who, "--to", "+36301234567", "--parts", "1",
                       "--id", f"m-{n}")
            assert done.exit_code == 0, done.stderr
        assert cli("credits", "add", "alice", "2", "--note", f"block {block}").exit_code == 0
    (alice_id,) = _sql(db_url, "SELECT id FROM users WHERE name = 'alice'")[0]
    expected = [r[0] for r in _sql(
        db_url, "SELECT id FROM events WHERE user_id = :u ORDER BY id DESC", u=alice_id)]
    credit = [r[0] for r in _sql(
        db_url, "SELECT id FROM events WHERE user_id = :u AND amount IS NOT NULL "
        "ORDER BY id DESC", u=alice_id)]
    return {"all": expected, "credit": credit}


def test_the_events_of_a_user_spread_over_blocks_are_all_found(cli: Any, spread: Any) -> None:
    assert {blocks.of(i) for i in spread["all"]} == {0, 2, 3, 5, 9}
    assert len(spread["all"]) == 2 + 4 * 4  # user.added, power.created; 3 charges + 1 add
    assert _ids(cli("events", "alice", "--json", "--limit", "1000").json()) == spread["all"]
    assert _ids(cli("log", "alice", "--json").json()) == spread["credit"]


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
def test_pages_of_a_users_events_join_up_across_blocks(cli: Any, spread: Any,
                                                       limit: int) -> None:
    seen: list[int] = []
    args = ["events", "alice", "--json", "--limit", str(limit)]
    while True:
        page = _ids(cli(*args, *(["--before", str(seen[-1])] if seen else [])).json())
        assert len(page) <= limit
        if not page:
            break
        seen += page
    assert seen == spread["all"]


def test_filters_apply_in_every_block(cli: Any, spread: Any) -> None:
    charged = cli("log", "alice", "--kind", "message.charged", "--json", "--limit", "4").json()
    assert [r["kind"] for r in charged] == ["message.charged"] * 4
    assert [r["ref"] for r in charged] == ["m-19", "m-18", "m-16", "m-14"]
    added = cli("log", "alice", "--kind", "credits.added", "--json").json()
    assert [r["note"] for r in added] == ["block 9", "block 5", "block 3", "block 2"]
    # a page that starts in an empty block, and one past the newest event
    older = cli("events", "alice", "--json", "--before", str(9 * BLOCK)).json()
    assert _ids(older) == [i for i in spread["all"] if i < 9 * BLOCK]
    beyond = cli("events", "alice", "--json", "--before", str(10**15)).json()
    assert _ids(beyond) == spread["all"][:50]


def test_usage_and_verify_see_every_block(cli: Any, spread: Any) -> None:
    rows = cli("usage", "alice", "--json").json()
    assert sum(r["messages"] for r in rows) == 12
    report = cli("verify", "--json")
    assert report.exit_code == 0 and report.json()["ok"] is True


def test_verify_finds_an_altered_event_in_a_later_block(cli: Any, db_url: str,
                                                        spread: Any) -> None:
    victim = next(i for i in spread["credit"] if blocks.of(i) == 5)
    _sql(db_url, "UPDATE events SET amount = amount - 1 WHERE id = :i", i=victim)
    report = cli("verify", "--json")
    assert report.exit_code != 0
    chain = [p for p in report.json()["problems"] if p["check"] == "chain"]
    assert [(p["user"], p["event_id"]) for p in chain] == [("alice", victim)]


def test_the_account_index_is_led_by_the_block(db_url: str) -> None:
    if db_url.startswith("postgresql"):
        defs = [r[0] for r in _sql(db_url, "SELECT indexdef FROM pg_indexes "
                                   "WHERE schemaname = current_schema() AND tablename = 'events' "
                                   "AND indexname LIKE 'ix_%'")]
        assert sorted(d.split(" USING btree ")[1] for d in defs) == [
            "(((id >> 15)), user_id, id)", "(at)"]
    else:
        defs = [r[0] for r in _sql(db_url, "SELECT sql FROM sqlite_master WHERE type = 'index' "
                                   "AND tbl_name = 'events' AND sql IS NOT NULL")]
        assert sorted(d.split(" ON events ")[1] for d in defs) == [
            "((id >> 15), user_id, id)", "(at)"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_users_page_seeks_the_account_index(cli: Any, db_url: str, spread: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The SQL a read command sends is served by the index: a query the index does not
    match would still be correct, only as slow as a scan of the whole journal."""
    plans: list[str] = []
    real_connect = sqlite3.connect

    def tracing(*args: Any, **kw: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kw)
        conn.set_trace_callback(lambda sql: plans.append(sql))
        return conn

    monkeypatch.setattr(sqlite3, "connect", tracing)
    assert cli("log", "alice", "--limit", "3").exit_code == 0
    paged = [s for s in plans if "IN (" in s and "events.user_id" in s]
    assert paged, plans
    check = real_connect(db_url)
    try:
        for sql in paged:
            plan = " ".join(r[3] for r in check.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "USING INDEX ix_events_block_user_id" in plan, plan
    finally:
        check.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_both_sqlite_read_paths_page_the_blocks_alike(db_url: str, spread: Any) -> None:
    """``storage.lite`` (the read commands) and ``storage.queries`` (the Python API) find
    the same rows for every page, filter and starting point."""
    from smscredits import reads
    from smscredits.storage.lite import open_lite

    light = open_lite(db_url)
    assert light is not None
    engine = open_db(db_url)
    try:
        starts = [None, *spread["all"][::3], 9 * BLOCK, 3 * BLOCK + 1, 1]
        for before in starts:
            for limit in (1, 4, 50):
                for kinds in (None, ["message.charged"], ["credits.added", "user.added"]):
                    args = {"before": before, "limit": limit, "kinds": kinds}
                    lite_rows = reads.query_events(light, "alice", **args)
                    core_rows = reads.query_events(engine, "alice", **args)
                    assert lite_rows == core_rows, args
                    assert [r.id for r in lite_rows] == sorted(
                        (r.id for r in lite_rows), reverse=True)
    finally:
        light.close()
        engine.dispose()
