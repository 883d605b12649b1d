"""One vocabulary for scripts (the same key for the same thing in every command, CSV booleans
as JSON writes them) and one message style for people (`<subject>: <what happened>`)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from tests.helpers import ok

TO = "+36301234567"


def setup(cli: Any) -> None:
    for args in (["user", "add", "alice", "--tz", "Europe/Budapest"],
                 ["power", "create", "alice", "credits", "--initial", "5"],
                 ["user", "add", "bob"], ["user", "disable", "bob"]):
        ok(cli(*args))


def test_a_user_is_user_and_user_id_in_every_command(cli: Any) -> None:
    setup(cli)
    listed = json.loads(ok(cli("user", "list", "--json")).stdout)
    assert [(u["user"], u["disabled"]) for u in listed] == [("alice", False), ("bob", True)]
    assert "name" not in listed[0]
    shown = json.loads(ok(cli("user", "show", "alice", "--json")).stdout)
    account = json.loads(ok(cli("credits", "balance", "alice", "--json")).stdout)
    assert shown["user_id"] == account["user_id"] == listed[0]["user_id"]
    assert shown["user"] == account["user"] == "alice"


def test_csv_booleans_are_true_and_false_like_json(cli: Any) -> None:
    setup(cli)
    rows = list(csv.DictReader(io.StringIO(ok(cli("user", "list", "--csv")).stdout)))
    assert [(r["user"], r["disabled"]) for r in rows] == [("alice", "false"), ("bob", "true")]
    one = list(csv.DictReader(io.StringIO(ok(cli("credits", "balance", "alice",
                                                 "--csv")).stdout)))
    assert one[0]["disabled"] == "false"


def test_check_jsonl_is_one_line_and_csv_one_row_per_finding(cli: Any) -> None:
    setup(cli)
    run = cli("check", "--below", "10", "--jsonl")
    assert run.exit_code == 1
    lines = run.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["findings"][0]["user"] == "alice"
    run = cli("check", "--below", "10", "--csv")
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    assert run.exit_code == 1
    assert [(r["user"], r["check"], r["value"]) for r in rows] == [("alice", "available", "5")]


def test_admin_messages_name_their_subject_first(cli: Any) -> None:
    assert ok(cli("user", "add", "carol")).stdout == "carol: user added (time zone UTC)\n"
    assert ok(cli("user", "disable", "carol")).stdout == (
        "carol: disabled (no charges accepted, balance kept)\n")
    assert ok(cli("user", "enable", "carol")).stdout == "carol: enabled\n"
    assert ok(cli("price", "set", "HU", "0.5")).stdout == "price HU (country): 0.5 per part\n"
    assert ok(cli("price", "delete", "HU")).stdout == "price HU: removed\n"
    ok(cli("power", "create", "carol", "credits", "--initial", "10"))
    ok(cli("price", "set", "default", "1"))
    ok(cli("charge", "carol", "--to", TO, "--parts", "2", "--id", "m-1"))
    assert ok(cli("refund", "m-1")).stdout == "carol: refunded 2 for message m-1, balance 10\n"
    run = ok(cli("refill", "schedule", "carol", "--when-below", "5", "--add", "20"))
    assert run.stdout.splitlines()[0] == "carol: plan 1 scheduled, add 20"
    assert ok(cli("refill", "pause", "1")).stdout == "carol: plan 1 paused\n"


def test_refill_plans_name_their_user_and_times_end_in_at(cli: Any) -> None:
    setup(cli)
    ok(cli("refill", "schedule", "alice", "--when-below", "5", "--add", "20"))
    plans = json.loads(ok(cli("refill", "list", "--json")).stdout)
    assert plans == [{"id": 1, "user": "alice", "user_id": 1,
                      "rule": "when the balance drops below 5", "action": "add 20",
                      "status": "active", "next_due_at": None, "last_applied_at": None,
                      "armed": True, "tz": "Europe/Budapest"}]
    rows = list(csv.DictReader(io.StringIO(ok(cli("refill", "list", "--csv")).stdout)))
    assert list(rows[0]) == ["id", "user", "user_id", "rule", "action", "status",
                             "next_due_at", "last_applied_at", "armed", "tz"]
    assert rows[0]["armed"] == "true"
