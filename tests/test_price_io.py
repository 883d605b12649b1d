"""Prices in and out: a negative price refused by name, `price list --csv` fed back into
`price import` (a file or stdin), and unchanged prices left alone."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from freezegun import freeze_time

from tests.helpers import doc


def listed(cli: Any) -> list[dict[str, Any]]:
    run = cli("price", "list", "--json")
    assert run.exit_code == 0, run.stderr
    return doc(run)


# -- a negative price ----------------------------------------------------------------------


def test_a_negative_price_is_refused_by_name(cli: Any) -> None:
    run = cli("price", "set", "+1", "-0.1")
    assert run.exit_code == 2
    assert run.stderr == "Error: bad price -0.1: a price cannot be negative\n"
    assert listed(cli) == []


def test_a_negative_price_as_json(cli: Any) -> None:
    run = cli("price", "set", "HU", "-2", "--json")
    assert run.exit_code == 2
    assert "bad price -2: a price cannot be negative" in run.stdout + run.stderr


def test_a_negative_price_row_is_refused_on_import(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("HU,-0.5\n", encoding="utf-8")
    run = cli("price", "import", str(path))
    assert run.exit_code == 2
    assert f"{path}:1: bad price -0.5: a price cannot be negative\n" in run.stderr


# -- round trip ----------------------------------------------------------------------------


def _set_three(cli: Any) -> None:
    for key, price in [("default", "2"), ("HU", "0.8"), ("+3630", "1.125")]:
        assert cli("price", "set", key, price).exit_code == 0


def test_the_csv_export_imports_back_unchanged(cli: Any, tmp_path: Path) -> None:
    with freeze_time("2026-03-01 10:00:00"):
        _set_three(cli)
    before = listed(cli)
    export = cli("price", "list", "--csv")
    assert export.stdout.splitlines()[0] == "key,kind,price,updated_at"
    path = tmp_path / "prices.csv"
    path.write_text(export.stdout, encoding="utf-8")
    with freeze_time("2026-03-02 10:00:00"):
        run = cli("price", "import", str(path), "--json")
    assert run.exit_code == 0, run.stderr
    assert run.json() == {"imported": 0, "unchanged": 3, "errors": []}
    assert listed(cli) == before  # nothing rewritten: same updated_at
    events = cli("events", "--kind", "price.set", "--json").json()
    assert len(events) == 3


def test_an_edited_export_writes_only_what_changed(cli: Any, tmp_path: Path) -> None:
    with freeze_time("2026-03-01 10:00:00"):
        _set_three(cli)
    edited = cli("price", "list", "--csv").stdout.replace("HU,country,0.8,", "HU,country,0.9,")
    with freeze_time("2026-03-02 10:00:00"):
        run = cli("price", "import", "-", input=edited)
    assert run.exit_code == 0, run.stderr
    assert run.stdout == "imported 1 price(s) from stdin, 2 unchanged\n"
    assert {p["key"]: (p["price"], p["updated_at"]) for p in listed(cli)} == {
        "default": (Decimal(2), "2026-03-01T10:00:00Z"),
        "HU": (Decimal("0.9"), "2026-03-02T10:00:00Z"),
        "+3630": (Decimal("1.125"), "2026-03-01T10:00:00Z"),
    }


def test_import_reads_stdin_into_an_empty_database(cli: Any) -> None:
    run = cli("price", "import", "-", "--json", input="destination,price\nDE,0.7\n")
    assert run.exit_code == 0, run.stderr
    assert run.json() == {"imported": 1, "unchanged": 0, "errors": []}
    assert [(p["key"], p["price"]) for p in listed(cli)] == [("DE", Decimal("0.7"))]


def test_an_export_row_missing_a_column_is_reported(cli: Any) -> None:
    run = cli("price", "import", "-", input="key,kind,price,updated_at\nHU,country,0.8\n")
    assert run.exit_code == 2
    assert "-:2: expected 4 fields, got 3\n" in run.stderr
    assert listed(cli) == []


# -- which rule matched, and which almost did ----------------------------------------------


def test_a_guernsey_number_misses_the_gb_price(cli: Any) -> None:
    for key, price in [("default", "2"), ("GB", "0.3")]:
        assert cli("price", "set", key, price).exit_code == 0
    run = cli("price", "quote", "--to", "+447911123456", "--parts", "1", "--json")
    assert run.exit_code == 0, run.stderr
    q = doc(run)
    assert (q["country"], q["rule"], q["cost"]) == ("GG", "default", Decimal(2))
    assert q["matched"] == {"rule": "default", "kind": "default", "country": "GG"}
    assert q["near_misses"] == [{
        "rule": "GB", "kind": "country",
        "reason": "+447911123456 is in GG, which shares the calling code +44 with GB"}]
    text = cli("price", "quote", "--to", "+447911123456", "--parts", "1").stdout
    assert "Price rule      default (no price for GG)\n" in text
    assert text.endswith("Near misses     GB (+447911123456 is in GG, which shares the "
                         "calling code +44 with GB)\n")


def test_a_prefix_off_by_its_last_digit_is_a_near_miss(cli: Any) -> None:
    for key, price in [("HU", "0.8"), ("+36301", "0.5")]:
        assert cli("price", "set", key, price).exit_code == 0
    q = doc(cli("price", "quote", "--to", "+36302123456", "--parts", "1", "--json"))
    assert q["matched"] == {"rule": "HU", "kind": "country", "country": "HU"}
    assert q["near_misses"] == [{"rule": "+36301", "kind": "prefix",
                                 "reason": "+36302123456 starts with +36302, not +36301"}]


def test_an_exact_match_has_no_near_misses(cli: Any) -> None:
    for key, price in [("HU", "0.8"), ("+3630", "0.4")]:
        assert cli("price", "set", key, price).exit_code == 0
    q = doc(cli("price", "quote", "--to", "+36301234567", "--parts", "1", "--json"))
    assert q["matched"] == {"rule": "+3630", "kind": "prefix", "country": "HU"}
    assert q["near_misses"] == []
    text = cli("price", "quote", "--to", "+36301234567", "--parts", "1").stdout
    assert "Price rule      +3630 (prefix)\n" in text and "Near misses" not in text
