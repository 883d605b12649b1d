"""Bad input: a one-line error naming the input, a documented exit code, nothing changed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from smscredits.storage.engine import open_db
from tests.helpers import dump

USAGE, NOT_FOUND, CONFLICT, DATABASE = 2, 3, 6, 7
LONG_NAME = "a" * 65
SECRET = "secret"


def seed(cli: Any) -> None:
    """alice with a credits power holding 10 credits; bob without a power."""
    for args in (("user", "add", "alice"), ("power", "create", "alice", "credits",
                                            "--initial", "10"), ("user", "add", "bob")):
        run = cli(*args)
        assert run.exit_code == 0, run.stderr


def assert_clean_error(run: Any, code: int, needle: str) -> None:
    """The exit code, one line on stderr naming the input, nothing on stdout, no traceback."""
    everything = run.stdout + run.stderr
    assert run.exit_code == code, (run.exit_code, run.stdout, run.stderr)
    assert "Traceback" not in everything
    assert SECRET not in everything
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert needle in lines[0]


def assert_json_error(run: Any, code: int, needle: str) -> None:
    everything = run.stdout + run.stderr
    assert run.exit_code == code, (run.exit_code, run.stdout, run.stderr)
    assert "Traceback" not in everything
    assert SECRET not in everything
    assert run.stdout == ""
    doc = json.loads(run.stderr)
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}
    assert isinstance(doc["error"]["code"], str) and doc["error"]["code"]
    assert needle in doc["error"]["message"]


def assert_refused(cli: Any, db: Any, args: tuple[str, ...], code: int, needle: str) -> None:
    """Plain and --json runs both refused cleanly; the database is unchanged."""
    before = dump(db)
    assert_clean_error(cli(*args), code, needle)
    assert_json_error(cli("--json", *args), code, needle)
    assert dump(db) == before


def case(id_: str, code: int, needle: str, *args: str) -> Any:
    return pytest.param(args, code, needle, id=id_)


BAD_AMOUNTS = ["abc", "NaN", "nan", "inf", "-inf", "1e999", "1e3", "0.0001", "1,5", " 5",
               "5٠", "0x10", "", "1.", "--5", "5 credits"]

CASES = [
    # not found, conflicts
    case("unknown-user-add", NOT_FOUND, "'nobody'", "credits", "add", "nobody", "5"),
    case("unknown-user-set", NOT_FOUND, "'nobody'", "credits", "set", "nobody", "5"),
    case("unknown-user-show", NOT_FOUND, "'nobody'", "user", "show", "nobody"),
    case("unknown-user-disable", NOT_FOUND, "'nobody'", "user", "disable", "nobody"),
    case("unknown-user-power", NOT_FOUND, "'nobody'", "power", "create", "nobody", "credits"),
    case("unknown-user-balance", NOT_FOUND, "'nobody'", "credits", "balance", "nobody"),
    case("unknown-user-log", NOT_FOUND, "'nobody'", "log", "nobody"),
    case("user-without-power", NOT_FOUND, "'bob'", "credits", "add", "bob", "5"),
    case("duplicate-user", CONFLICT, "'alice'", "user", "add", "alice"),
    case("power-created-twice", CONFLICT, "'alice'", "power", "create", "alice", "credits"),
    case("power-delete-with-credits", CONFLICT, "'alice'", "power", "delete", "alice", "credits"),
    # amounts
    *(case(f"add-amount-{a!r}", USAGE, repr(a), "credits", "add", "alice", a)
      for a in BAD_AMOUNTS),
    *(case(f"set-amount-{a!r}", USAGE, repr(a), "credits", "set", "alice", a)
      for a in ("abc", "NaN", "1e999", "0.0001", "")),
    case("add-zero", USAGE, "'0'", "credits", "add", "alice", "0"),
    case("amount-too-large", USAGE, "'1000000000000000'",
         "credits", "add", "alice", "1000000000000000"),
    case("initial-nan", USAGE, "'NaN'", "power", "create", "bob", "credits", "--initial", "NaN"),
    case("initial-too-precise", USAGE, "'0.0001'",
         "power", "create", "bob", "credits", "--initial", "0.0001"),
    case("initial-below-overdraft", USAGE, "-5",
         "power", "create", "bob", "credits", "--initial", "-5"),
    case("overdraft-abc", USAGE, "'abc'",
         "power", "create", "bob", "credits", "--overdraft", "abc"),
    case("overdraft-negative", USAGE, "'-5'",
         "power", "create", "bob", "credits", "--overdraft", "-5"),
    case("unknown-power-kind", USAGE, "'sms'", "power", "create", "bob", "sms"),
    case("note-too-long", USAGE, "note", "credits", "add", "alice", "1", "--note", "n" * 1001),
    # names
    case("empty-name", USAGE, "''", "user", "add", ""),
    case("65-char-name", USAGE, LONG_NAME, "user", "add", LONG_NAME),
    case("name-with-space", USAGE, "'a b'", "user", "add", "a b"),
    case("name-with-semicolon", USAGE, "'a;b'", "user", "add", "a;b"),
    case("name-with-slash", USAGE, "'a/b'", "user", "add", "a/b"),
    case("name-with-markup", USAGE, "'[red]x[/red]'", "user", "add", "[red]x[/red]"),
    case("name-non-ascii", USAGE, "'álmos'", "user", "add", "álmos"),
    # zones
    case("unknown-zone", USAGE, "'Mars/Olympus'", "user", "add", "carol", "--tz", "Mars/Olympus"),
    case("empty-zone", USAGE, "''", "user", "add", "carol", "--tz", ""),
    case("zone-path-trick", USAGE, "'../../etc/passwd'",
         "user", "add", "carol", "--tz", "../../etc/passwd"),
    # log filters
    case("limit-negative", USAGE, "--limit", "log", "--limit", "-1"),
    case("limit-not-a-number", USAGE, "--limit", "log", "--limit", "ten"),
    case("since-garbage", USAGE, "'yesterday-ish'", "log", "--since", "yesterday-ish"),
    case("until-garbage", USAGE, "'2026-13-45'", "events", "--until", "2026-13-45"),
    case("since-after-until", USAGE, "--since", "log", "--since", "2026-02-01",
         "--until", "2026-01-01"),
    case("since-age-out-of-range", USAGE, "999999w", "log", "--since", "999999w"),
    case("until-out-of-range", USAGE, "9999-12-31T23:59:59-01:00",
         "log", "--until", "9999-12-31T23:59:59-01:00"),
    case("before-out-of-range", USAGE, "99999999999999999999",
         "log", "--before", "99999999999999999999"),
    # database URLs (the password must never be shown)
    case("malformed-url", DATABASE, "[bad",
         "--db", "postgresql+psycopg://u:secret@[bad", "user", "add", "carol"),
    case("malformed-port", DATABASE, "notaport",
         "--db", "postgresql+psycopg://u:secret@127.0.0.1:notaport/x", "user", "add", "carol"),
    case("unsupported-url", DATABASE, "foo", "--db", "foo://x", "user", "add", "carol"),
    case("unsupported-url-password", DATABASE, "mysql",
         "--db", "mysql://u:secret@h/x", "user", "list"),
    case("unreachable-postgres", DATABASE, "127.0.0.1",
         "--db", "postgresql+psycopg://u:secret@127.0.0.1:1/x", "user", "add", "carol"),
    case("unreachable-postgres-read", DATABASE, "127.0.0.1",
         "--db", "postgresql+psycopg://u:secret@127.0.0.1:1/x", "credits", "balance"),
    case("unreachable-postgres-slash-password", DATABASE, "127.0.0.1",
         "--db", "postgresql+psycopg://u:se/cret@127.0.0.1:1/x", "db", "status"),
]


@pytest.mark.parametrize("args, code, needle", CASES)
def test_bad_input_is_refused_cleanly(cli, db, args, code, needle):
    seed(cli)
    assert_refused(cli, db, args, code, needle)


def test_adding_beyond_the_overdraft_is_refused_cleanly(cli, db):
    seed(cli)
    assert_refused(cli, db, ("credits", "add", "alice", "-10.001"), 4, "'alice'")


def test_two_output_formats_are_refused(cli, db):
    seed(cli)
    before = dump(db)
    assert_clean_error(cli("log", "--csv", "--jsonl"), USAGE, "--csv")
    assert dump(db) == before


# -- the password never shows, whatever the command --------------------------------------

PASSWORD_URLS = [
    "postgresql+psycopg://u:secret@127.0.0.1:1/x",
    "postgresql+psycopg://u:se/cret@127.0.0.1:1/x",
    "postgresql+psycopg://u:secret@[bad",
]


@pytest.mark.parametrize("url", PASSWORD_URLS)
@pytest.mark.parametrize("args", [("config", "show"), ("config", "show", "--json"),
                                  ("config", "set", "db"), ("db", "status"), ("db", "upgrade")])
def test_password_never_shown(plain_cli, url, args):
    cli = plain_cli
    run = cli(*args, url) if args[:2] == ("config", "set") else cli("--db", url, *args)
    everything = run.stdout + run.stderr
    assert "Traceback" not in everything
    assert SECRET not in everything and "se/cret" not in everything


# -- outdated or unknown schema -----------------------------------------------------------


@pytest.fixture
def outdated(cli, db):
    seed(cli)
    with db.write() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    return db


@pytest.mark.parametrize("args", [
    ("user", "list"), ("user", "add", "carol"), ("user", "show", "alice"),
    ("power", "show", "alice"), ("credits", "balance", "alice"), ("credits", "balance"),
    ("credits", "add", "alice", "5"), ("credits", "set", "alice", "5"), ("log",), ("events",),
])
def test_outdated_schema_asks_for_db_upgrade(cli, outdated, args):
    assert_refused(cli, outdated, args, DATABASE, "db upgrade")


def test_db_status_reports_outdated_schema(cli, outdated):
    run = cli("db", "status", "--json")
    assert run.exit_code == DATABASE
    status = json.loads(run.stdout)
    assert (status["schema"], status["up_to_date"]) == ("0000", False)


def test_db_upgrade_of_unknown_revision_is_a_clean_error(cli, outdated):
    before = dump(outdated)
    assert_clean_error(cli("db", "upgrade"), DATABASE, "0000")
    assert_json_error(cli("--json", "db", "upgrade"), DATABASE, "0000")
    assert dump(outdated) == before


# -- read-only SQLite ------------------------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Any:
    """A migrated SQLite file holding alice (10 credits), and its open handle."""
    from smscredits import ledger

    path = tmp_path / "ro" / "credits.db"
    handle = open_db(str(path), actor="tester")
    ledger.add_user(handle, "alice")
    ledger.create_power(handle, "alice", initial=10_000)
    handle.dispose()
    return path


WRITES = [("user", "add", "carol"), ("credits", "add", "alice", "5"),
          ("credits", "set", "alice", "1"), ("user", "disable", "alice")]


@pytest.mark.parametrize("args", WRITES)
def test_read_only_sqlite_file_refuses_writes(plain_cli, sqlite_db, args):
    if os.geteuid() == 0:
        pytest.skip("running as root: root ignores file permissions")
    sqlite_db.chmod(0o444)
    sqlite_db.parent.chmod(0o555)
    try:
        before = sqlite_db.read_bytes()
        assert_clean_error(plain_cli("--db", str(sqlite_db), *args), DATABASE, "read-only")
        assert_json_error(plain_cli("--json", "--db", str(sqlite_db), *args), DATABASE,
                          "read-only")
        assert sqlite_db.read_bytes() == before
        shown = plain_cli("--db", str(sqlite_db), "credits", "balance", "alice", "--json")
        assert shown.exit_code == 0 and json.loads(shown.stdout)["balance"] == 10
    finally:
        sqlite_db.parent.chmod(0o700)
        sqlite_db.chmod(0o600)


@pytest.mark.parametrize("args", WRITES)
def test_read_only_sqlite_url_refuses_writes(plain_cli, sqlite_db, args):
    url = f"sqlite:///file:{sqlite_db}?mode=ro&uri=true"
    before = sqlite_db.read_bytes()
    assert_clean_error(plain_cli("--db", url, *args), DATABASE, "read-only")
    assert_json_error(plain_cli("--json", "--db", url, *args), DATABASE, "read-only")
    assert sqlite_db.read_bytes() == before
