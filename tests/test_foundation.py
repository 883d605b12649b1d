"""The foundation: the manual credits flow through the CLI and the core, on both engines."""

from __future__ import annotations

import csv
import io
import json
import stat
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from smscredits import __version__, ledger, reads
from smscredits.config import default_db_path
from smscredits.errors import Conflict, InsufficientCredits
from smscredits.storage.engine import open_db
from tests.helpers import balance, data, ok

# -- helpers -----------------------------------------------------------------------------


def alice(cli: Any, *opts: str) -> None:
    ok(cli("user", "add", "alice"))
    ok(cli("power", "create", "alice", "credits", *opts))


def log(cli: Any, *args: str) -> list[dict[str, Any]]:
    return data(cli("log", *args, "--json"))


def events(cli: Any, *args: str) -> list[dict[str, Any]]:
    return data(cli("events", *args, "--json"))


# -- users and powers --------------------------------------------------------------------


def test_user_add_with_time_zone_is_shown(cli):
    ok(cli("user", "add", "alice", "--tz", "Europe/Budapest"))
    shown = data(cli("user", "show", "alice", "--json"))
    assert (shown["user"], shown["tz"], shown["disabled"]) == ("alice", "Europe/Budapest", False)
    assert shown["balance"] is None  # no credits power yet: not metered
    assert [u["user"] for u in data(cli("user", "list", "--json"))] == ["alice"]


def test_user_add_without_zone_uses_utc(cli):
    ok(cli("user", "add", "bob"))
    assert data(cli("user", "show", "bob", "--json"))["tz"] == "UTC"


def test_power_create_sets_initial_balance_and_overdraft(cli):
    ok(cli("user", "add", "alice"))
    created = data(cli("power", "create", "alice", "credits", "--initial", "100",
                       "--overdraft", "20", "--json"))
    assert (created["balance"], created["overdraft"], created["available"]) == (100, 20, 120)
    shown = data(cli("power", "show", "alice", "--json"))
    assert (shown["kind"], shown["balance"], shown["overdraft"]) == ("credits", 100, 20)
    assert [p["user"] for p in data(cli("power", "list", "--json"))] == ["alice"]


def test_power_create_defaults_to_prepaid_zero(cli):
    alice(cli)
    shown = data(cli("power", "show", "alice", "--json"))
    assert (shown["balance"], shown["overdraft"]) == (0, 0)


def test_unlimited_overdraft_allows_negative_balance(cli):
    alice(cli, "--overdraft", "unlimited")
    shown = data(cli("power", "show", "alice", "--json"))
    assert shown["overdraft"] is None and shown["available"] is None
    ok(cli("credits", "add", "alice", "-1000000.5"))
    assert balance(cli) == Decimal("-1000000.5")


def test_power_overdraft_can_be_changed(cli):
    alice(cli)
    ok(cli("power", "overdraft", "alice", "10"))
    ok(cli("credits", "add", "alice", "-10"))
    assert balance(cli) == -10


# -- credits -----------------------------------------------------------------------------


def test_credits_add_positive_then_negative_directly(cli):
    alice(cli)
    ok(cli("credits", "add", "alice", "12.5"))
    ok(cli("credits", "add", "alice", "-5"))
    assert balance(cli) == Decimal("7.5")


def test_credits_add_negative_after_double_dash(cli):
    alice(cli, "--initial", "10")
    ok(cli("credits", "add", "alice", "--", "-2.5"))
    assert balance(cli) == Decimal("7.5")


def test_credits_add_json_reports_change_and_new_balance(cli):
    alice(cli, "--initial", "1")
    change = data(cli("credits", "add", "alice", "2.25", "--json"))
    assert (change["user"], change["amount"], change["balance"]) == (
        "alice", Decimal("2.25"), Decimal("3.25"))
    assert change["event_id"] == log(cli)[0]["id"]


def test_credits_set_records_the_difference(cli):
    alice(cli, "--initial", "10")
    ok(cli("credits", "set", "alice", "25.5"))
    ok(cli("credits", "set", "alice", "3"))
    assert balance(cli) == 3
    sets = log(cli, "--kind", "credits.set")
    assert [(e["amount"], e["balance_after"]) for e in sets] == [
        (Decimal("-22.5"), 3), (Decimal("15.5"), Decimal("25.5"))]


def test_balance_of_all_users_in_json(cli):
    alice(cli, "--initial", "1.5")
    ok(cli("user", "add", "bob"))
    ok(cli("power", "create", "bob", "credits", "--initial", "2"))
    ok(cli("user", "add", "carol"))  # no power: not metered, not listed
    rows = data(cli("credits", "balance", "--json"))
    assert [(r["user"], r["balance"]) for r in rows] == [("alice", Decimal("1.5")), ("bob", 2)]


def test_exact_decimals_in_thousandths(cli):
    alice(cli)
    for _ in range(3):
        ok(cli("credits", "add", "alice", "0.001"))
    assert balance(cli) == Decimal("0.003")
    ok(cli("credits", "add", "alice", "-0.003"))
    assert balance(cli) == 0


def test_point_one_plus_point_two_is_exactly_point_three(cli):
    alice(cli)
    ok(cli("credits", "add", "alice", "0.1"))
    ok(cli("credits", "add", "alice", "0.2"))
    run = ok(cli("credits", "balance", "alice", "--json"))
    assert '"balance": 0.3,' in run.stdout
    assert data(cli("credits", "balance", "--json"))[0]["balance"] == Decimal("0.3")


def test_subtraction_to_the_overdraft_edge_is_allowed(cli):
    alice(cli, "--initial", "10", "--overdraft", "5")
    ok(cli("credits", "add", "alice", "-15"))
    assert balance(cli) == -5


def test_subtraction_beyond_overdraft_is_refused_and_changes_nothing(cli):
    alice(cli, "--initial", "10", "--overdraft", "5")
    before = events(cli, "--limit", "1000")
    run = cli("credits", "add", "alice", "-15.001")
    assert run.exit_code == 4
    assert "Traceback" not in run.stdout + run.stderr
    assert "alice" in run.stderr
    assert balance(cli) == 10
    assert events(cli, "--limit", "1000") == before


def test_credits_set_below_overdraft_is_refused(cli):
    alice(cli, "--initial", "10")
    assert cli("credits", "set", "alice", "-1").exit_code == 4
    assert balance(cli) == 10


def test_balance_too_large_is_refused_not_rounded(cli):
    """Adding to a huge balance must never overflow into an inexact (float) balance."""
    alice(cli)
    big = "999999999999999.999"
    expected = Decimal(0)
    for _ in range(12):
        run = cli("credits", "add", "alice", big)
        if run.exit_code != 0:
            break
        expected += Decimal(big)
        assert balance(cli) == expected
    assert run.exit_code == 2, (run.stdout, run.stderr)
    assert "Traceback" not in run.stdout + run.stderr
    assert balance(cli) == expected


# -- users: disable, enable; powers: delete ----------------------------------------------


def test_disable_keeps_balance_and_enable_restores(cli):
    alice(cli, "--initial", "42.042")
    ok(cli("user", "disable", "alice"))
    shown = data(cli("user", "show", "alice", "--json"))
    assert (shown["disabled"], shown["balance"]) == (True, Decimal("42.042"))
    ok(cli("user", "enable", "alice"))
    shown = data(cli("user", "show", "alice", "--json"))
    assert (shown["disabled"], shown["balance"]) == (False, Decimal("42.042"))
    kinds = [e["kind"] for e in events(cli, "alice")]
    assert kinds[:2] == ["user.enabled", "user.disabled"]


def test_power_delete_refused_with_credits_left(cli):
    alice(cli, "--initial", "5")
    run = cli("power", "delete", "alice", "credits")
    assert run.exit_code == 6
    assert "--force" in run.stderr
    assert balance(cli) == 5


def test_power_delete_with_force_unmeters_and_keeps_journal(cli):
    alice(cli, "--initial", "5")
    ok(cli("power", "delete", "alice", "credits", "--force"))
    assert data(cli("power", "list", "--json")) == []
    assert data(cli("user", "show", "alice", "--json"))["balance"] is None
    assert "power.created" in [e["kind"] for e in events(cli, "alice")]


def test_power_delete_at_zero_needs_no_force(cli):
    alice(cli)
    ok(cli("power", "delete", "alice", "credits"))
    assert cli("credits", "balance", "alice").exit_code == 3


# -- log and events ----------------------------------------------------------------------


def test_log_shows_only_balance_changes_and_events_show_all(cli):
    alice(cli, "--initial", "10")
    ok(cli("user", "disable", "alice"))
    ok(cli("credits", "add", "alice", "1"))
    assert [e["kind"] for e in log(cli)] == ["credits.added", "power.created"]
    assert [e["kind"] for e in events(cli)] == [
        "credits.added", "user.disabled", "power.created", "user.added"]


def test_log_is_newest_first_with_balance_after(cli):
    alice(cli, "--initial", "1")
    ok(cli("credits", "add", "alice", "2"))
    ok(cli("credits", "add", "alice", "-0.5"))
    rows = log(cli, "alice")
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    assert [(r["amount"], r["balance_after"]) for r in rows] == [
        (Decimal("-0.5"), Decimal("2.5")), (2, 3), (1, 1)]


def test_log_of_one_user_excludes_others(cli):
    alice(cli, "--initial", "1")
    ok(cli("user", "add", "bob"))
    ok(cli("power", "create", "bob", "credits", "--initial", "2"))
    assert {r["user"] for r in log(cli, "bob")} == {"bob"}
    assert len(log(cli)) == 2


def test_limit_and_before_page_without_gaps_or_repeats(cli):
    alice(cli)
    for i in range(1, 13):
        ok(cli("credits", "add", "alice", str(i)))
    everything = [r["id"] for r in log(cli, "--limit", "1000")]
    assert len(everything) == 13
    seen: list[int] = []
    page = log(cli, "--limit", "5")
    while page:
        assert len(page) <= 5
        seen += [r["id"] for r in page]
        page = log(cli, "--limit", "5", "--before", str(page[-1]["id"]))
    assert seen == everything


def test_kind_filter_is_repeatable(cli):
    alice(cli, "--initial", "10")
    ok(cli("credits", "add", "alice", "1"))
    ok(cli("credits", "add", "alice", "-1"))
    ok(cli("credits", "set", "alice", "7"))
    assert [e["kind"] for e in log(cli, "--kind", "credits.set")] == ["credits.set"]
    kinds = [e["kind"] for e in events(cli, "--kind", "credits.added", "--kind", "user.added")]
    assert kinds == ["credits.added", "user.added"]


def three_days(cli: Any) -> None:
    """alice created on 2025-12-31, then 1, 2, 3 credits added at 10:00 UTC on Jan 1-3."""
    with freeze_time("2025-12-31T23:00:00Z"):
        alice(cli)
    for day, amount in (("01", "1"), ("02", "2"), ("03", "3")):
        with freeze_time(f"2026-01-{day}T10:00:00Z"):
            ok(cli("credits", "add", "alice", amount))


def test_since_and_until_select_by_time(cli):
    three_days(cli)
    rows = log(cli, "--since", "2026-01-02", "--until", "2026-01-03")
    assert [(r["amount"], r["at"]) for r in rows] == [(2, "2026-01-02T10:00:00Z")]
    # --since is inclusive, --until exclusive
    rows = log(cli, "--since", "2026-01-02T10:00Z", "--until", "2026-01-03T10:00:00+00:00")
    assert [r["amount"] for r in rows] == [2]
    assert [r["amount"] for r in log(cli, "--until", "2026-01-02")] == [1, 0]
    assert [r["amount"] for r in log(cli, "--since", "2026-01-03T09:00:00+01:00")] == [3]


def test_since_accepts_an_age(cli):
    three_days(cli)
    with freeze_time("2026-01-03T12:00:00Z"):
        assert [r["amount"] for r in log(cli, "--since", "36h")] == [3, 2]
        assert [r["amount"] for r in log(cli, "--since", "1d")] == [3]


def test_csv_has_header_and_one_row_per_event(cli):
    alice(cli, "--initial", "0.1")
    ok(cli("credits", "add", "alice", "0.2", "--note", "a, \"quoted\" note"))
    rows = list(csv.reader(io.StringIO(ok(cli("log", "--csv")).stdout)))
    header, body = rows[0], rows[1:]
    assert header[:6] == ["id", "at", "user", "kind", "amount", "balance_after"]
    assert "note" in header and "actor" in header
    assert len(body) == 2
    newest = dict(zip(header, body[0], strict=True))
    assert (newest["kind"], newest["amount"], newest["balance_after"]) == (
        "credits.added", "0.2", "0.3")
    assert newest["note"] == 'a, "quoted" note'


def test_csv_of_no_events_is_just_the_header(cli):
    ok(cli("user", "add", "alice"))
    rows = list(csv.reader(io.StringIO(ok(cli("log", "--csv")).stdout)))
    assert len(rows) == 1 and rows[0][0] == "id"


def test_jsonl_is_one_object_per_line(cli):
    alice(cli, "--initial", "1")
    ok(cli("credits", "add", "alice", "1.5"))
    lines = ok(cli("events", "--jsonl")).stdout.splitlines()
    parsed = [json.loads(line, parse_float=Decimal) for line in lines]
    assert all(isinstance(p, dict) for p in parsed)
    assert [p["kind"] for p in parsed] == ["credits.added", "power.created", "user.added"]
    assert parsed[0]["balance_after"] == Decimal("2.5")


def test_table_output_shows_exact_amounts_without_colour(cli):
    alice(cli, "--initial", "12.345")
    out = ok(cli("credits", "balance", "alice")).stdout
    assert "12.345" in out and "\x1b[" not in out
    out = ok(cli("log")).stdout
    assert "power.created" in out and "12.345" in out


# -- actor and note ----------------------------------------------------------------------


def test_event_carries_actor_flag_and_note(cli):
    alice(cli)
    ok(cli("--actor", "ops", "credits", "add", "alice", "5", "--note", "invoice 42"))
    newest = log(cli)[0]
    assert (newest["actor"], newest["note"]) == ("ops", "invoice 42")


def test_actor_flag_may_follow_the_command(cli):
    alice(cli)
    ok(cli("credits", "add", "alice", "5", "--actor", "ops"))
    assert log(cli)[0]["actor"] == "ops"


def test_actor_from_environment(cli, monkeypatch):
    alice(cli)
    monkeypatch.setenv("SMSCREDITS_ACTOR", "cron")
    ok(cli("credits", "add", "alice", "5"))
    assert [e["actor"] for e in log(cli)] == ["cron", "tester"]


# -- global options, version, db status --------------------------------------------------


def test_global_options_after_the_command(cli):
    alice(cli, "--initial", "3")
    assert data(cli("credits", "balance", "alice", "--json"))["balance"] == 3
    lines = ok(cli("log", "alice", "--jsonl")).stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["kind"] == "power.created"


def test_quiet_prints_nothing_on_success(cli):
    alice(cli)
    run = ok(cli("--quiet", "credits", "add", "alice", "5"))
    assert run.stdout == ""
    assert balance(cli) == 5


def test_version(cli):
    run = ok(cli("--version"))
    assert run.stdout.strip() == f"smscredits {__version__}"


def test_db_status_json_is_up_to_date(cli):
    status = data(cli("db", "status", "--json"))
    assert status["up_to_date"] is True
    assert status["schema"] == status["expected"]


def test_db_upgrade_again_is_harmless(cli):
    alice(cli, "--initial", "1")
    ok(cli("db", "upgrade"))
    assert balance(cli) == 1


# -- the core, called directly ------------------------------------------------------------


def test_core_manual_flow(db):
    ledger.add_user(db, "alice", tz="Europe/Budapest")
    account = ledger.create_power(db, "alice", initial=10_000, overdraft=2_000)
    assert (account.balance, account.overdraft, account.available) == (10, 2, 12)
    change = ledger.add_credits(db, "alice", -11_999, note="almost all")
    assert (change.amount, change.balance) == (Decimal("-11.999"), Decimal("-1.999"))
    change = ledger.set_credits(db, "alice", 500)
    assert (change.amount, change.balance) == (Decimal("2.499"), Decimal("0.5"))
    assert ledger.get_account(db, "alice").balance == Decimal("0.5")
    rows = reads.query_events(db, "alice", credit_only=True)
    assert [r.kind for r in rows] == ["credits.set", "credits.subtracted", "power.created"]
    assert rows[1].note == "almost all" and rows[1].actor == "tester"


def test_core_overdraw_raises_and_changes_nothing(db):
    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", initial=1_000)
    with pytest.raises(InsufficientCredits):
        ledger.add_credits(db, "alice", -1_001)
    assert ledger.get_account(db, "alice").balance == 1
    assert len(reads.query_events(db, limit=1000)) == 2


def test_core_overdraft_cannot_be_lowered_under_a_negative_balance(db):
    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", overdraft=None)
    ledger.add_credits(db, "alice", -5_000)
    with pytest.raises(Conflict):
        ledger.set_overdraft(db, "alice", 1_000)
    account = ledger.set_overdraft(db, "alice", 5_000)
    assert (account.balance, account.available) == (-5, 0)


def test_core_disabled_user_keeps_balance(db):
    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", initial=7_007)
    assert ledger.set_disabled(db, "alice", True).balance == Decimal("7.007")
    assert reads.list_accounts(db)[0].disabled is True


def test_core_keyset_paging(db):
    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice")
    for i in range(1, 8):
        ledger.add_credits(db, "alice", i * 1000)
    first = reads.query_events(db, credit_only=True, limit=3)
    second = reads.query_events(db, credit_only=True, limit=3, before=first[-1].id)
    assert [r.amount for r in first + second] == [7, 6, 5, 4, 3, 2]


def test_concurrent_subtractions_never_overdraw(db, db_url):
    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", initial=60_000)
    results: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        handle = open_db(db_url, actor=f"worker{n}")
        try:
            for _ in range(25):
                try:
                    ledger.add_credits(handle, "alice", -1000)
                    outcome = "ok"
                except InsufficientCredits:
                    outcome = "insufficient"
                except Exception as e:  # anything else is a failure of the test
                    outcome = repr(e)
                with lock:
                    results.append(outcome)
        finally:
            handle.dispose()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(results)) == ["insufficient", "ok"]
    assert results.count("ok") == 60 and results.count("insufficient") == 40
    assert ledger.get_account(db, "alice").balance == 0
    rows = reads.query_events(db, "alice", credit_only=True, limit=1000)
    subtracted = [r for r in rows if r.kind == "credits.subtracted"]
    assert len(subtracted) == 60
    assert sum(r.amount for r in subtracted) == -60
    assert sum(r.amount for r in rows) == 0  # opening 60 plus every change
    assert sorted(r.balance_after for r in subtracted) == list(range(0, 60))


# -- SQLite specifics --------------------------------------------------------------------


@pytest.fixture
def sqlite_cli(plain_cli: Any) -> Any:
    """Run the CLI with no database configured, so each test passes ``--db`` itself."""
    return plain_cli


def test_new_sqlite_file_is_owner_only(sqlite_cli, tmp_path: Path):
    path = tmp_path / "fresh" / "data" / "credits.db"
    ok(sqlite_cli("--db", str(path), "user", "add", "alice"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_sqlite_plain_relative_path_works(sqlite_cli, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok(sqlite_cli("--db", "plain.db", "user", "add", "alice"))
    ok(sqlite_cli("--db", "plain.db", "power", "create", "alice", "credits", "--initial", "4"))
    assert (tmp_path / "plain.db").exists()
    shown = json.loads(ok(sqlite_cli("--db", "plain.db", "credits", "balance", "alice",
                                     "--json")).stdout)
    assert shown["balance"] == 4


def test_sqlite_default_database_in_user_data_dir(sqlite_cli):
    ok(sqlite_cli("user", "add", "alice"))
    status = json.loads(ok(sqlite_cli("db", "status", "--json")).stdout)
    assert status["up_to_date"] is True
    path = default_db_path()
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
