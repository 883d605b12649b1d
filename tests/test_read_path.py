"""The light read path: `log`, `events` and `credits balance` on an existing SQLite file run
on the stdlib sqlite3 and must say exactly what the SQLAlchemy path says."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from freezegun import freeze_time
from hypothesis import given, settings
from hypothesis import strategies as st

from smscredits.storage import engine, lite

DATABASE, NOT_FOUND = 7, 3
START = "2026-11-25 09:30:00"
READ_AT = "2026-11-27 08:15:00"  # after a day of refills; windows and next due times fixed

# Users, powers, credits changes, limits, prices, charges, a refund, refill plans (periodic,
# threshold, cancelled) and refills applied, a disabled user, a user without a power.
SEED: list[tuple[str, ...]] = [
    ("user", "add", "alice", "--tz", "Europe/Budapest"),
    ("user", "add", "bob"),
    ("user", "add", "carol", "--tz", "America/New_York"),
    # bob's power first: accounts are listed by name, not in the order they were made.
    ("power", "create", "bob", "credits", "--initial", "5.5", "--overdraft", "unlimited"),
    ("power", "create", "alice", "credits", "--initial", "100"),
    ("price", "set", "default", "1"),
    ("price", "set", "HU", "0.125"),
    ("limits", "set", "alice", "--daily", "10", "--monthly", "300"),
    ("credits", "add", "alice", "20", "--note", "invoice [bold]42[/bold] – paid"),
    ("credits", "add", "alice", "--", "-2.5"),
    ("credits", "set", "bob", "3"),
    ("charge", "alice", "--to", "+36301234567", "--parts", "3", "--id", "m-1"),
    ("charge", "alice", "--to", "+447911123456", "--parts", "2", "--id", "m-2"),
    ("charge", "bob", "--to", "+36301234567", "--text", "hello", "--id", "m-3"),
    ("refund", "m-2", "--note", "not delivered"),
    ("refill", "schedule", "alice", "--every", "day", "--at", "06:00", "--add", "5"),
    ("refill", "schedule", "bob", "--when-below", "2", "--top-up-to", "10"),
    ("refill", "schedule", "alice", "--every", "week", "--on", "fri", "--top-up-to", "500"),
    ("refill", "cancel", "3"),
    ("charge", "bob", "--to", "+36301234567", "--parts", "9", "--id", "m-4"),
    ("user", "disable", "bob"),
]


def _ok(run: Any, args: tuple[str, ...]) -> None:
    assert run.exit_code == 0, (args, run.stdout, run.stderr)


def seed(run: Callable[..., Any]) -> None:
    with freeze_time(START) as clock:
        for args in SEED:
            _ok(run(*args), args)
            clock.tick(61)
        clock.move_to("2026-11-26 07:00:00")
        _ok(run("refill", "run"), ("refill", "run"))


@pytest.fixture
def core_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Any]:
    """Turns the light path off: every command then takes the SQLAlchemy path."""
    def off() -> None:
        monkeypatch.setattr(lite, "open_lite", lambda *_a, **_k: None)
    return off


@pytest.fixture
def twins(cli: Any, tmp_path: Path, core_only: Callable[[], None],
          monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[Any, Any]]:
    """The same history in the engine's database and in a SQLite file; returns a function
    running one read command on both: (SQLAlchemy path on the engine, light path on SQLite)."""
    light_file = str(tmp_path / "light.db")
    seed(cli)
    seed(lambda *args: cli("--db", light_file, *args))
    opened: list[Any] = []
    real_open = lite.open_lite

    def spy(*a: Any, **k: Any) -> Any:
        opened.append(handle := real_open(*a, **k))
        return handle

    def both(*args: str) -> tuple[Any, Any]:
        with freeze_time(READ_AT):
            monkeypatch.setattr(lite, "open_lite", spy)
            opened.clear()
            light = cli("--db", light_file, *args)
            assert opened and opened[0] is not None, "the light path was not taken"
            core_only()
            core = cli(*args)
        return core, light

    return both


def same(core: Any, light: Any) -> None:
    assert (light.exit_code, light.stdout, light.stderr) == (
        core.exit_code, core.stdout, core.stderr), "the two paths differ"


LOG_READS = [
    ("log",), ("events",), ("log", "alice"), ("events", "alice"), ("events", "carol"),
    ("log", "bob", "--kind", "refill.applied", "--kind", "message.charged"),
    ("events", "--kind", "user.disabled"),
    # Seed step k runs at 09:30:00 + 61 k seconds: these bounds are instants of events.
    ("events", "--since", "2026-11-25T09:35:05Z", "--until", "2026-11-25T10:40:10+01:00"),
    ("log", "alice", "--since", "2026-11-25T09:38:08Z"),
    ("events", "--until", "2026-11-25T09:33:03Z"),
    ("events", "--since", "26h"),
    ("log", "--limit", "3"), ("log", "--limit", "3", "--before", "12"),
    ("events", "alice", "--limit", "2", "--before", "9"),
    ("events", "--before", "1"),
    ("log", "carol"),
]


MODES = [[], ["--json"], ["--jsonl"], ["--csv"]]


def test_log_and_events_read_the_same_on_both_paths(twins: Any) -> None:
    for args in LOG_READS:
        for mode in MODES:
            core, light = twins(*mode, *args)
            same(core, light)
            assert core.exit_code == 0, (args, core.stderr)
    kinds = {e["kind"] for e in twins("--json", "log", "alice")[1].json()}
    assert {"message.charged", "message.refunded", "refill.applied"} <= kinds


BALANCE_READS = [("credits", "balance", "alice"), ("credits", "balance", "bob"),
                 ("credits", "balance")]


def test_balance_reads_the_same_on_both_paths(twins: Any) -> None:
    for args in BALANCE_READS:
        for mode in MODES[:2]:
            core, light = twins(*mode, *args)
            same(core, light)
            assert core.exit_code == 0, (args, core.stderr)


def test_balance_panel_shows_windows_and_active_plans(twins: Any) -> None:
    _, light = twins("credits", "balance", "alice")
    panel = light.stdout
    assert "alice (Europe/Budapest)" in panel
    assert "resets 2026-11-28 00:00 CET" in panel  # the local day after READ_AT
    assert "add 5 every day at 06:00" in panel and "next 2026-11-28 06:00 CET" in panel
    assert "top up to 500" not in panel  # the cancelled plan


def test_disabled_flag_and_unlimited_overdraft_are_typed(twins: Any) -> None:
    _, light = twins("--json", "credits", "balance")
    bob = next(a for a in light.json() if a["user"] == "bob")
    assert (bob["disabled"], bob["overdraft"], bob["available"]) == (True, None, None)


def test_paging_walks_the_whole_log_without_gaps(twins: Any) -> None:
    everything = twins("--json", "events", "--limit", "1000")[1].json()
    pages: list[Any] = []
    before: list[str] = []
    while True:
        core, light = twins("--json", "events", "--limit", "4", *before)
        same(core, light)
        page = light.json()
        if not page:
            break
        pages += page
        before = ["--before", str(page[-1]["id"])]
    assert pages == everything and len(everything) > 8


def test_unknown_user_and_no_power_fail_the_same(twins: Any) -> None:
    for args in [("log", "nobody"), ("events", "nobody"), ("credits", "balance", "nobody"),
                 ("credits", "balance", "carol")]:
        for mode in MODES[:2]:
            core, light = twins(*mode, *args)
            same(core, light)
            assert core.exit_code == NOT_FOUND and core.stdout == ""
            assert ("'nobody'" if "nobody" in args else "no credits power") in core.stderr


# -- schema and unreadable files -------------------------------------------------------------


@pytest.fixture
def sqlite_file(tmp_path: Path, plain_cli: Any) -> Path:
    path = tmp_path / "credits.db"
    with freeze_time(START):
        for args in SEED[:5]:
            assert plain_cli("--db", str(path), *args).exit_code == 0
    return path


def _both_plain(plain_cli: Any, core_only: Callable[[], None],
                *args: str) -> tuple[Any, Any]:
    light = plain_cli(*args)
    core_only()
    return plain_cli(*args), light


def _break_schema(path: Path, how: str) -> None:
    import sqlite3

    with sqlite3.connect(path) as conn:
        if how == "outdated":
            conn.execute("UPDATE alembic_version SET version_num = '0000'")
        elif how == "missing":
            conn.execute("DROP TABLE alembic_version")
        elif how == "empty":
            conn.execute("DELETE FROM alembic_version")
    conn.close()


@pytest.mark.parametrize("how, needle", [("outdated", "is at schema 0000"),
                                         ("missing", "has no smscredits schema"),
                                         ("empty", "has no smscredits schema")])
def test_schema_problems_fail_the_same(sqlite_file: Path, plain_cli: Any, core_only: Any,
                                       monkeypatch: pytest.MonkeyPatch, how: str,
                                       needle: str) -> None:
    _break_schema(sqlite_file, how)
    real_open = lite.open_lite
    for args in [("log", "alice"), ("events",), ("credits", "balance", "alice"),
                 ("credits", "balance")]:
        for mode in MODES[:2]:
            monkeypatch.setattr(lite, "open_lite", real_open)
            core, light = _both_plain(plain_cli, core_only, "--db", str(sqlite_file), *mode,
                                      *args)
            same(core, light)
            assert core.exit_code == DATABASE and needle in core.stderr
            assert "db upgrade" in core.stderr


@pytest.mark.parametrize("content", [b"this is not a database, just some text" * 200, b""])
def test_unreadable_or_empty_file_fails_the_same(tmp_path: Path, plain_cli: Any,
                                                 core_only: Any, content: bytes) -> None:
    path = tmp_path / "odd file ü.db"
    path.write_bytes(content)
    core, light = _both_plain(plain_cli, core_only, "--db", str(path), "log", "alice")
    same(core, light)
    assert core.exit_code == DATABASE
    assert path.read_bytes() == content  # a read never writes


def test_a_missing_file_is_refused_by_a_read_and_never_created(tmp_path: Path,
                                                                plain_cli: Any) -> None:
    path = tmp_path / "new" / "credits.db"
    for args in (["--json", "log"], ["credits", "balance"]):
        run = plain_cli("--db", str(path), *args)
        assert run.exit_code == 7 and str(path) in run.stderr, run.stderr
    assert not path.parent.exists()
    # A command that creates what it was asked to creates the file (owner-only) as before.
    assert plain_cli("--db", str(path), "user", "add", "alice").exit_code == 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert plain_cli("--db", str(path), "--json", "credits", "balance").stdout.strip() == "[]"


def test_a_sqlite_url_takes_the_light_path_too(sqlite_file: Path, plain_cli: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSCREDITS_DB", f"sqlite:///{sqlite_file}")
    taken: list[Any] = []
    real_open = lite.open_lite
    monkeypatch.setattr(lite, "open_lite", lambda db: taken.append(real_open(db)) or taken[-1])
    run = plain_cli("--json", "credits", "balance", "alice")
    assert run.exit_code == 0 and json.loads(run.stdout)["balance"] == 100
    assert taken and taken[0] is not None


# -- the light path agrees with storage.engine ----------------------------------------------------


@pytest.mark.parametrize("setting", [
    "credits.db", "/var/lib/smscredits/credits.db", "~/credits.db", "dir with space/c.db",
    "sqlite:///credits.db", "sqlite:////abs/credits.db", "sqlite+pysqlite:///rel/c.db",
    "sqlite:///odd%20name%25.db", "sqlite:///ü.db", "sqlite:///:memory:", "sqlite://",
    "sqlite:///", "sqlite:////abs/c.db?timeout=5", "sqlite://host/c.db",
    "postgresql+psycopg://u:pw@localhost/x", "postgres://localhost/x",
])
def test_settings_resolve_as_the_engine_resolves_them(setting: str) -> None:
    found = lite.sqlite_file(setting)
    url = engine.to_url(setting)
    path = engine.sqlite_path(url)
    if found is None:
        # Only what the engine would not open as a plain file is left to it.
        assert path is None or url.query or url.host
        return
    assert Path(found[1]) == path
    assert lite.describe(*found) == engine.describe(url)


# -- no heavy imports ---------------------------------------------------------------------------


@pytest.mark.parametrize("args", [("log", "alice"), ("log", "alice", "--limit", "50"),
                                  ("events",), ("--json", "events", "--kind", "user.added"),
                                  ("credits", "balance", "alice"), ("credits", "balance")],
                         ids=" ".join)
def test_read_commands_on_sqlite_do_not_import_sqlalchemy(sqlite_file: Path,
                                                          args: tuple[str, ...]) -> None:
    code = (
        "import sys\n"
        "from smscredits.cli import main\n"
        "sys.argv = ['smscredits', *sys.argv[1:]]\n"
        "code = 0\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = [m for m in ('sqlalchemy', 'sqlmodel', 'pydantic', 'alembic') "
        "if m in sys.modules]\n"
        "print('EXIT', code, 'HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, "--db", str(sqlite_file), *args],
                         capture_output=True, text=True, check=True).stdout
    assert "EXIT 0 HEAVY []" in out, out
    assert "alice" in out


# -- tables written without Rich ----------------------------------------------------------------

TABLE_KEYS = [("id", "ID"), ("at", "At (UTC)"), ("user", "User"), ("kind", "Kind"),
              ("amount", "Amount"), ("balance_after", "Balance"), ("ref", "Ref"),
              ("note", "Note"), ("disabled", "Disabled")]
OPTIONAL = {"kind": 3, "ref": 2, "note": 1, "disabled": 1}
cell_text = st.text(st.sampled_from(" abcxyz019.-_:[]/\\'\"()=é€漢"), max_size=40)
cell_value = st.one_of(st.none(), st.booleans(), st.integers(-(10**9), 10**12), cell_text,
                       st.decimals(allow_nan=False, allow_infinity=False, places=3,
                                   min_value=-(10**6), max_value=10**6),
                       st.sampled_from(["2026-11-25T10:00:00Z", "1ca783854a74967a"]))


def _rich_table(records: list[dict[str, Any]], columns: Any, title: str | None) -> str:
    from smscredits.render import draw

    out = io.StringIO()
    draw(records, columns, title=title, out=out, optional=OPTIONAL)
    return out.getvalue()


@settings(max_examples=300, deadline=None)
@given(columns=st.lists(st.sampled_from(TABLE_KEYS), min_size=1, max_size=9,
                        unique_by=lambda c: c[0]),
       values=st.lists(st.lists(cell_value, min_size=9, max_size=9), min_size=1, max_size=8),
       title=st.one_of(st.none(), st.sampled_from(["Events", "Credit log of alice.b@x-y",
                                                   "A rather long title for a narrow table"])),
       width=st.one_of(st.none(), st.integers(20, 160)))
def test_tables_written_directly_are_what_rich_draws(columns: Any, values: Any,
                                                     title: str | None, width: int) -> None:
    from smscredits.render import Output

    records = [dict(zip([c[0] for c in TABLE_KEYS], row, strict=True)) for row in values]
    env = {"COLUMNS": str(width)} if width is not None else {}
    with mock.patch.dict(os.environ, env):
        if width is None:
            os.environ.pop("COLUMNS", None)
        out = io.StringIO()
        Output(mode="table", out=out).rows(records, columns, title=title, optional=OPTIONAL)
        assert out.getvalue() == _rich_table(records, columns, title)


def test_a_log_page_is_written_without_rich_and_as_rich_draws_it(sqlite_file: Path) -> None:
    code = (
        "import sys\n"
        "from smscredits.cli import main\n"
        "sys.argv = ['smscredits', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('RICH', 'rich' in sys.modules)\n"
    )
    args = ["--db", str(sqlite_file), "log", "alice"]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                         text=True, check=True).stdout
    page, rich_loaded = out.rsplit("RICH ", 1)
    assert rich_loaded.strip() == "False"
    rows = [r for r in page.splitlines() if "power.created" in r]
    assert len(rows) == 1 and rows[0].split()[-5:] == ["100", "100", "tester",  # the actor
                                                       "kind=credits", "overdraft=0"]


def test_a_terminal_still_gets_rich_styles(monkeypatch: pytest.MonkeyPatch) -> None:
    from smscredits.render import Output

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    monkeypatch.setenv("TERM", "xterm-256color")
    Output(mode="table", out=out).rows([{"id": 1, "kind": "user.added"}],
                                       [("id", "ID"), ("kind", "Kind")], title="Events")
    assert "\x1b[1m" in out.getvalue()  # the header in bold


@pytest.mark.parametrize("message, said", [
    ("database is locked", "unavailable: database is locked"),
    ("disk I/O error", "unavailable: disk I/O error"),
    ("attempt to write a readonly database",
     "is read-only: attempt to write a readonly database"),
    ("two\nlines\nmore", "unavailable: two lines"),
    ("", "unavailable: OperationalError"),
])
def test_a_failed_read_is_worded_alike_on_both_paths(message: str, said: str) -> None:
    """One wording (``lite.explain``), whether the driver's error comes bare (the light path)
    or wrapped by SQLAlchemy (the engine's)."""
    import sqlite3

    from sqlalchemy import exc

    setting = "/srv/odd name/credits.db"
    found = lite.sqlite_file(setting)
    assert found is not None
    error = sqlite3.OperationalError(message)
    expected = f"database sqlite:////srv/odd name/credits.db {said}"
    core = engine.explain(exc.OperationalError("SELECT 1", None, error), engine.to_url(setting))
    light = lite.explain(error, lite.describe(*found))
    assert (light.message, light.exit_code) == (core.message, core.exit_code) == (
        expected, DATABASE)
