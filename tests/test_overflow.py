"""Amounts never leave the documented range (|x| <= MAX_MILLIS): a charge, a price, a credits
change or an overdraft that would take one past it is refused with ``amount_out_of_range``
(exit 2) before anything is written, on both engines."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from freezegun import freeze_time

from smscredits.amounts import MAX_MILLIS, format_amount
from tests.helpers import balance, data, doc, dump, ok, verified

DE = "+4915112345678"
HU = "+36301234567"
BIG = "999999999999999"  # the largest whole amount
MAX = format_amount(MAX_MILLIS)  # 999999999999999.999


def setup(cli: Any, initial: str = "100", *opts: str, price: str = BIG) -> None:
    ok(cli("user", "add", "a"))
    ok(cli("power", "create", "a", "credits", "--initial", initial, *opts))
    ok(cli("price", "set", "default", price))


def assert_charge_out_of_range(cli: Any, db: Any, args: tuple[str, ...], *needles: str) -> None:
    """Plain and --json: exit 2, amount_out_of_range naming the amount and the bound, no
    traceback, nothing written."""
    before = dump(db)
    plain = cli("charge", "a", "--to", DE, *args)
    assert plain.exit_code == 2, plain.stdout + plain.stderr
    assert "Traceback" not in plain.stdout + plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1
    assert "amount_out_of_range" in plain.stderr
    result = doc(cli("charge", "a", "--to", DE, *args, "--json"))
    assert (result["status"], result["reason"]) == ("rejected", "amount_out_of_range")
    for needle in (*needles, MAX):
        assert needle in result["message"] and needle in plain.stderr
    assert dump(db) == before
    assert verified(cli)


def test_a_cost_above_the_range_is_refused_at_quote_time(cli: Any, db: Any) -> None:
    setup(cli)
    assert_charge_out_of_range(cli, db, ("--parts", "10"), "9999999999999990")
    quote = cli("price", "quote", "--to", DE, "--parts", "10")
    assert quote.exit_code == 2 and "9999999999999990" in quote.stderr
    assert "Traceback" not in quote.stdout + quote.stderr
    assert balance(cli, "a") == 100


def test_a_cost_from_a_long_text_is_refused_too(cli: Any, db: Any) -> None:
    setup(cli, price="10000000000000")  # 10^13 per part: 101 parts cost more than 10^15
    assert_charge_out_of_range(cli, db, ("--text", "x" * 153 * 101), "1010000000000000")


def test_an_unlimited_overdraft_ends_at_the_range(cli: Any, db: Any) -> None:
    with freeze_time(datetime(2026, 3, 10, 12, 0, tzinfo=UTC)) as clock:
        setup(cli, "100", "--overdraft", "unlimited")
        first = doc(cli("charge", "a", "--to", DE, "--parts", "1", "--json"))
        assert (first["status"], first["balance"]) == ("charged", Decimal("-999999999999899"))
        assert_charge_out_of_range(cli, db, ("--parts", "1"), "-1999999999999898")
        # Every later charge that fits still goes through, once its windows have room.
        ok(cli("price", "set", "default", "1"))
        clock.tick(timedelta(days=40))
        again = data(cli("charge", "a", "--to", DE, "--parts", "1", "--json"))
        assert (again["status"], again["balance"]) == ("charged", Decimal("-999999999999900"))
        assert verified(cli)


def test_an_unlimited_overdraft_stops_exactly_at_minus_the_maximum(cli: Any, db: Any) -> None:
    setup(cli, "-" + MAX, "--overdraft", "unlimited", price="0.001")
    assert_charge_out_of_range(cli, db, ("--parts", "1"), "-1000000000000000")
    ok(cli("credits", "add", "a", "0.001"))
    assert data(cli("charge", "a", "--to", DE, "--parts", "1", "--json"))["balance"] == \
        Decimal("-" + MAX)


def test_a_window_without_a_limit_cannot_count_past_the_range(cli: Any, db: Any) -> None:
    setup(cli, MAX, "--overdraft", "unlimited")
    ok(cli("charge", "a", "--to", DE, "--parts", "1"))  # balance 0.999, the day's spent 10^15
    assert_charge_out_of_range(cli, db, ("--parts", "1"), "day's spending", "1999999999999998")
    # A limit, which is within the range, is the reason when one is set.
    ok(cli("limits", "set", "a", "--daily", BIG))
    refused = doc(cli("charge", "a", "--to", DE, "--parts", "1", "--json"))
    assert refused["reason"] == "daily_limit"


def test_a_batch_with_an_overflowing_line_charges_the_others(cli: Any, db: Any) -> None:
    setup(cli, "-500000000000000", "--overdraft", "unlimited", price="1")
    ok(cli("price", "set", "DE", "600000000000000"))
    lines = [{"user": "a", "to": HU, "parts": 1, "id": "v-1"},
             {"user": "a", "to": DE, "parts": 10, "id": "big-1"},  # the cost is out of range
             {"user": "a", "to": DE, "parts": 1, "id": "big-2"},  # the balance after it is
             {"user": "a", "to": HU, "parts": 2, "id": "v-2"}]
    data = "".join(json.dumps(x) + "\n" for x in lines)
    for attempt in range(2):  # the retry replays every line, charging nothing
        run = cli("charge", "--file", "-", input=data)
        assert run.exit_code == 0, run.stderr  # a refusal is a result, not a malformed line
        out = [json.loads(x, parse_float=Decimal) for x in run.stdout.splitlines()]
        assert [(r["status"], r["reason"]) for r in out] == [
            ("charged", None), ("rejected", "amount_out_of_range"),
            ("rejected", "amount_out_of_range"), ("charged", None)]
        assert [r["replayed"] for r in out] == [attempt == 1] * 4
        if attempt == 0:
            assert "6000000000000000" in out[1]["message"]
            assert "-1100000000000001" in out[2]["message"]
        assert out[-1]["balance"] == Decimal("-500000000000003")
    assert balance(cli, "a") == Decimal("-500000000000003")
    assert verified(cli)


@pytest.mark.parametrize("args, needle", [
    pytest.param(("credits", "add", "a", BIG), "1000000000000099", id="add-above"),
    pytest.param(("credits", "add", "a", "1000000000000000"), "'1000000000000000'",
                 id="add-amount-too-large"),
    pytest.param(("credits", "set", "a", "1000000000000000"), "'1000000000000000'",
                 id="set-amount-too-large"),
    pytest.param(("price", "set", "default", "1000000000000000"), "'1000000000000000'",
                 id="price-too-large"),
    pytest.param(("power", "overdraft", "a", "1000000000000000"), "'1000000000000000'",
                 id="overdraft-too-large"),
    pytest.param(("limits", "set", "a", "--daily", "1000000000000000"), "'1000000000000000'",
                 id="limit-too-large"),
    pytest.param(("power", "create", "b", "credits", "--initial", "-1000000000000000",
                  "--overdraft", "unlimited"), "'-1000000000000000'", id="initial-too-low"),
])
def test_admin_amounts_out_of_range_are_refused(cli: Any, db: Any, args: tuple[str, ...],
                                                needle: str) -> None:
    setup(cli)
    ok(cli("user", "add", "b"))
    before = dump(db)
    plain = cli(*args)
    assert plain.exit_code == 2 and plain.stdout == ""
    assert len(plain.stderr.strip().splitlines()) == 1 and needle in plain.stderr
    refused = cli("--json", *args)
    assert refused.exit_code == 2
    assert json.loads(refused.stderr)["error"]["code"] == "amount_out_of_range"
    assert dump(db) == before


def test_subtracting_under_an_unlimited_overdraft_ends_at_the_range(cli: Any, db: Any) -> None:
    setup(cli, "-999999999999000", "--overdraft", "unlimited")
    before = dump(db)
    refused = cli("--json", "credits", "add", "a", "-1000")
    assert refused.exit_code == 2
    error = json.loads(refused.stderr)["error"]
    assert error["code"] == "amount_out_of_range"
    assert "-1000000000000000" in error["message"] and MAX in error["message"]
    assert dump(db) == before
    ok(cli("credits", "add", "a", "-999.999"))
    assert balance(cli, "a") == Decimal("-" + MAX)
    assert verified(cli)


def test_a_limited_overdraft_still_says_insufficient_credits(cli: Any, db: Any) -> None:
    setup(cli, "0", "--overdraft", BIG)
    refused = cli("--json", "credits", "add", "a", "-" + BIG + ".001")
    assert json.loads(refused.stderr)["error"]["code"] == "insufficient_credits"


def test_a_set_whose_change_leaves_the_range_is_refused(cli: Any, db: Any) -> None:
    setup(cli, "-" + BIG, "--overdraft", "unlimited")
    before = dump(db)
    refused = cli("--json", "credits", "set", "a", BIG)
    assert refused.exit_code == 2
    assert json.loads(refused.stderr)["error"]["code"] == "amount_out_of_range"
    assert dump(db) == before
    ok(cli("credits", "set", "a", "0"))
    ok(cli("credits", "set", "a", BIG))
    assert balance(cli, "a") == Decimal(BIG)
    assert verified(cli)
