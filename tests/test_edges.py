"""Edges of the command line: secrets in URL query options, arguments that are not UTF-8,
--quiet, a mistyped database path, SQLite URI forms, host-dependent time zones, and CSV
cells a spreadsheet would run."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from smscredits import config
from smscredits.cli import app
from smscredits.errors import BadInput
from tests.helpers import ok

ROOT = Path(__file__).resolve().parent.parent
USAGE, NOT_FOUND, DATABASE = 2, 3, 7


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    """The CLI in-process; an exception other than an exit fails the test with its traceback."""
    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def smscredits(*args: str | bytes, cwd: Path = ROOT) -> subprocess.CompletedProcess[bytes]:
    """A real process, with arguments passed as raw bytes where given."""
    return subprocess.run([sys.executable, "-m", "smscredits", *args], capture_output=True,
                          cwd=cwd, timeout=120)


def one_line_error(run: Any, code: int, *needles: str) -> str:
    """The exit code, one line on stderr holding every needle, nothing on stdout."""
    assert run.exit_code == code, (run.exit_code, run.stdout, run.stderr)
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def event_count(cli: Any) -> int:
    return len(ok(cli("events", "--json", "--limit", "100000")).json())


# -- item 5: every secret of a database URL is masked, wherever it is ----------------------------

SECRET = "hunter2"
QUERY_SECRETS = [f"password={SECRET}", f"sslpassword={SECRET}&sslmode=disable",
                 f"passfile=/tmp/{SECRET}-pass", f"sslkey=%2Ftmp%2F{SECRET}.key",
                 f"options=-c%20x%3D1&password={SECRET}"]


def assert_no_secret(text: str, what: str) -> None:
    assert SECRET not in text, f"{what} shows the secret: {text}"


@pytest.mark.parametrize("query", QUERY_SECRETS)
def test_a_secret_in_a_query_option_is_never_shown(query: str) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:1/test?{query}"
    for fmt in ([], ["--json"]):
        for command in (["user", "list"], ["db", "status"], ["credits", "balance"],
                        ["db", "upgrade"]):
            run = invoke("--db", url, *fmt, *command)
            assert run.exit_code == DATABASE, run.stderr
            assert_no_secret(run.stdout + run.stderr, f"{command} {fmt}")
            assert "***" in run.stderr
            if fmt:
                assert json.loads(run.stderr)["error"]["code"] == "database_unavailable"
        run = ok(invoke("--db", url, *fmt, "config", "show"))
        assert_no_secret(run.stdout, "config show --db")
        assert "***" in run.stdout
        run = ok(invoke(*fmt, "config", "show", env={"SMSCREDITS_DB": url}))
        assert_no_secret(run.stdout, "config show (env)")
        run = ok(invoke(*fmt, "config", "set", "db", url))
        assert_no_secret(run.stdout, "config set db")
        run = ok(invoke(*fmt, "config", "show"))
        assert_no_secret(run.stdout, "config show (file)")
        run = invoke(*fmt, "db", "status")
        assert run.exit_code == DATABASE
        assert_no_secret(run.stdout + run.stderr, "db status (file)")
    # The file keeps the setting as given: it is owner-only.
    assert SECRET in (Path(os.environ["SMSCREDITS_CONFIG_DIR"]) / "config.toml").read_text()


def test_a_real_process_never_shows_a_query_password() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:1/test?password={SECRET}"
    for fmt in ([], ["--json"]):
        run = smscredits("--db", url, *fmt, "credits", "balance")
        assert run.returncode == DATABASE, run.stderr
        assert_no_secret((run.stdout + run.stderr).decode(), "subprocess")


def test_a_live_server_never_shows_a_query_password(pg_schema_url: str) -> None:
    url = f"{pg_schema_url}&password={SECRET}&sslpassword={SECRET}"
    for args in (["db", "upgrade"], ["db", "status"], ["user", "add", "bob"],
                 ["user", "add", "bob"], ["user", "list"], ["verify"], ["config", "show"]):
        for fmt in ([], ["--json"]):
            run = invoke("--db", url, *fmt, *args)
            assert_no_secret(run.stdout + run.stderr, f"{args} {fmt}")
    status = ok(invoke("--db", url, "--json", "db", "status")).stdout
    assert json.loads(status)["up_to_date"] is True
    assert "password=***" in json.loads(status)["database"]


def test_a_driver_message_quoting_a_secret_is_masked() -> None:
    """The driver's own words may quote a key file, a password file or a conninfo."""
    from sqlalchemy import exc

    from smscredits.storage import engine

    url = engine.to_url(f"postgresql+psycopg://gw:{SECRET}@db1/sms?sslkey=/etc/{SECRET}.key"
                        f"&passfile=/etc/pgpass-{SECRET}")
    said = (f'could not open private key file "/etc/{SECRET}.key"; password file '
            f'"/etc/pgpass-{SECRET}"; password={SECRET}; at postgresql://gw:{SECRET}@db1/x')
    error = engine.explain(exc.OperationalError("connect", None, Exception(said)), url)
    assert_no_secret(error.message, "explain")
    assert "could not open private key file" in error.message
    assert_no_secret(engine.describe(url), "describe")


def test_an_error_before_the_database_is_open_is_masked_and_said() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:1/test?password={SECRET}&port={SECRET}"
    for fmt in ([], ["--json"]):
        run = invoke("--db", url, *fmt, "user", "list")
        assert run.exit_code == DATABASE and "port" in run.stderr, run.stderr
        assert_no_secret(run.stderr, f"user list {fmt}")


def test_one_masking_function_for_every_url_shown() -> None:
    from smscredits.storage import engine, lite

    url = f"postgresql+psycopg://gw:{SECRET}@db1/sms?password={SECRET}&sslmode=require"
    shown = config.mask_url(url)
    assert shown == "postgresql+psycopg://gw:***@db1/sms?password=***&sslmode=require"
    assert engine.describe(engine.to_url(url)) == shown
    assert lite.describe("sqlite", "/var/lib/x.db") == engine.describe(
        engine.to_url("/var/lib/x.db"))


# -- item 9: arguments that are not UTF-8 ----------------------------------------------------------

BAD = "\udcff"  # what Python makes of the byte 0xff in sys.argv
BAD_ARGS = [
    pytest.param(["credits", "add", "alice", "1", "--note", BAD], "--note", id="note"),
    pytest.param(["charge", "alice", "--to", BAD, "--parts", "1"], "--to", id="to"),
    pytest.param(["charge", BAD, "--to", "+36301234567", "--parts", "1"], "USER",
                 id="charge-user"),
    pytest.param(["refund", BAD], "MESSAGE_ID", id="refund"),
    pytest.param(["--actor", BAD, "credits", "add", "alice", "1"], "--actor", id="actor"),
    pytest.param(["credits", "add", "alice", "1", "--actor", BAD], "--actor", id="actor-after"),
    pytest.param(["log", BAD], "USER", id="log"),
    pytest.param(["events", "--kind", BAD], "--kind", id="events-kind"),
    pytest.param(["user", "add", BAD], "NAME", id="user-add"),
    pytest.param(["user", "add", "bob", "--tz", BAD], "--tz", id="tz"),
    pytest.param(["limits", "set", "alice", "--daily", BAD], "--daily", id="limit"),
    pytest.param(["price", "set", BAD, "1"], "DESTINATION", id="price"),
    pytest.param(["power", "overdraft", "alice", BAD], "OVERDRAFT", id="overdraft"),
    pytest.param(["config", "set", "actor", BAD], "VALUE", id="config-set"),
    pytest.param(["--db", BAD, "user", "list"], "--db", id="db"),
]


@pytest.mark.parametrize(("args", "label"), BAD_ARGS)
def test_an_argument_not_utf8_is_refused_by_name(cli: Any, args: list[str], label: str,
                                                 tmp_path_factory: pytest.TempPathFactory,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)  # a --db that got through would make its file here
    ok(cli("user", "add", "alice"))
    ok(cli("power", "create", "alice", "credits", "--initial", "5"))
    before = event_count(cli)
    one_line_error(cli(*args), USAGE, label, "not valid UTF-8")
    error = json.loads(one_line_error(cli("--json", *args), USAGE))["error"]
    assert error["code"] == "bad_input" and label in error["message"]
    assert event_count(cli) == before
    assert not Path(os.environ["SMSCREDITS_CONFIG_DIR"]).exists()
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(("args", "label"), [
    ([b"credits", b"add", b"alice", b"1", b"--note", b"\xff"], "--note"),
    ([b"charge", b"alice", b"--to", b"+3630\xff", b"--parts", b"1"], "--to"),
    ([b"--actor", b"\xffx", b"credits", b"add", b"alice", b"1"], "--actor"),
    ([b"log", b"al\xffice"], "USER"),
    ([b"config", b"set", b"actor", b"\xff"], "VALUE"),
], ids=["note", "to", "actor", "log", "config-set"])
def test_raw_bytes_in_argv_are_refused_by_name(tmp_path: Path, args: list[bytes],
                                               label: str) -> None:
    db = str(tmp_path / "credits.db")
    for setup in (["user", "add", "alice"], ["power", "create", "alice", "credits"]):
        assert smscredits("--db", db, *setup).returncode == 0
    before = Path(db).read_bytes()
    run = smscredits("--db", db, *args)
    err = run.stderr.decode()
    assert run.returncode == USAGE, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert label in err and "not valid UTF-8" in err
    assert run.stdout == b""
    assert Path(db).read_bytes() == before
    config_dir = Path(os.environ["SMSCREDITS_CONFIG_DIR"])
    assert not config_dir.exists() or list(config_dir.iterdir()) == []


def test_an_environment_setting_not_utf8_is_refused_by_name(cli: Any) -> None:
    ok(cli("user", "add", "alice"))
    env = {**os.environ, "SMSCREDITS_ACTOR": "\udcff"}
    result = CliRunner().invoke(app, ["user", "add", "bob"], env=env)
    assert result.exit_code == USAGE and "SMSCREDITS_ACTOR" in result.stderr, result.stderr


def test_the_config_writer_leaves_no_temporary_file(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cfg" / "config.toml"
    config.write_setting("actor", "ops", path)
    with pytest.raises(BadInput, match="not valid UTF-8"):
        config.write_setting("actor", "\udcff", path)

    def full(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(BadInput, match="No space left"):
        config.write_setting("default_tz", "UTC", path)
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]
    assert path.read_text() == 'actor = "ops"\n'


# -- item 10: --quiet -----------------------------------------------------------------------------

QUIET_CASES = [
    pytest.param([], ["user", "add", "bob"], id="user-add"),
    pytest.param([], ["user", "disable", "alice"], id="user-disable"),
    pytest.param([["user", "disable", "carol"]], ["user", "enable", "carol"], id="user-enable"),
    pytest.param([], ["power", "create", "carol", "credits"], id="power-create"),
    pytest.param([], ["power", "overdraft", "alice", "5"], id="power-overdraft"),
    pytest.param([], ["power", "delete", "alice", "credits", "--force"], id="power-delete"),
    pytest.param([], ["credits", "add", "alice", "5", "--note", "n"], id="credits-add"),
    pytest.param([], ["credits", "add", "alice", "-5"], id="credits-subtract"),
    pytest.param([], ["credits", "set", "alice", "50"], id="credits-set"),
    pytest.param([], ["limits", "set", "alice", "--daily", "10"], id="limits-set"),
    pytest.param([], ["price", "set", "HU", "0.8"], id="price-set"),
    pytest.param([], ["price", "delete", "default"], id="price-delete"),
    pytest.param([], ["price", "import", "{prices}"], id="price-import"),
    pytest.param([], ["charge", "alice", "--to", "+36301234567", "--parts", "1"], id="charge"),
    pytest.param([], ["refund", "m-1", "--note", "n"], id="refund"),
    pytest.param([], ["refill", "schedule", "alice", "--every", "week", "--add", "1"],
                 id="refill-schedule"),
    pytest.param([], ["refill", "pause", "1"], id="refill-pause"),
    pytest.param([["refill", "pause", "1"]], ["refill", "resume", "1"], id="refill-resume"),
    pytest.param([], ["refill", "cancel", "1"], id="refill-cancel"),
    pytest.param([["refill", "schedule", "alice", "--when-below", "1000", "--add", "5"]],
                 ["refill", "run"], id="refill-run"),
    pytest.param([["refill", "schedule", "alice", "--when-below", "1000", "--add", "5"]],
                 ["refill", "run", "--dry-run"], id="refill-run-dry"),
    pytest.param([], ["db", "upgrade"], id="db-upgrade"),
    pytest.param([], ["config", "set", "default_tz", "Europe/Budapest"], id="config-set"),
    pytest.param([], ["verify"], id="verify"),
    pytest.param([], ["demo"], id="demo"),
]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("where", ["before", "after", "short"])
@pytest.mark.parametrize(("setup", "args"), QUIET_CASES)
def test_quiet_prints_nothing_on_success(cli: Any, tmp_path: Path, setup: list[list[str]],
                                         args: list[str], where: str) -> None:
    for step in [["user", "add", "alice"], ["user", "add", "carol"],
                 ["power", "create", "alice", "credits", "--initial", "100"],
                 ["price", "set", "default", "1"],
                 ["charge", "alice", "--to", "+36301234567", "--parts", "1", "--id", "m-1"],
                 ["refill", "schedule", "alice", "--every", "day", "--add", "1"], *setup]:
        ok(cli(*step))
    prices = tmp_path / "prices.csv"
    prices.write_text("destination,price\nDE,0.9\n")
    args = [str(prices) if a == "{prices}" else a for a in args]
    quiet = {"before": ["--quiet", *args], "after": [*args, "--quiet"],
             "short": [*args, "-q"]}[where]
    run = ok(cli(*quiet))
    assert run.stdout == "", run.stdout
    assert run.stderr == "", run.stderr


def test_quiet_still_reports_errors_and_results_asked_for(cli: Any) -> None:
    ok(cli("user", "add", "alice"))
    ok(cli("power", "create", "alice", "credits"))
    one_line_error(cli("credits", "add", "nobody", "5", "--quiet"), NOT_FOUND, "nobody")
    # Output a script asked for is still written.
    assert ok(cli("--quiet", "--json", "limits", "set", "alice", "--daily", "5")).json()
    lines = ok(cli("--quiet", "charge", "--file", "-",
                   input='{"user": "alice", "to": "+36301234567", "parts": 1}\n'))
    assert [r["reason"] for r in lines.jsonl()] == ["no_price"]
    assert lines.stderr == ""  # the summary is for people


# -- the missing-database rule --------------------------------------------------------------------

NOT_CREATING = [["refill", "run", "--quiet"], ["user", "list"], ["credits", "balance"],
                ["credits", "balance", "alice"], ["log"], ["events", "--json"], ["verify"],
                ["db", "status"], ["power", "list"], ["price", "list"],
                ["limits", "show", "alice"], ["limits", "set", "alice", "--daily", "5"],
                ["credits", "add", "alice", "5"], ["user", "disable", "alice"],
                ["charge", "alice", "--to", "+36301234567", "--parts", "1"],
                ["refund", "m-1"], ["usage", "alice"], ["refill", "list"],
                ["price", "quote", "--to", "+36301234567", "--parts", "1"]]


def test_a_mistyped_path_in_cron_fails_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nonexistent" / "dir" / "x.db"
    run = smscredits("--db", str(path), "refill", "run", "--quiet")
    assert run.returncode == DATABASE
    err = run.stderr.decode()
    assert str(path) in err and "db upgrade" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nonexistent").exists()


@pytest.mark.parametrize("args", NOT_CREATING, ids=" ".join)
def test_a_command_that_creates_nothing_refuses_a_missing_file(tmp_path: Path,
                                                               args: list[str]) -> None:
    path = tmp_path / "dir" / "x.db"
    for fmt in ([], ["--json"]):
        run = invoke("--db", str(path), *fmt, *args)
        line = one_line_error(run, DATABASE, str(path))
        assert "db upgrade" in line and "does not exist" in line
    assert not path.parent.exists()
    # The same through the environment and the config file.
    line = one_line_error(invoke(*args, env={"SMSCREDITS_DB": str(path)}), DATABASE)
    assert str(path) in line
    assert not path.parent.exists()


@pytest.mark.parametrize("args", [["user", "add", "alice"], ["price", "set", "HU", "1"],
                                  ["price", "import", "{prices}"], ["db", "upgrade"]],
                         ids=" ".join)
def test_a_command_that_creates_creates_the_database(tmp_path: Path, args: list[str]) -> None:
    prices = tmp_path / "prices.csv"
    prices.write_text("destination,price\nDE,0.9\n")
    path = tmp_path / "new" / "x.db"
    ok(invoke("--db", str(path), *[str(prices) if a == "{prices}" else a for a in args]))
    assert path.is_file()
    assert json.loads(ok(invoke("--db", str(path), "--json", "db", "status")).stdout)[
        "up_to_date"] is True


def test_demo_and_config_set_still_work_without_a_database(tmp_path: Path) -> None:
    kept = tmp_path / "demo" / "demo.db"
    ok(invoke("demo", "--keep", str(kept)))
    assert kept.is_file()
    ok(invoke("config", "set", "db", str(tmp_path / "later.db")))
    assert not (tmp_path / "later.db").exists()


# -- SQLite URI forms -----------------------------------------------------------------------------


def test_a_sqlite_uri_to_a_missing_file_says_so_and_creates_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("sqlite:///file:x.db?mode=ro&uri=true", f"sqlite:///file:{tmp_path}/y.db?"
                "mode=ro&uri=true"):
        for args in (["user", "list"], ["user", "add", "bob"], ["db", "upgrade"]):
            line = one_line_error(invoke("--db", url, *args), DATABASE, "does not exist")
            assert "x.db" in line or "y.db" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("setting", "needle"), [
    ("file:x.db?mode=ro", "sqlite:///file:PATH?mode=ro&uri=true"),
    ("file:x.db", "sqlite:///file:PATH?mode=ro&uri=true"),
    ("sqlite:///x.db?mode=ro", "mode"),
    ("sqlite:///file:x.db?mode=ro", "uri=true"),
    ("sqlite:///x.db?uri=true", "file:"),
])
def test_an_unsupported_sqlite_form_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             setting: str, needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    ok(invoke("--db", "x.db", "user", "add", "alice"))
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (["user", "list"], ["user", "add", "bob"], ["credits", "balance"]):
        for fmt in ([], ["--json"]):
            run = invoke(*fmt, "--db", setting, *args)
            line = one_line_error(run, DATABASE, needle)
            assert "unsupported database" in line and "OperationalError" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_read_only_sqlite_uri_reads_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    ok(invoke("--db", str(path), "user", "add", "alice"))
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    users = json.loads(ok(invoke("--db", url, "--json", "user", "list")).stdout)
    assert [u["user"] for u in users] == ["alice"]
    one_line_error(invoke("--db", url, "user", "add", "bob"), DATABASE, "read-only")


# -- canonical IANA zones only --------------------------------------------------------------------

HOST_ZONES = ["localtime", "posixrules", "right/UTC", "posix/Europe/Budapest"]


@pytest.mark.parametrize("zone", HOST_ZONES)
def test_a_host_dependent_zone_is_refused(cli: Any, zone: str) -> None:
    ok(cli("user", "add", "alice"))
    before = event_count(cli)
    one_line_error(cli("user", "add", "bob", "--tz", zone), USAGE, repr(zone), "IANA")
    one_line_error(cli("config", "set", "default_tz", zone), USAGE, repr(zone))
    assert not (Path(os.environ["SMSCREDITS_CONFIG_DIR"]) / "config.toml").exists()
    assert event_count(cli) == before
    # From the environment, the default zone is checked when it is used.
    result = CliRunner().invoke(app, ["user", "add", "bob"],
                                env={**os.environ, "SMSCREDITS_DEFAULT_TZ": zone})
    assert result.exit_code == USAGE and repr(zone) in result.stderr
    assert event_count(cli) == before


def test_canonical_zones_are_accepted_and_close_ones_suggested(cli: Any) -> None:
    for i, zone in enumerate(["UTC", "Etc/UTC", "Europe/Budapest", "America/New_York"]):
        ok(cli("user", "add", f"u{i}", "--tz", zone))
    ok(cli("config", "set", "default_tz", "UTC"))
    line = one_line_error(cli("user", "add", "bob", "--tz", "europe/budapest"), USAGE)
    assert "did you mean Europe/Budapest?" in line
    line = one_line_error(cli("user", "add", "bob", "--tz", "posix/Europe/Budapest"), USAGE)
    assert "did you mean Europe/Budapest?" in line


# -- CSV formula injection ------------------------------------------------------------------------

FORMULAS = ['=HYPERLINK("http://evil","x")', "@SUM(1+1)", "+1+2", "-2+3+cmd|' /C calc'!A0",
            "\tx", "\r=1"]


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_cells_a_spreadsheet_would_run_are_text(cli: Any) -> None:
    ok(cli("user", "add", "alice"))
    ok(cli("user", "add", "@cmd"))
    ok(cli("power", "create", "alice", "credits", "--initial", "100"))
    for note in FORMULAS:
        ok(cli("credits", "add", "alice", "-0.6", "--note", note))
    for command in ("log", "events"):
        rows = csv_rows(ok(cli(command, "--csv", "--limit", "100")).stdout)
        notes = [r["note"] for r in rows if r["note"]]
        assert len(notes) == len(FORMULAS)
        assert all(n.startswith("'") for n in notes), notes
        assert "'=HYPERLINK(\"http://evil\",\"x\")" in notes and "'@SUM(1+1)" in notes
        # Numbers stay numbers: amounts, balances and ids.
        assert {r["amount"] for r in rows if r["note"]} == {"-0.6"}
        assert all(r["id"].isdigit() for r in rows)
    users = csv_rows(ok(cli("user", "list", "--csv")).stdout)
    assert sorted(u["user"] for u in users) == ["'@cmd", "alice"]
    ok(cli("price", "set", "+3630", "0.6"))
    prices = csv_rows(ok(cli("price", "list", "--csv")).stdout)
    assert [p["key"] for p in prices] == ["+3630"]  # a prefix is a number: no formula


def test_csv_cell_rule() -> None:
    from decimal import Decimal

    from smscredits.render import csv_cell

    assert csv_cell("=1+2") == "'=1+2"
    assert csv_cell("@x") == "'@x" and csv_cell("+x") == "'+x" and csv_cell("-x") == "'-x"
    assert csv_cell("\t=1") == "'\\x09=1" and csv_cell("\r=1") == "'\\x0d=1"
    assert csv_cell(Decimal("-0.6")) == "-0.6" and csv_cell(-3) == "-3"
    assert csv_cell("-0.6") == "-0.6" and csv_cell("+3630") == "+3630"
    assert csv_cell("a=b") == "a=b" and csv_cell(None) == ""
