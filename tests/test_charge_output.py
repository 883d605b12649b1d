"""What a charge tells its caller: the id it used, the numbers behind a refusal, and a
`charge --file` summary that counts new charges, replays, refusals and errors apart."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from freezegun import freeze_time

from tests.helpers import jl, ok

TO = "+36301234567"


def setup(cli: Any, initial: str = "10") -> None:
    for args in (["price", "set", "default", "1"],
                 ["user", "add", "alice", "--tz", "America/New_York"],
                 ["power", "create", "alice", "credits", "--initial", initial]):
        ok(cli(*args))


def test_a_charge_without_id_shows_the_id_it_made_and_a_refund_takes_it(cli: Any) -> None:
    setup(cli)
    text = ok(cli("charge", "alice", "--to", TO, "--parts", "2")).stdout
    assert text.startswith(f"alice: charged 2 for 2 parts to {TO} (default at 1), balance 8, "
                           "message id ")
    msg_id = text.strip().rsplit(" ", 1)[1]
    assert ok(cli("refund", msg_id)).stdout == (
        f"alice: refunded 2 for message {msg_id}, balance 10\n")
    given = ok(cli("charge", "alice", "--to", TO, "--parts", "1", "--id", "m-1")).stdout
    assert given == f"alice: charged 1 for 1 part to {TO} (default at 1), balance 9\n"


def test_insufficient_credits_says_cost_and_what_is_available(cli: Any) -> None:
    setup(cli, initial="1")
    ok(cli("power", "overdraft", "alice", "0.5"))
    run = cli("charge", "alice", "--to", TO, "--parts", "2")
    assert run.exit_code == 4
    assert run.stderr == ("Error: alice: charge refused, insufficient credits: cost 2, "
                          "available 1.5 (balance 1, overdraft 0.5) (insufficient_credits)\n")
    data = json.loads(cli("charge", "alice", "--to", TO, "--parts", "2", "--json").stdout,
                      parse_float=Decimal)
    assert data["reason"] == "insufficient_credits"
    assert data["refusal"] == {"cost": 2, "available": Decimal("1.5"), "balance": 1,
                               "overdraft": Decimal("0.5")}


@freeze_time(datetime(2026, 12, 4, 3, 0, tzinfo=UTC))  # 22:00 on the 3rd in New York
def test_a_limit_refusal_says_limit_spent_and_reset_in_the_users_zone(cli: Any) -> None:
    setup(cli)
    ok(cli("limits", "set", "alice", "--daily", "3"))
    ok(cli("charge", "alice", "--to", TO, "--parts", "2"))
    run = cli("charge", "alice", "--to", TO, "--parts", "2")
    assert run.exit_code == 5
    assert run.stderr == ("Error: alice: charge refused, daily limit reached: limit 3, spent 2, "
                          "cost 2, resets 2026-12-04 00:00 EST (daily_limit)\n")
    data = json.loads(cli("charge", "alice", "--to", TO, "--parts", "2", "--json").stdout,
                      parse_float=Decimal)
    assert data["refusal"] == {"window": "day", "limit": 3, "spent": 2, "cost": 2,
                               "resets_at": "2026-12-04T05:00:00Z"}


def test_file_summary_counts_charges_replays_refusals_and_errors_apart(
        cli: Any, tmp_path: Path) -> None:
    setup(cli, initial="3")
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join([
        jl(user="alice", to=TO, parts=2, id="f-1"),
        jl(user="alice", to=TO, parts=2, id="f-2"),  # 1 left: refused
        "",  # a blank line: bad input, answered too
        jl(user="zed", to=TO, parts=1, id="f-3"),
        jl(user="alice", to=TO, parts=1, id="f-1"),  # same id, other cost
    ]) + "\n")
    run = cli("charge", "--file", str(path))
    assert run.exit_code == 2
    results = [json.loads(r) for r in run.stdout.splitlines()]
    assert [(r["line"], r["status"], r["reason"]) for r in results] == [
        (1, "charged", None), (2, "rejected", "insufficient_credits"), (3, "error", "bad_input"),
        (4, "rejected", "unknown_user"), (5, "error", "conflict")]
    assert run.stderr == ("5 line(s): charged 1, replayed 0, refused 2 (insufficient_credits 1, "
                          "unknown_user 1), errors 2 (bad_input 1, conflict 1); "
                          "2 credits charged\n")
    rerun = cli("charge", "--file", str(path))
    assert rerun.stderr == ("5 line(s): charged 0, replayed 3, refused 0, errors 2 "
                            "(bad_input 1, conflict 1); 0 credits charged\n")
    data = json.loads(cli("charge", "--file", str(path), "--jsonl").stderr)
    assert data == {"summary": {
        "lines": 5, "charged": 0, "replayed": 3, "rejected": 0, "errors": 2, "cost": 0,
        "rejected_by_reason": {}, "errors_by_reason": {"bad_input": 1, "conflict": 1}}}
    assert ok(cli("credits", "balance", "alice", "--json")).json()["balance"] == 1


@freeze_time(datetime(2026, 12, 20, 12, 0, tzinfo=UTC))
def test_the_python_api_has_the_numbers_of_a_refusal(db: Any) -> None:
    """An overdrawn account and a monthly limit: the numbers are on the result itself."""
    from smscredits import ledger, pricing
    from smscredits.charging import Charger, ChargeRequest

    pricing.set_price(db, "default", "1")
    ledger.add_user(db, "alice", tz="America/New_York")
    ledger.create_power(db, "alice", initial=1000)
    ledger.set_overdraft(db, "alice", 2000)
    charger = Charger(db)
    [first] = charger.charge_batch([ChargeRequest("alice", TO, parts=2)])
    assert (first.status, first.balance, first.refusal) == ("charged", -1, None)
    [broke] = charger.charge_batch([ChargeRequest("alice", TO, parts=2)])
    assert (broke.reason, broke.message) == (
        "insufficient_credits",
        "insufficient credits: cost 2, available 1 (balance -1, overdraft 2)")
    assert broke.refusal == {"cost": 2, "available": 1, "balance": -1, "overdraft": 2}
    ledger.set_limits(db, "alice", {"month": 2500})
    [capped] = charger.charge_batch([ChargeRequest("alice", TO, parts=1)])
    assert (capped.reason, capped.message) == (
        "monthly_limit", "monthly limit reached: limit 2.5, spent 2, cost 1, "
        "resets 2027-01-01 00:00 EST")
    assert capped.refusal == {"window": "month", "limit": Decimal("2.5"), "spent": 2,
                              "cost": 1, "resets_at": "2027-01-01T05:00:00Z"}
