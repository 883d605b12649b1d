"""Every event carries its detail in every format, a change with the old value beside the
new; `log`/`events` say when there is more, export everything with --limit 0, and know
their kinds."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smscredits import journal
from smscredits.commands import logs
from tests.helpers import ok


def changes(cli: Any) -> None:
    for args in (["user", "add", "alice"], ["power", "create", "alice", "credits"],
                 ["limits", "set", "alice", "--daily", "20"],
                 ["limits", "set", "alice", "--daily", "30", "--weekly", "100"],
                 ["price", "set", "GB", "1"], ["price", "set", "GB", "1.5"],
                 ["price", "delete", "GB"], ["power", "overdraft", "alice", "5"],
                 ["refill", "schedule", "alice", "--every", "day", "--add", "1"],
                 ["refill", "pause", "1"]):
        ok(cli(*args))


def test_a_change_keeps_the_old_value_beside_the_new_in_json(cli: Any) -> None:
    changes(cli)
    detail = {(e["kind"], e["id"]): e["detail"]
              for e in json.loads(ok(cli("events", "--json")).stdout)}
    by_kind = [d for (_, _), d in sorted(detail.items(), key=lambda kv: kv[0][1])]
    assert by_kind[2:] == [
        {"day": "20", "old": {"day": "unlimited"}},
        {"day": "30", "week": "100", "old": {"day": "20", "week": "unlimited"}},
        {"price": "1", "old": {"price": None}},
        {"price": "1.5", "old": {"price": "1"}},
        {"old": {"price": "1.5"}},
        {"overdraft": "5", "old": {"overdraft": "0"}},
        {"plan": 1},
        {"plan": 1, "status": "paused", "old": {"status": "active"}},
    ]


def test_the_detail_is_a_table_column_and_json_text_in_csv(cli: Any,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    changes(cli)
    monkeypatch.setenv("COLUMNS", "120")
    text = ok(cli("events", "alice", "--kind", "limits.set")).stdout
    rows = [line.split() for line in text.splitlines() if "limits.set" in line]
    assert [r[-2:] if len(r) > 6 else r[-1:] for r in rows] == [
        ["day=20->30", "week=unlimited->100"], ["day=unlimited->20"]]
    exported = list(csv.DictReader(io.StringIO(ok(cli("events", "--kind", "price.set",
                                                      "--csv")).stdout)))
    assert [json.loads(r["detail"]) for r in exported] == [
        {"price": "1.5", "old": {"price": "1"}}, {"price": "1", "old": {"price": None}}]


def test_a_page_says_how_to_get_the_next_one(cli: Any) -> None:
    changes(cli)
    run = ok(cli("events", "--limit", "3", "--json"))
    ids = [e["id"] for e in json.loads(run.stdout)]
    assert len(ids) == 3
    assert run.stderr == f"more: --before {ids[-1]}\n"
    rest = ok(cli("events", "--before", str(ids[-1]), "--limit", "100", "--json"))
    assert rest.stderr == ""  # nothing more after the last page
    assert ok(cli("events", "--limit", "3", "--quiet")).stderr == ""


@pytest.mark.parametrize("mode", ["--json", "--jsonl", "--csv"])
def test_limit_0_exports_every_event_in_chunks(cli: Any, mode: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    changes(cli)
    monkeypatch.setattr(logs, "CHUNK", 3)  # small pages: the export crosses their borders
    every = [e["id"] for e in json.loads(ok(cli("events", "--limit", "100", "--json")).stdout)]
    run = ok(cli("events", "--limit", "0", mode))
    assert run.stderr == ""
    if mode == "--json":
        got = [e["id"] for e in json.loads(run.stdout)]
    elif mode == "--jsonl":
        got = [json.loads(line)["id"] for line in run.stdout.splitlines()]
    else:
        got = [int(r["id"]) for r in csv.DictReader(io.StringIO(run.stdout))]
    assert got == every and len(every) == 10
    empty = ok(cli("events", "--limit", "0", "--kind", "refill.skipped", mode)).stdout
    assert empty == {"--json": "[]\n", "--jsonl": "", "--csv": empty}[mode]
    if mode == "--csv":
        assert empty.startswith("id,at,user,kind,")


def test_an_unknown_kind_is_refused_with_the_known_ones(cli: Any) -> None:
    run = cli("events", "--kind", "limit.set")
    assert run.exit_code == 2
    assert run.stderr.startswith("Error: unknown kind 'limit.set': one of user.added, ")
    assert "limits.set" in run.stderr and run.stderr.count("\n") == 1
    run = cli("log", "--kind", "nope", "--json")
    assert json.loads(run.stderr)["error"]["code"] == "unknown_kind"


def test_every_kind_the_commands_record_is_a_known_kind(cli: Any) -> None:
    changes(cli)
    ok(cli("price", "set", "default", "1"))
    ok(cli("credits", "add", "alice", "10"))
    ok(cli("credits", "add", "alice", "-1"))
    ok(cli("credits", "set", "alice", "50"))
    ok(cli("charge", "alice", "--to", "+36301234567", "--parts", "1", "--id", "m-1"))
    ok(cli("refund", "m-1"))
    ok(cli("user", "disable", "alice"))
    ok(cli("user", "enable", "alice"))
    ok(cli("refill", "cancel", "1"))
    seen = {e["kind"] for e in json.loads(ok(cli("events", "--limit", "0", "--json")).stdout)}
    assert seen <= set(journal.KINDS)
    assert len(seen) == 16


def test_disabling_and_cancelling_with_a_power_keep_the_old_state(cli: Any,
                                                                  monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    changes(cli)
    ok(cli("refill", "schedule", "alice", "--every", "week", "--add", "2"))
    ok(cli("user", "disable", "alice"))
    ok(cli("user", "enable", "alice"))
    ok(cli("power", "delete", "alice", "credits", "--force"))
    newest = json.loads(ok(cli("events", "alice", "--limit", "5", "--json")).stdout)
    assert [(e["kind"], e["detail"]) for e in newest] == [
        ("power.deleted", None),
        ("refill.cancelled", {"plan": 2, "status": "cancelled", "old": {"status": "active"}}),
        ("refill.cancelled", {"plan": 1, "status": "cancelled", "old": {"status": "paused"}}),
        ("user.enabled", {"disabled": False, "old": {"disabled": True}}),
        ("user.disabled", {"disabled": True, "old": {"disabled": False}}),
    ]
    monkeypatch.setenv("COLUMNS", "120")
    text = ok(cli("events", "alice", "--kind", "user.disabled")).stdout
    assert "disabled=no->yes" in text
    assert ok(cli("verify")).exit_code == 0


def test_deleting_a_user_journals_each_open_plan_with_its_status(cli: Any) -> None:
    ok(cli("user", "add", "bob"))
    ok(cli("power", "create", "bob", "credits"))
    ok(cli("refill", "schedule", "bob", "--every", "day", "--add", "1"))
    ok(cli("user", "delete", "bob"))
    cancelled = json.loads(ok(cli("events", "--kind", "refill.cancelled", "--json")).stdout)
    assert [e["detail"] for e in cancelled] == [
        {"plan": 1, "status": "cancelled", "old": {"status": "active"}}]
    assert ok(cli("verify")).exit_code == 0


def test_every_kind_written_in_the_code_is_a_known_kind() -> None:
    # The commands above record most kinds; the source names every one a writer can record.
    prefixes = "|".join(sorted({k.split(".")[0] for k in journal.KINDS}))
    pattern = re.compile(rf'"((?:{prefixes})\.[a-z_]+)"')
    package = Path(journal.__file__).parent
    written = {name for path in package.rglob("*.py") if path.name != "journal.py"
               for name in pattern.findall(path.read_text())}
    assert written - set(journal.KINDS) == set()
    assert set(journal.KINDS) - written == set()  # none is listed without a writer


def test_the_kinds_are_known_without_loading_sqlalchemy() -> None:
    # `log --kind` validates before it opens a database: journal stays off the heavy imports.
    code = ("import sys, smscredits.journal as j; "
            "print(len(j.KINDS), 'sqlalchemy' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout
    assert shown == f"{len(journal.KINDS)} False\n"
