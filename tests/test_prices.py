"""Prices by destination (prefix > country > default) and quotes with parts, via the CLI."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import doc

HU_MOBILE = "+36301234567"  # matches +3630, +36 and HU
HU_OTHER = "+36201234567"  # matches +36 and HU, not +3630
EMOJI = "😀"  # outside the BMP: a UTF-16 surrogate pair


def prices(cli: Any) -> dict[str, Decimal]:
    run = cli("price", "list", "--json")
    assert run.exit_code == 0, run.stderr
    return {p["key"]: p["price"] for p in doc(run)}


def quote(cli: Any, *args: str) -> dict[str, Any]:
    run = cli("price", "quote", *args, "--json")
    assert run.exit_code == 0, run.stderr
    return doc(run)


@pytest.fixture
def default_price(cli: Any) -> None:
    assert cli("price", "set", "default", "1").exit_code == 0


# -- set / list / delete ------------------------------------------------------------------


def test_price_set_list_and_delete(cli: Any) -> None:
    assert cli("price", "list", "--json").json() == []
    for key, price in [("default", "1"), ("hu", "0.5"), ("+3630", "0.25")]:
        run = cli("price", "set", key, price)
        assert run.exit_code == 0, run.stderr
    listed = doc(cli("price", "list", "--json"))
    assert [(p["key"], p["kind"], p["price"]) for p in listed] == [
        ("default", "default", Decimal("1")),
        ("HU", "country", Decimal("0.5")),
        ("+3630", "prefix", Decimal("0.25")),
    ]
    assert cli("price", "delete", "HU").exit_code == 0
    assert prices(cli) == {"default": Decimal("1"), "+3630": Decimal("0.25")}


def test_price_set_replaces_the_old_price(cli: Any) -> None:
    cli("price", "set", "HU", "0.5")
    cli("price", "set", "HU", "0.7")
    assert prices(cli) == {"HU": Decimal("0.7")}


def test_deleting_a_price_that_is_not_set_exits_3(cli: Any) -> None:
    run = cli("price", "delete", "+3630")
    assert run.exit_code == 3
    assert "+3630" in run.stderr


@pytest.mark.parametrize("price", ["abc", "-1", "0.0001", "1e3", "NaN", ""])
def test_bad_price_exits_2_and_sets_nothing(cli: Any, price: str) -> None:
    run = cli("price", "set", "HU", price)
    assert run.exit_code == 2
    assert "price" in run.stderr
    assert prices(cli) == {}


@pytest.mark.parametrize("destination", ["XX", "+", "+abc", "36", "H", "HUN", "+36 30"])
def test_bad_destination_exits_2_and_sets_nothing(cli: Any, destination: str) -> None:
    run = cli("price", "set", destination, "1")
    assert run.exit_code == 2
    assert "destination" in run.stderr
    assert prices(cli) == {}


# -- which price applies ------------------------------------------------------------------


def test_longest_prefix_beats_shorter_prefix_beats_country_beats_default(cli: Any) -> None:
    cli("price", "set", "default", "1")
    cli("price", "set", "HU", "0.5")
    cli("price", "set", "+36", "0.4")
    cli("price", "set", "+3630", "0.25")
    assert quote(cli, "--to", HU_MOBILE, "--parts", "1")["rule"] == "+3630"
    assert quote(cli, "--to", HU_OTHER, "--parts", "1")["rule"] == "+36"
    cli("price", "delete", "+36")
    other = quote(cli, "--to", HU_OTHER, "--parts", "1")
    assert (other["rule"], other["price"], other["country"]) == ("HU", Decimal("0.5"), "HU")
    cli("price", "delete", "HU")
    assert quote(cli, "--to", HU_OTHER, "--parts", "1")["rule"] == "default"
    assert quote(cli, "--to", HU_MOBILE, "--parts", "1")["rule"] == "+3630"


@pytest.mark.parametrize(
    ("number", "country"),
    [("+447911123456", "GG"), ("+12125551234", "US"), ("+14165551234", "CA")],
)
def test_country_comes_from_the_number(cli: Any, number: str, country: str) -> None:
    for cc, price in [("GB", "0.1"), ("GG", "0.2"), ("US", "0.3"), ("CA", "0.4")]:
        cli("price", "set", cc, price)
    cli("price", "set", "default", "9")
    q = quote(cli, "--to", number, "--parts", "1")
    assert (q["country"], q["rule"]) == (country, country)


def test_no_matching_price_and_no_default_is_no_price_never_free(cli: Any) -> None:
    cli("price", "set", "HU", "0.5")
    run = cli("price", "quote", "--to", "+4915112345678", "--parts", "1", "--json")
    assert run.exit_code == 3  # not found: a price (README exit codes), as `charge` does
    assert json.loads(run.stderr)["error"]["code"] == "no_price"
    assert run.stdout == ""


@pytest.mark.parametrize("number", ["+1234", "+3610", "hello", "+36 30 123"])
def test_quote_for_an_invalid_number_exits_2(cli: Any, default_price: None, number: str) -> None:
    run = cli("price", "quote", "--to", number, "--parts", "1", "--json")
    assert run.exit_code == 2
    assert json.loads(run.stderr)["error"]["code"] == "invalid_number"


def test_quote_shows_encoding_parts_rule_price_and_cost(cli: Any) -> None:
    cli("price", "set", "+3630", "0.25")
    q = quote(cli, "--to", "0036 30 123 4567", "--text", "Hello")
    assert {k: q[k] for k in ("to", "country", "encoding", "units", "parts", "rule", "price",
                              "cost")} == {
        "to": HU_MOBILE, "country": "HU", "encoding": "GSM-7", "units": 5, "parts": 1,
        "rule": "+3630", "price": Decimal("0.25"), "cost": Decimal("0.25"),
    }
    assert "limits" not in q


def test_quote_with_user_shows_the_limits_left(cli: Any, default_price: None) -> None:
    cli("user", "add", "alice")
    cli("power", "create", "alice", "credits", "--initial", "10")
    cli("limits", "set", "alice", "--daily", "5")
    assert cli("charge", "alice", "--to", HU_MOBILE, "--parts", "2").exit_code == 0
    q = quote(cli, "--to", HU_MOBILE, "--text", "hi", "--user", "alice")
    day = next(w for w in q["limits"] if w["window"] == "day")
    assert (day["limit"], day["spent"], day["remaining"]) == (Decimal(5), Decimal(2), Decimal(3))
    assert all(w["limit"] is None for w in q["limits"] if w["window"] != "day")


def test_quote_for_an_unknown_user_exits_3(cli: Any, default_price: None) -> None:
    run = cli("price", "quote", "--to", HU_MOBILE, "--text", "hi", "--user", "nobody")
    assert run.exit_code == 3


def test_quote_with_parts_instead_of_text(cli: Any) -> None:
    cli("price", "set", "HU", "0.125")
    q = quote(cli, "--to", HU_MOBILE, "--parts", "3")
    assert (q["parts"], q["price"], q["cost"]) == (3, Decimal("0.125"), Decimal("0.375"))


@pytest.mark.parametrize("args", [(), ("--text", "hi", "--parts", "1"), ("--parts", "0"),
                                  ("--parts", "256")])
def test_quote_needs_exactly_one_of_text_and_valid_parts(
    cli: Any, default_price: None, args: tuple[str, ...]
) -> None:
    assert cli("price", "quote", "--to", HU_MOBILE, *args).exit_code == 2


# -- parts at the boundaries, through quote ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "units", "parts"),
    [
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 153 * 2, "GSM-7", 306, 2),
        ("a" * (153 * 2 + 1), "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),
        ("a" * 159 + "€", "GSM-7", 161, 2),
        # '€' (2 septets) does not fit in the first part's last septet: moved whole.
        ("a" * 152 + "€" + "a" * 152, "GSM-7", 306, 3),
        ("a" * 151 + "€" + "a" * 153, "GSM-7", 306, 2),
        ("я" * 70, "UCS-2", 70, 1),
        ("я" * 71, "UCS-2", 71, 2),
        ("я" * 67 * 2, "UCS-2", 134, 2),
        ("я" * (67 * 2 + 1), "UCS-2", 135, 3),
        ("a" * 160 + "я", "UCS-2", 161, 3),
        (EMOJI * 35, "UCS-2", 70, 1),
        # a surrogate pair straddling the 67-unit boundary is never split
        ("я" * 66 + EMOJI + "я" * 66, "UCS-2", 134, 3),
        ("я" * 65 + EMOJI + "я" * 67, "UCS-2", 134, 2),
    ],
    ids=["gsm160", "gsm161", "gsm306", "gsm307", "euro80", "euro161", "euro-straddles-153",
         "euro-fits-153", "ucs70", "ucs71", "ucs134", "ucs135", "one-cyrillic-makes-ucs2",
         "emoji35", "emoji-straddles-67", "emoji-fits-67"],
)
def test_quote_counts_parts_at_the_boundaries(
    cli: Any, text: str, encoding: str, units: int, parts: int
) -> None:
    cli("price", "set", "default", "0.5")
    q = quote(cli, "--to", HU_MOBILE, "--text", text)
    assert (q["encoding"], q["units"], q["parts"]) == (encoding, units, parts)
    assert q["cost"] == Decimal("0.5") * parts


# -- import -------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "prices.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_import_with_a_header_sets_every_row(cli: Any, tmp_path: Path) -> None:
    path = write(tmp_path, "destination,price\ndefault,1\nHU,0.5\n+3630,0.25\nde, 0.75 \n")
    run = cli("price", "import", str(path), "--json")
    assert run.exit_code == 0, run.stderr
    assert run.json() == {"imported": 4, "unchanged": 0, "errors": []}
    assert prices(cli) == {"default": Decimal(1), "HU": Decimal("0.5"),
                           "+3630": Decimal("0.25"), "DE": Decimal("0.75")}


def test_import_without_a_header_works_too(cli: Any, tmp_path: Path) -> None:
    run = cli("price", "import", str(write(tmp_path, "HU,0.5\n")))
    assert run.exit_code == 0, run.stderr
    assert prices(cli) == {"HU": Decimal("0.5")}


def test_import_with_bad_rows_reports_each_line_and_imports_nothing(
    cli: Any, tmp_path: Path
) -> None:
    cli("price", "set", "HU", "0.5")
    path = write(tmp_path, "destination,price\n"
                           "default,1\n"  # 2: good
                           "+3630,abc\n"  # 3: bad price
                           "XX,1\n"  # 4: bad destination
                           "DE,1,extra\n"  # 5: 3 fields
                           "+44,0.2\n")  # 6: good
    run = cli("price", "import", str(path))
    assert run.exit_code == 2
    for line, what in [(3, "abc"), (4, "XX"), (5, "3")]:
        assert f"{path}:{line}: " in run.stderr
        assert what in next(x for x in run.stderr.splitlines() if f":{line}: " in x)
    assert f"{path}:2:" not in run.stderr and f"{path}:6:" not in run.stderr
    assert prices(cli) == {"HU": Decimal("0.5")}


def test_import_bad_rows_as_json(cli: Any, tmp_path: Path) -> None:
    path = write(tmp_path, "HU,0.5\nHU,-1\n+,1\n")
    run = cli("price", "import", str(path), "--json")
    assert run.exit_code == 2
    assert [(e["line"], e["row"]) for e in run.json()["errors"]] == [(2, "HU,-1"), (3, "+,1")]
    assert prices(cli) == {}


def test_import_of_a_missing_file_exits_2(cli: Any, tmp_path: Path) -> None:
    run = cli("price", "import", str(tmp_path / "nope.csv"))
    assert run.exit_code == 2
    assert "nope.csv" in run.stderr
