"""Security: owner-only files, no database password in any output, user text that cannot
break a table, a CSV file or the terminal."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import subprocess
import sys
import traceback
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from smscredits.cli import app
from tests.helpers import ok

ROOT = Path(__file__).resolve().parent.parent

# -- files ---------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run with this umask (for subprocesses too), restored afterwards."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def smscredits(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([sys.executable, "-m", "smscredits", *args], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    if check:
        assert run.returncode == 0, run.stderr
    return run


def assert_owner_only(db_file: Path) -> None:
    assert mode(db_file) == 0o600, oct(mode(db_file))
    assert mode(db_file.parent) == 0o700, oct(mode(db_file.parent))
    for suffix in ("-wal", "-shm", "-journal"):
        side = db_file.with_name(db_file.name + suffix)
        if side.exists():
            assert mode(side) == 0o600, f"{side.name}: {oct(mode(side))}"


@pytest.mark.parametrize("umask", [0o022, 0o000], indirect=True, ids=["umask022", "umask000"])
def test_new_sqlite_file_and_directory_are_owner_only(tmp_path: Path, umask: int) -> None:
    db_file = tmp_path / "new-dir" / "credits.db"
    smscredits("--db", str(db_file), "user", "add", "bob")
    assert_owner_only(db_file)
    # The write-ahead log and shared memory exist while a connection is open: same mode.
    from smscredits import ledger
    from smscredits.storage.engine import open_db

    handle = open_db(str(db_file), actor="tester")
    try:
        ledger.add_user(handle, "carol")
        smscredits("--db", str(db_file), "power", "create", "bob", "credits")
        assert db_file.with_name("credits.db-wal").exists()
        assert db_file.with_name("credits.db-shm").exists()
        assert_owner_only(db_file)
    finally:
        handle.dispose()
    assert_owner_only(db_file)


@pytest.mark.parametrize("umask", [0o022], indirect=True, ids=["umask022"])
def test_default_database_location_is_owner_only(umask: int) -> None:
    """No --db: the file goes to the user data dir (XDG_DATA_HOME, isolated by conftest)."""
    db_file = Path(os.environ["XDG_DATA_HOME"]) / "smscredits" / "smscredits.db"
    assert not db_file.exists()
    code, text = invoke("user", "add", "bob")
    assert code == 0, text
    assert db_file.exists()
    assert_owner_only(db_file)


@pytest.mark.parametrize("umask", [0o022], indirect=True, ids=["umask022"])
def test_config_file_holding_a_password_is_owner_only(umask: int) -> None:
    code, text = invoke("config", "set", "db", PG_URL_AT(1))
    assert code == 0, text
    path = Path(os.environ["SMSCREDITS_CONFIG_DIR"]) / "config.toml"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700


# -- no password in any output ------------------------------------------------------------

PASSWORD = "s3cr3t/p@ss%"
ENCODED = quote(PASSWORD, safe="")  # s3cr3t%2Fp%40ss%25
SECRETS = ("s3cr3t", ENCODED, PASSWORD, "p@ss%", "%2Fp%40ss")


def PG_URL_AT(port: int, host: str = "127.0.0.1") -> str:
    return f"postgresql+psycopg://postgres:{ENCODED}@{host}:{port}/test"


def with_password(url: str) -> str:
    """A Postgres URL with the test password put in (the test server trusts any)."""
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI in-process; exit code and everything it printed (tracebacks included)."""
    result = CliRunner().invoke(app, list(args), env=env)
    text = result.stdout + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = result.exception
        text += "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return result.exit_code, text


def assert_no_password(text: str, what: str) -> None:
    for secret in SECRETS:
        assert secret.lower() not in text.lower(), f"{what} shows the password: {text}"


UNREACHABLE = [PG_URL_AT(1), PG_URL_AT(5432, "nonexistent.invalid"),
               f"postgres://postgres:{ENCODED}@127.0.0.1:1/test",
               PG_URL_AT(1) + "?sslmode=bogus", f"mysql://postgres:{ENCODED}@127.0.0.1/test",
               f"postgresql+psycopg://postgres:{ENCODED}@127.0.0.1:notaport/test"]
COMMANDS = [["user", "list"], ["user", "add", "bob"], ["credits", "balance"], ["db", "status"],
            ["db", "upgrade"], ["verify"], ["log"], ["refill", "run"],
            ["charge", "bob", "--to", "+36301234567", "--parts", "1"]]


@pytest.mark.parametrize("url", UNREACHABLE)
def test_unreachable_or_bad_server_errors_hide_the_password(url: str) -> None:
    for command in COMMANDS:
        for fmt in ([], ["--json"]):
            code, text = invoke("--db", url, *fmt, *command)
            assert code == 7, f"{command} {fmt}: exit {code}: {text}"
            assert text.strip(), f"{command}: no error shown"
            assert_no_password(text, f"{command} {fmt}")
            if fmt:
                assert json.loads(text)["error"]["code"] == "database_unavailable"
    # The same from the environment.
    code, text = invoke("user", "list", env={"SMSCREDITS_DB": url})
    assert code == 7
    assert_no_password(text, "SMSCREDITS_DB")


def test_unreachable_server_in_a_real_process_hides_the_password() -> None:
    """Nothing else (warnings, a traceback at exit) prints the password either."""
    for fmt in ([], ["--json"]):
        run = smscredits("--db", PG_URL_AT(1), *fmt, "credits", "balance", check=False)
        assert run.returncode == 7, run.stderr
        assert_no_password(run.stdout + run.stderr, "subprocess")


def test_config_show_and_set_hide_the_password() -> None:
    url = PG_URL_AT(1)
    for fmt in ([], ["--json"]):
        code, text = invoke("--db", url, *fmt, "config", "show")
        assert code == 0, text
        assert_no_password(text, "config show --db")
        assert "***" in text
        code, text = invoke(*fmt, "config", "show", env={"SMSCREDITS_DB": url})
        assert code == 0, text
        assert_no_password(text, "config show (env)")
    for fmt in ([], ["--json"]):
        code, text = invoke(*fmt, "config", "set", "db", url)
        assert code == 0, text
        assert_no_password(text, "config set db")
    # The password is in the file now (owner-only), never on the screen.
    stored = (Path(os.environ["SMSCREDITS_CONFIG_DIR"]) / "config.toml").read_text()
    assert ENCODED in stored
    for fmt in ([], ["--json"]):
        code, text = invoke(*fmt, "config", "show")
        assert code == 0, text
        assert_no_password(text, "config show (file)")
        code, text = invoke(*fmt, "db", "status")
        assert code == 7, text
        assert_no_password(text, "db status (file)")
    data = json.loads(invoke("--json", "config", "show")[1])
    db_row = next(r for r in data if r["key"] == "db")
    assert db_row["source"] == "file" and "***" in db_row["value"]
    # A malformed value is refused without echoing the password.
    code, text = invoke("config", "set", "db",
                        f"postgresql+psycopg://postgres:{ENCODED}@127.0.0.1:notaport/test")
    assert code != 0
    assert_no_password(text, "config set db (malformed)")


def test_live_server_outputs_hide_the_password(pg_schema_url: str) -> None:
    """Against a real server (it trusts any password): Alembic's '%' pitfall, status, errors."""
    url = with_password(pg_schema_url)
    assert ENCODED in url
    for args in (["db", "status"], ["db", "upgrade"], ["db", "upgrade"], ["db", "status"],
                 ["user", "add", "bob"], ["user", "add", "bob"], ["user", "list"],
                 ["power", "create", "bob", "credits", "--initial", "5"],
                 ["credits", "add", "nobody", "5"], ["credits", "add", "bob", "1x"],
                 ["charge", "bob", "--to", "+36301234567", "--parts", "1"],
                 ["verify"], ["config", "show"], ["log"], ["events"]):
        for fmt in ([], ["--json"]):
            _, text = invoke("--db", url, *fmt, *args)
            assert_no_password(text, f"{args} {fmt}")
    code, text = invoke("--db", url, "--json", "db", "status")
    assert code == 0, text
    assert json.loads(text)["up_to_date"] is True
    run = smscredits("--db", url, "db", "upgrade")
    assert_no_password(run.stdout + run.stderr, "db upgrade (subprocess)")


# -- user text in tables, CSV and JSON ------------------------------------------------------

CONTROL = "a\x1b[31mred\x1b[0m b\rc\x07d\ne\tf"
MARKUP = ["[red]x[/red]", "[link=http://evil]y[/link]", "[/oops]", "[bold]unclosed"]
LONG = ("long note, " * 100)[:1000]
INJECTION = "=cmd|' /C calc'!A0"
QUOTES = 'a,"b",c;d'
NOTES = [CONTROL, *MARKUP, LONG, INJECTION, QUOTES]
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escaped(text: str) -> str:
    """How a control character is expected to appear in a cell: ``\\x1b``."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", lambda m: f"\\x{ord(m.group()):02x}", text)


@pytest.fixture
def noted(cli: Any) -> Any:
    """alice with one credits.added event per note."""
    ok(cli("user", "add", "alice"))
    ok(cli("power", "create", "alice", "credits"))
    for note in NOTES:
        ok(cli("credits", "add", "alice", "1", "--note", note))
    return cli


def test_log_table_shows_user_text_literally(noted: Any) -> None:
    for command in ("log", "events"):
        run = ok(noted(command, "alice", "--limit", "100"))
        out = run.stdout
        assert "Note" in out and "alice" in out
        assert RAW_CONTROL.search(out) is None, repr(RAW_CONTROL.findall(out))
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out
        # Markup is shown, not interpreted; the control characters are visible, escaped.
        for note in MARKUP:
            assert note in out, f"{note!r} not shown literally"
        assert escaped("a\x1b[31mred\x1b[0m") in out
        assert "\\x07" in out and "\\x0d" in out
        # Every event is a row of its own: no note broke a row or swallowed the next one.
        ids = [e["id"] for e in json.loads(ok(noted(command, "alice", "--json")).stdout)]
        for event_id in ids:
            assert re.search(rf"^[\s│┃|]*{event_id}\s", out, re.M), f"row {event_id} missing"
        # The long note wraps over a few lines, then is cut with "…" (JSON and CSV carry it
        # whole): what is shown is its start, cut where the mark says.
        lines = out.splitlines()
        first = next(n for n, line in enumerate(lines) if "long note" in line)
        column = lines[first].index("long note")
        shown = " ".join(line[column:].split("  ")[0] for line in lines[first : first + 3])
        assert shown.endswith("…") and LONG.startswith(shown[:-1].rstrip()), shown


def test_log_csv_round_trips_every_note(noted: Any) -> None:
    for command in ("log", "events"):
        run = ok(noted(command, "alice", "--csv", "--limit", "100"))
        assert "\r" not in run.stdout.replace("\r\n", "\n")
        assert RAW_CONTROL.search(run.stdout) is None
        rows = list(csv.reader(io.StringIO(run.stdout)))
        header, body = rows[0], rows[1:]
        assert "note" in header
        assert all(len(r) == len(header) for r in body), "a row has the wrong number of fields"
        notes = [r[header.index("note")] for r in body if r[header.index("note")]]
        # A note a spreadsheet would run as a formula is written as text: a leading quote.
        assert sorted(notes) == sorted(("'" if n == INJECTION else "") + escaped(n)
                                       for n in NOTES)


def test_log_json_round_trips_every_note_exactly(noted: Any) -> None:
    for command in ("log", "events"):
        run = ok(noted(command, "alice", "--json", "--limit", "100"))
        events = json.loads(run.stdout, parse_float=Decimal)
        assert sorted(e["note"] for e in events if e["note"]) == sorted(NOTES)
    run = ok(noted("log", "alice", "--jsonl", "--limit", "100"))
    assert sorted(json.loads(x)["note"] for x in run.stdout.splitlines()
                  if json.loads(x)["note"]) == sorted(NOTES)


def state(cli: Any) -> tuple[Any, ...]:
    events = json.loads(ok(cli("events", "--json", "--limit", "100000")).stdout)
    balance = json.loads(ok(cli("credits", "balance", "alice", "--json")).stdout)["balance"]
    return len(events), events[0]["id"] if events else None, balance


def test_a_note_over_the_limit_is_refused_and_nothing_written(cli: Any) -> None:
    ok(cli("price", "set", "default", "1"))
    ok(cli("user", "add", "alice"))
    ok(cli("power", "create", "alice", "credits", "--initial", "10"))
    ok(cli("charge", "alice", "--to", "+36301234567", "--parts", "1", "--id", "m1"))
    before = state(cli)
    too_long = "x" * 1001
    for args in (["credits", "add", "alice", "5"], ["credits", "add", "alice", "-5"],
                 ["credits", "set", "alice", "3"], ["refund", "m1"]):
        for fmt in ([], ["--json"]):
            run = cli(*fmt, *args, "--note", too_long)
            assert run.exit_code == 2, (args, run.stdout, run.stderr)
            assert "note" in run.stderr and too_long not in run.stderr + run.stdout
            assert state(cli) == before, f"{args} wrote something"
    # At the limit it is accepted.
    ok(cli("credits", "add", "alice", "5", "--note", "x" * 1000))
    assert state(cli)[0] == before[0] + 1


def test_a_nul_in_a_note_is_stored_or_refused_alike_on_every_engine(cli: Any) -> None:
    """A NUL cannot be stored by Postgres text: it must be refused as bad input (exit 2), or
    stored; never reported as 'database unavailable'."""
    ok(cli("user", "add", "alice"))
    ok(cli("power", "create", "alice", "credits"))
    run = cli("--json", "credits", "add", "alice", "1", "--note", "nul\x00here")
    assert run.exit_code in (0, 2), (run.exit_code, run.stderr)
    log = json.loads(ok(cli("log", "alice", "--json")).stdout)
    if run.exit_code == 0:
        assert log[0]["note"] == "nul\x00here"
    else:
        assert json.loads(run.stderr)["error"]["code"] == "bad_input"
        assert len(log) == 1


BIDI = "\u202eevil\u202c and \u2066isolate\u2069"


def test_bidi_controls_in_a_note_cannot_reorder_a_table_row(cli: Any) -> None:
    """Trojan-Source characters (U+202E, U+2066...) reverse how a terminal draws the rest of
    the row: the table must show them escaped like the C0/C1 controls."""
    ok(cli("user", "add", "alice"))
    ok(cli("power", "create", "alice", "credits"))
    ok(cli("credits", "add", "alice", "1", "--note", BIDI))
    out = ok(cli("log", "alice")).stdout
    assert "evil" in out
    found = [f"U+{ord(c):04X}" for c in out if c in "\u202a\u202b\u202c\u202d\u202e"
             "\u2066\u2067\u2068\u2069\u200e\u200f"]
    assert found == [], f"raw bidi controls in the table: {found}"
    assert json.loads(ok(cli("log", "alice", "--json")).stdout)[0]["note"] == BIDI


def test_config_path_with_markup_is_shown_not_interpreted(tmp_path: Path) -> None:
    """A config directory named like Rich markup must not crash or vanish from the table."""
    for name in ("[/oops]", "[red]x[/red]"):
        cfg = tmp_path / name
        cfg.mkdir(parents=True)
        code, text = invoke("config", "show", env={"SMSCREDITS_CONFIG_DIR": str(cfg)})
        assert code == 0, text
        assert "Traceback" not in text
        assert name in text.replace("\n", ""), text
