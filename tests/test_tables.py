"""What people and scripts read: tables that never cut an id, a number, a time or a reference
(at 60, 80 and 120 columns, on a terminal and in a pipe), one object per line with --jsonl,
a header and a row with --csv, and every time in JSON and CSV in ISO 8601 UTC."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time

from tests.helpers import ok

DAVE = "dave@corp.example"
LONG = "n" * 30 + "." + "x" * 33  # the longest name there can be
assert len(LONG) == 64
REF = "batch-82-000123-abcdef"
NOTE = "credits added by hand after invoice 2026-117 was paid late, see ticket OPS-4711"
NOW = "2026-12-03 18:58:30"  # UTC: 19:58 in Budapest
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
WIDTHS = (60, 80, 120)

# Each table's columns: label and the JSON key it shows.
EVENTS = [("ID", "id"), ("At (UTC)", "at"), ("User", "user"), ("Kind", "kind"),
          ("Amount", "amount"), ("Balance", "balance_after"), ("Ref", "ref"), ("Note", "note"),
          ("Actor", "actor"), ("Detail", "detail")]
ACCOUNTS = [("User", "user"), ("Power", "kind"), ("Balance", "balance"), ("Held", "held"),
            ("Overdraft", "overdraft"), ("Available", "available"), ("Disabled", "disabled")]
WINDOWS = [("Window", "window"), ("Limit", "limit"), ("Spent", "spent"),
           ("Remaining", "remaining"), ("Resets at", "resets_at")]
PLANS = [("Plan", "id"), ("User", "user"), ("Action", "action"), ("Rule", "rule"),
         ("Status", "status"), ("Next due", "next_due_at"), ("Last applied", "last_applied_at")]
NUMBERS = {"id", "amount", "balance", "balance_after", "overdraft", "available", "limit",
           "spent", "remaining", "price"}
FREE = {"note", "rule", "detail"}
UTC_TIMES = {"at", "updated_at"}
LOCAL_TIMES = {"resets_at", "next_due_at", "last_applied_at"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# -- the world ----------------------------------------------------------------------------


def jump_event_ids(db_url: str, first: int) -> None:
    """The next event gets id ``first``: the events so far move up (no hash covers an id)."""
    from smscredits.storage.engine import open_db

    handle = open_db(db_url, actor="tester")
    try:
        with handle.write() as conn:
            top = conn.exec_driver_sql("SELECT max(id) FROM events").scalar() or 0
            conn.exec_driver_sql(f"UPDATE events SET id = id + {first - 1 - top}")
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('events', 'id'), {first - 1})")
    finally:
        handle.dispose()


@pytest.fixture
def world(cli: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Long names, 9-digit amounts with 3 decimals, 6-digit event ids, refs, notes, plans;
    yields ``show(*args, width=None)``: the command's stdout at that width (None: a pipe
    without COLUMNS)."""
    with freeze_time("2026-12-02 08:00:00") as clock:
        for name, tz in ((DAVE, "Europe/Budapest"), (LONG, "America/Argentina/Buenos_Aires"),
                         ("alice", "Asia/Kolkata")):
            ok(cli("user", "add", name, "--tz", tz))
        jump_event_ids(db_url, 901_620)
        for args in (
            ["power", "create", DAVE, "credits", "--initial", "123456789.123"],
            ["power", "create", LONG, "credits", "--initial", "987654321.5",
             "--overdraft", "100000000.125"],
            ["power", "create", "alice", "credits", "--initial", "5"],
            ["price", "set", "default", "1.5"], ["price", "set", "+3630", "0.625"],
            ["price", "set", "DE", "123456789.123"],
            ["limits", "set", DAVE, "--daily", "100000000", "--weekly", "250000000.5",
             "--monthly", "900000000.555"],
            ["refill", "schedule", DAVE, "--every", "month", "--on", "31", "--at", "09:15",
             "--top-up-to", "123456789.123"],
            ["refill", "schedule", LONG, "--when-below", "100000000.125", "--add",
             "200000000.5"],
            ["refill", "schedule", "alice", "--every", "day", "--at", "06:00", "--add", "5"],
        ):
            ok(cli(*args))
        clock.move_to("2026-12-03 08:00:00")
        ok(cli("refill", "run"))  # alice's plan: applied at 13:30 IST
        clock.move_to(NOW)
        ok(cli("charge", DAVE, "--to", "+36301234567", "--parts", "3", "--id", REF))
        ok(cli("charge", LONG, "--to", "+4915112345678", "--parts", "1", "--id", "m-2"))
        ok(cli("credits", "add", DAVE, "5.5", "--note", NOTE))

        def show(*args: str, width: int | None = None) -> str:
            if width is None:
                monkeypatch.delenv("COLUMNS", raising=False)
            else:
                monkeypatch.setenv("COLUMNS", str(width))
            return ok(cli(*args)).stdout

        show.clock = clock  # type: ignore[attr-defined]
        yield show


def data(show: Any, *args: str) -> Any:
    return json.loads(show(*args, "--json"), parse_float=Decimal)


# -- reading a table back -------------------------------------------------------------------


def columns_of(lines: list[str]) -> list[tuple[int, int]]:
    """The spans of a table's columns: runs of text apart by at least two blank columns in
    every line."""
    width = max(map(len, lines))
    blank = [all(len(line) <= p or line[p] == " " for line in lines) for p in range(width)]
    spans, start = [], None
    for p in range(width + 2):
        gap = p >= width or (blank[p] and (p + 1 >= width or blank[p + 1]))
        if start is None and not gap:
            start = p
        elif start is not None and gap:
            spans.append((start, p))
            start = None
    return spans


def parse(text: str, labels: list[str]) -> tuple[list[dict[str, str]], list[str], bool]:
    """The records a table (or its blocks) of these columns shows, as label -> text; the
    hidden labels; whether it was a table."""
    lines = text.splitlines()
    rules = [n for n, line in enumerate(lines) if line and set(line) == {"─"}]
    if not rules:
        return parse_blocks(lines, labels), [], False
    rule = rules[0]
    end = next((n for n in range(rule + 1, len(lines)) if lines[n].startswith("(hidden at")),
               len(lines))
    body = [lines[rule - 1], *lines[rule + 1 : end]]
    spans = columns_of(body)
    cells = [[line[a:b].strip() for a, b in spans] for line in body]
    labels, records = cells[0], []
    for row in cells[1:]:
        if row[0]:
            records.append(dict(zip(labels, row, strict=True)))
        else:  # a wrapped cell goes on
            for label, text_ in zip(labels, row, strict=True):
                if text_:
                    records[-1][label] = f"{records[-1][label]} {text_}".strip()
    footer = " ".join(lines[end:])
    hidden = re.findall(r"columns: (.*?) —", footer)
    return records, hidden[0].split(", ") if hidden else [], True


def parse_blocks(lines: list[str], labels: list[str]) -> list[dict[str, str]]:
    records: list[dict[str, str]] = []
    fresh = True
    for line in lines:
        label = max((k for k in labels if line == k or line.startswith(k + "  ")), key=len,
                    default=None)
        if label is None:
            fresh = True
            continue
        if fresh or label in records[-1]:
            records.append({})
            fresh = False
        records[-1][label] = line[len(label):].strip()
    return records


def shown_as(key: str, value: Any, tz: str | None) -> str:
    """How a table shows a JSON value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in UTC_TIMES:
        return value.replace("T", " ")[:16]
    if key in LOCAL_TIMES:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return at.astimezone(ZoneInfo(tz or "UTC")).strftime("%Y-%m-%d %H:%M %Z")
    return str(value)


def detail_shown(detail: dict[str, Any]) -> str:
    """An event's detail as the README says a table shows it: ``day=20->30 plan=1``."""
    old = detail.get("old") or {}
    return " ".join(f"{k}={'' if old[k] is None else old[k]}->{v}" if k in old else f"{k}={v}"
                    for k, v in detail.items() if k != "old")


def same(key: str, shown: str, value: Any, tz: str | None) -> bool:
    if isinstance(value, dict):
        value = detail_shown(value)
    if value is None:
        return shown == ""
    if key in NUMBERS:
        return Decimal(shown) == value  # the number read back is the number in the JSON
    if key in FREE and shown.endswith("…"):  # free text, cut after a few lines
        return value.replace(" ", "").startswith(shown[:-1].replace(" ", ""))
    if key in FREE:
        return shown.replace(" ", "") == value.replace(" ", "")  # wrapped at its spaces
    return shown == shown_as(key, value, tz)


def check(text: str, records: list[dict[str, Any]], columns: list[tuple[str, str]],
          width: int | None, tz: Any = None) -> bool:
    """The table shows every record, each value whole and equal to the JSON's; it fits the
    width but where a block's value alone is wider; a left-out column is named. Returns
    whether it was drawn as a table."""
    labels = [label for label, _ in columns]
    rows, hidden, is_table = parse(text, labels)
    assert len(rows) == len(records), text
    for row, record in zip(rows, records, strict=True):
        where = tz(record) if callable(tz) else tz
        shown = [label for label in labels if label in row]
        # A column neither shown nor named is one that is empty in every record.
        for label, key in columns:
            if label not in shown and label not in hidden:
                assert all(r[key] in (None, "") for r in records), (label, row, hidden)
        for label, key in columns:
            if label in row:
                assert same(key, row[label], record[key], where), (label, row[label],
                                                                   record[key])
    for n, line in enumerate(text.splitlines()):
        if width is not None and len(line) > width:  # only a title or a block's long value
            assert not is_table and (n == 0 or any(line.startswith(k + "  ")
                                                   for k in labels)), line
    if width is None:
        assert not hidden and is_table, text
    return is_table


# -- every table command -----------------------------------------------------------------

def without_user(columns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [c for c in columns if c[0] != "User"]


TABLES: list[tuple[list[str], list[tuple[str, str]], str | None]] = [
    (["user", "list"], [("User", "user"), ("Time zone", "tz"), ("Disabled", "disabled"),
                        ("Balance", "balance")], None),
    (["power", "list"], ACCOUNTS, None),
    (["credits", "balance"], ACCOUNTS, None),
    (["limits", "show", DAVE], WINDOWS, "windows"),
    (["limits", "show"], [("User", "user"), *WINDOWS], None),
    (["refill", "list"], PLANS, None),
    (["refill", "list", DAVE], without_user(PLANS), None),
    (["price", "list"], [("Destination", "key"), ("Kind", "kind"), ("Price", "price"),
                         ("Updated (UTC)", "updated_at")], None),
    (["log"], EVENTS, None),
    (["log", DAVE], without_user(EVENTS), None),
    (["events", "--limit", "50"], EVENTS, None),
    (["events", LONG], without_user(EVENTS), None),
    (["config", "show"], [("Key", "key"), ("Value", "value"), ("Source", "source"),
                          ("Environment", "env")], None),
]


def test_every_table_shows_whole_values_at_every_width(world: Any) -> None:
    for args, columns, nested in TABLES:
        doc = data(world, *args)
        records = doc[nested] if nested else doc
        zone = doc.get("tz") if isinstance(doc, dict) else None
        if args == ["limits", "show"]:  # every user's windows, each in its user's zone
            def zone(record: dict[str, Any]) -> str:
                return str(record["tz"])
        if args[0] == "refill":
            plans = {p["id"]: p["tz"] for p in records}

            def zone(record: dict[str, Any], plans: dict[int, str] = plans) -> str:
                return plans[record["id"]]

        tables = []
        for width in (*WIDTHS, None):
            text = world(*args, width=width)
            tables.append(check(text, records, columns, width, zone))
        assert tables[-1], args  # a pipe gets the whole table


def test_refill_run_shows_whole_periods_and_amounts(world: Any) -> None:
    world.clock.move_to("2026-12-05 01:00:00")
    due = data(world, "refill", "run", "--dry-run")
    assert [(r["user"], r["period"]) for r in due] == [("alice", "2026-12-04"),
                                                       ("alice", "2026-12-05")]
    columns = [("Plan", "plan_id"), ("User", "user"), ("Period", "period"), ("Added", "amount"),
               ("Balance", "balance")]
    for width in (*WIDTHS, None):
        check(world("refill", "run", "--dry-run", width=width), due, columns, width)


def test_quote_shows_limits_left_in_the_users_zone_like_limits_show(world: Any) -> None:
    quote = ["price", "quote", "--to", "+36301234567", "--parts", "2", "--user", DAVE]
    windows = data(world, *quote)["limits"]
    assert all(ISO.match(w["resets_at"]) for w in windows)
    for width in (*WIDTHS, None):
        text = world(*quote, width=width)
        table = text[text.index("Limits left for"):]
        check(table, windows, WINDOWS, width, "Europe/Budapest")
        assert "Limits left for dave@corp.example (Europe/Budapest)" in text
    text = world(*quote, width=120)
    # Local midnight, named: the same text as `limits show`.
    assert "2026-12-04 00:00 CET" in text
    assert "2026-12-04 00:00 CET" in world("limits", "show", DAVE, width=120)
    assert "2026-12-03 23:00" not in text


def test_the_issues_log_at_80_columns_keeps_id_time_and_balance_whole(
        cli: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    with freeze_time("2026-12-03 19:58:30"):
        ok(cli("user", "add", DAVE))
        ok(cli("price", "set", "default", "0.4"))
        jump_event_ids(db_url, 901_629)
        ok(cli("power", "create", DAVE, "credits", "--initial", "530497.45"))
        ok(cli("charge", DAVE, "--to", "+36301234567", "--parts", "1", "--id", REF))
        text = ok(cli("log", "--limit", "50")).stdout
        monkeypatch.setenv("COLUMNS", "120")
        wide = ok(cli("log", "--limit", "50")).stdout
    # At 80 columns the time, the user, the amount and the balance are whole; what does not
    # fit is left out, and named.
    row = next(line for line in text.splitlines() if "message.charged" in line)
    assert row.split() == ["2026-12-03", "19:58", DAVE, "message.charged", "-0.4",
                           "530497.05"]
    assert " ".join(text.splitlines()[-2:]) == (
        "(hidden at 80 columns: ID, Ref, Actor, Detail — widen the terminal or use --json)")
    assert all(len(line) <= 80 for line in text.splitlines())
    row = next(line for line in wide.splitlines() if "message.charged" in line)
    assert row.split() == ["901630", "2026-12-03", "19:58", DAVE, "message.charged", "-0.4",
                           "530497.05", REF, "tester"]
    assert wide.splitlines()[-1] == ("(hidden at 120 columns: Detail — widen the terminal or "
                                     "use --json)")


def test_a_pipe_gets_every_column_whole(world: Any) -> None:
    text = world("log", DAVE, width=None)
    lines = text.splitlines()
    assert any(NOTE in line for line in lines)  # on one line, not wrapped nor cut
    assert any(REF in line for line in lines)
    assert lines[1].split() == ["ID", "At", "(UTC)", "Kind", "Amount", "Balance", "Ref", "Note",
                                "Actor", "Detail"]
    assert max(map(len, lines)) > 120


def test_a_narrow_table_wraps_notes_and_names_what_it_hides(world: Any) -> None:
    labels = [label for label, _ in without_user(EVENTS)]
    text = world("log", DAVE, width=120)
    rows, hidden, is_table = parse(text, labels)
    assert is_table and hidden == ["Actor", "Detail"]
    assert rows[0]["Note"] == NOTE or rows[0]["Note"].endswith("…")
    assert rows[1]["Ref"] == REF
    wrapped = [line for line in text.splitlines() if line.startswith(" " * 20)]
    assert wrapped, "the note wraps under its column"
    text = world("log", DAVE, width=80)
    rows, hidden, is_table = parse(text, labels)
    assert is_table and hidden == ["Ref", "Note", "Detail"]  # the actor fits again
    assert text.splitlines()[-1] == ("(hidden at 80 columns: Ref, Note, Detail — widen the "
                                     "terminal or use --json)")


def test_names_too_wide_for_a_table_give_one_block_per_record(world: Any) -> None:
    text = world("power", "list", width=60)
    assert "─" not in text
    assert f"User       {LONG}" in text.splitlines()
    assert "Available  964197532.502" in text.splitlines()


def test_a_terminal_shows_the_layout_a_pipe_gets_with_styles(
        world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = {w: world("log", DAVE, width=w) for w in WIDTHS}
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    for width in WIDTHS:
        styled = world("log", DAVE, width=width)
        assert "\x1b[" in styled
        assert ANSI.sub("", styled) == pipe[width]


def test_usage_keeps_its_numbers_whole_and_narrows_its_bars(world: Any) -> None:
    rows = data(world, "usage", DAVE, "--by", "country")
    for width in (*WIDTHS, 40, None):
        text = world("usage", DAVE, "--by", "country", width=width)
        for r in rows:
            line = next(x for x in text.splitlines() if x.startswith(r["period"] + " "))
            tokens = line.replace("█", " ").split()
            assert [Decimal(t) for t in tokens[1:]] in (
                [r["spent"], r["messages"], r["refunded"]], [r["messages"], r["spent"]]), line
            if width is not None:
                assert len(line) <= width


def test_the_balance_panel_keeps_numbers_and_times_whole(world: Any) -> None:
    balance = str(data(world, "credits", "balance", DAVE)["balance"])
    assert balance == "123456792.748"
    for width in (40, *WIDTHS):
        text = world("credits", "balance", DAVE, width=width)
        assert all(len(line) <= width for line in text.splitlines()), text
        for whole in (balance, "1.875 / 100000000", "1.875 / 900000000.555",
                      "resets 2026-12-04 00:00 CET", "next 2026-12-31 09:15 CET"):
            assert whole in text, (width, whole, text)
    text = world("credits", "balance", LONG, width=60)
    assert LONG in text  # too wide for the panel's border: on a line of its own, whole


# -- one object: --csv and --jsonl ---------------------------------------------------------

ONE_OBJECT = [
    ["credits", "balance", DAVE], ["user", "show", DAVE], ["power", "show", DAVE],
    ["price", "quote", "--to", "+36301234567", "--text", "Hello"],
    ["credits", "add", "alice", "1"],
    ["charge", "alice", "--to", "+36301234567", "--parts", "1", "--id", "m-9"],
    ["user", "add", "bob"], ["verify"],
]


def test_jsonl_is_one_object_per_line(world: Any) -> None:
    for args in [*ONE_OBJECT, ["limits", "show", DAVE], ["limits", "set", "alice",
                                                         "--daily", "10"]]:
        lines = world(*args, "--jsonl").splitlines()
        assert len(lines) == 1, (args, lines)
        assert isinstance(json.loads(lines[0]), dict)


def test_csv_of_one_object_is_a_header_and_a_row(world: Any) -> None:
    for args in ONE_OBJECT:
        text = world(*args, "--csv")
        rows = list(csv.reader(io.StringIO(text)))
        assert len(rows) == 2 and len(rows[0]) == len(rows[1]), (args, text)
    balance = next(csv.DictReader(io.StringIO(world("credits", "balance", DAVE, "--csv"))))
    assert (balance["user"], balance["balance"]) == (DAVE, "123456792.748")


def test_csv_of_limits_is_a_row_per_window(world: Any) -> None:
    rows = list(csv.DictReader(io.StringIO(world("limits", "show", DAVE, "--csv"))))
    assert [(r["user"], r["window"], r["limit"]) for r in rows] == [
        (DAVE, "day", "100000000"), (DAVE, "week", "250000000.5"),
        (DAVE, "month", "900000000.555")]
    assert all(ISO.match(r["resets_at"]) for r in rows)


# -- times --------------------------------------------------------------------------------


def test_every_time_in_json_and_csv_is_iso_utc(world: Any) -> None:
    plans = data(world, "refill", "list")
    times = [p[k] for p in plans for k in ("next_due_at", "last_applied_at") if p[k] is not None]
    times += [w["resets_at"] for w in data(world, "limits", "show", DAVE)["windows"]]
    times += [e["at"] for e in data(world, "events")]
    times += [u["created_at"] for u in data(world, "user", "list")]
    times += [p["updated_at"] for p in data(world, "price", "list")]
    times += [w["resets_at"] for w in data(world, "price", "quote", "--to", "+36301234567",
                                           "--parts", "1", "--user", DAVE)["limits"]]
    assert times and all(ISO.match(t) for t in times), times
    by_user = {p["user"]: p for p in plans}
    assert by_user[DAVE]["next_due_at"] == "2026-12-31T08:15:00Z"  # 09:15 CET
    assert by_user["alice"]["last_applied_at"] == "2026-12-03T08:00:00Z"
    assert by_user["alice"]["next_due_at"] == "2026-12-04T00:30:00Z"  # 06:00 IST
    rows = list(csv.DictReader(io.StringIO(world("refill", "list", "--csv"))))
    assert {r["user"]: r["next_due_at"] for r in rows}[DAVE] == "2026-12-31T08:15:00Z"


def test_refill_list_shows_the_last_application_in_the_users_zone(world: Any) -> None:
    labels = [label for label, _ in without_user(PLANS)]
    text = world("refill", "list", "alice", width=120)
    rows, hidden, _ = parse(text, labels)
    assert hidden == []
    assert (rows[0]["Last applied"], rows[0]["Next due"]) == ("2026-12-03 13:30 IST",
                                                              "2026-12-04 06:00 IST")
    dave = parse(world("refill", "list", DAVE, width=120), labels)[0][0]
    assert (dave["Next due"], dave["Last applied"]) == ("2026-12-31 09:15 CET", "")


def test_user_show_gives_its_creation_in_the_users_zone(world: Any) -> None:
    assert "Created    2026-12-02 13:30 IST" in world("user", "show", "alice").splitlines()
    assert data(world, "user", "show", "alice")["created_at"] == "2026-12-02T08:00:00Z"


# -- parts given, not counted --------------------------------------------------------------


def test_quote_and_charge_with_parts_give_null_encoding_and_units(world: Any) -> None:
    quote = data(world, "price", "quote", "--to", "+36301234567", "--parts", "1")
    assert (quote["encoding"], quote["units"], quote["parts"]) == (None, None, 1)
    charged = data(world, "charge", "alice", "--to", "+36301234567", "--parts", "1",
                   "--id", "m-parts")
    assert charged["encoding"] is None
    counted = data(world, "price", "quote", "--to", "+36301234567", "--text", "Hello")
    assert (counted["encoding"], counted["units"]) == ("GSM-7", 5)
    lines = world("price", "quote", "--to", "+36301234567", "--parts", "1").splitlines()
    assert "Encoding        -" in lines and "Units           -" in lines
