"""All output in one place: Rich tables for people, JSON / JSON lines / CSV for scripts.

User-controlled text (names, notes) is rendered as ``rich.text.Text`` so markup in it is
shown, never interpreted; control characters are made visible so they cannot break a
table, a CSV file or the terminal.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from json.encoder import encode_basestring as _quote
from typing import Any, TextIO

_CONTROL = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# ... and bidirectional overrides, which can make a terminal draw text out of order, and lone
# surrogates (bytes that were not UTF-8), which no stream can write.
_CONTROL_ALL = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def plain(value: Any) -> Any:
    """Dataclasses to dicts, recursively; Decimals stay Decimals for exact JSON."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


# Decimals travel through the C JSON encoder as strings tagged with a per-process random
# marker, then lose their quotes: exact numbers (``12.5``, never ``12.499999``) at C speed.
# The marker is unguessable, so no user string can pose as a number.
_MARK = secrets.token_hex(8)
_MARKED = re.compile(f'"{_MARK}(-?[0-9]+(?:\\.[0-9]+)?)"')


def _mark(value: Any) -> Any:
    if value is None or type(value) in (str, int, bool):
        return value
    if isinstance(value, Decimal):
        return _MARK + format(value, "f")
    if isinstance(value, dict):
        return {str(k): _mark(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mark(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _mark(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if value is None or isinstance(value, bool | int | str):
        return value
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def to_json(value: Any, indent: int | None = None) -> str:
    """JSON with Decimals written exactly as numbers."""
    if indent is None and type(value) is dict:
        flat = _flat_json(value)
        if flat is not None:
            return flat
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(_mark(value), ensure_ascii=False, indent=indent, separators=separators)
    return _MARKED.sub(r"\1", text)


def _flat_json(value: dict[str, Any]) -> str | None:
    """A one-level dict of plain values (a result line) written directly: the same text as
    the general path, in a fraction of the time; None if a value is not plain."""
    items = []
    for key, v in value.items():
        kind = type(v)
        if v is None:
            text = "null"
        elif kind is str:
            text = _quote(v)
        elif kind is bool:
            text = "true" if v else "false"
        elif kind is int:
            text = int.__repr__(v)
        elif kind is Decimal:
            text = format(v, "f")
        else:
            return None
        items.append(f"{_quote(str(key))}:{text}")
    return "{" + ",".join(items) + "}"


def _opt_str(v: str | None) -> str:
    return "null" if v is None else _quote(v)


def _opt_num(v: Decimal | int | None) -> str:
    return "null" if v is None else format(v, "f") if type(v) is Decimal else str(int(v))


def charge_line(r: Any, line: int) -> str:
    """One result line of ``charge --file``: ``to_json({**r.as_dict(), "line": line})`` for a
    ChargeResult, written field by field (one per message, so it is worth the speed)."""
    encoding = r.encoding
    if (r.status == "charged" and r.reason is None and r.message is None
            and r.metered is True and r.replayed is False and type(r.parts) is int
            and type(r.cost) is type(r.price) is type(r.balance) is Decimal
            and type(r.id) is type(r.user) is type(r.to) is type(r.rule) is type(r.country)
            is str and (encoding is None or type(encoding) is str)):
        # A plain charge, by far the most common line: fewer checks. (No encoding: the
        # caller gave the number of parts.)
        return (f'{{"status":"charged","id":{_quote(r.id)},"user":{_quote(r.user)},'
                f'"to":{_quote(r.to)},"reason":null,"message":null,'
                f'"cost":{r.cost:f},"parts":{int(r.parts)},'
                f'"encoding":{"null" if encoding is None else _quote(encoding)},'
                f'"price":{r.price:f},"rule":{_quote(r.rule)},"country":{_quote(r.country)},'
                f'"balance":{r.balance:f},"metered":true,"replayed":false,"line":{int(line)}}}')
    return (f'{{"status":{_quote(r.status)},"id":{_opt_str(r.id)},"user":{_opt_str(r.user)},'
            f'"to":{_opt_str(r.to)},"reason":{_opt_str(r.reason)},'
            f'"message":{_opt_str(r.message)},"cost":{_opt_num(r.cost)},'
            f'"parts":{_opt_num(r.parts)},"encoding":{_opt_str(r.encoding)},'
            f'"price":{_opt_num(r.price)},"rule":{_opt_str(r.rule)},'
            f'"country":{_opt_str(r.country)},"balance":{_opt_num(r.balance)},'
            f'"metered":{"true" if r.metered else "false"},'
            f'"replayed":{"true" if r.replayed else "false"},"line":{int(line)}}}')


def cell(value: Any) -> str:
    """Text of one table or CSV cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        return format(value, "f")
    return _CONTROL_ALL.sub(_escape, str(value))


# A text cell a spreadsheet would run as a formula (OWASP's CSV injection rule).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER_TEXT = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?\Z")


def csv_cell(value: Any) -> str:
    """Text of one CSV cell: ``cell``, and a text that a spreadsheet would take for a formula
    (``=HYPERLINK(...)``, ``@SUM(...)``, ``-2+3``) gets a leading ``'``, so that it is shown as
    text. Numbers stay numbers, and so does text that is one (a +3630 price prefix), which no
    spreadsheet runs."""
    text = cell(value)
    if (isinstance(value, str) and value.startswith(_FORMULA_START)
            and not _NUMBER_TEXT.match(value)):
        return "'" + text
    return text


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


@dataclass
class Output:
    """The chosen output format and the streams it writes to."""

    mode: str = "table"  # table | json | jsonl | csv
    quiet: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def machine(self) -> bool:
        return self.mode != "table"

    @property
    def silent(self) -> bool:
        """``--quiet`` for people's output: tables, panels and messages of a success are not
        printed; what a script asked for (JSON, JSON lines, CSV) still is."""
        return self.quiet and not self.machine

    def console(self, stream: TextIO | None = None) -> Any:
        from rich.console import Console

        return Console(file=stream or self.out, highlight=False, soft_wrap=False,
                       quiet=self.silent and stream is None)

    def document(self, value: Any) -> None:
        """One JSON document (``--json``)."""
        self.out.write(to_json(value, indent=2) + "\n")

    def line(self, value: Any) -> None:
        """One JSON line, flushed at once (streams, ``--jsonl``)."""
        self.out.write(to_json(value) + "\n")
        self.out.flush()

    def message(self, text: str, data: Any = None) -> None:
        """The result of a change: a sentence for people, the data for scripts."""
        if self.mode == "json":
            self.document(plain(data) if data is not None else {"message": text})
        elif self.mode == "jsonl":
            self.line(plain(data) if data is not None else {"message": text})
        elif not self.silent:
            self.out.write(_CONTROL.sub("?", text) + "\n")

    def rows(
        self,
        rows: Sequence[Any],
        columns: Sequence[tuple[str, str]],
        *,
        title: str | None = None,
        empty: str = "nothing to show",
    ) -> None:
        """A list of records: table, JSON array, JSON lines or CSV."""
        if self.silent:
            return
        records = [plain(r) for r in rows]
        if self.mode == "json":
            self.document(records)
        elif self.mode == "jsonl":
            for r in records:
                self.line(r)
        elif self.mode == "csv":
            # CSV carries every field, like JSON; the table shows what fits a terminal.
            keys = list(records[0]) if records else [key for key, _ in columns]
            writer = csv.writer(self.out, lineterminator="\n")
            writer.writerow(keys)
            writer.writerows([csv_cell(r.get(key)) for key in keys] for r in records)
        elif not records:
            self.err.write(empty + "\n")
        else:
            from smscredits import plain_table

            text = plain_table.render(records, columns, title=title, out=self.out,
                                      cell=_table_cell, right=NUMERIC)
            if text is None:  # a terminal, wide text or a tight fit: Rich lays it out
                self.console().print(table(records, columns, title=title))
            else:
                self.out.write(text)

    def record(
        self, data: Any, fields: Sequence[tuple[str, str]], *, title: str | None = None
    ) -> None:
        """One record: a two-column table for people, an object for scripts."""
        if self.silent:
            return
        if self.machine:
            self.document(plain(data)) if self.mode != "jsonl" else self.line(plain(data))
            return
        values = plain(data)
        from rich.table import Table
        from rich.text import Text

        grid = Table(
            title=Text(title) if title else None, show_header=False, box=None, padding=(0, 2, 0, 0)
        )
        grid.add_column(style="bold")
        grid.add_column()
        for key, label in fields:
            grid.add_row(label, Text(cell(values.get(key))))
        self.console().print(grid)

    def error(self, code: str, message: str) -> None:
        """One line on stderr (a JSON object with ``--json``/``--jsonl``)."""
        message = _SURROGATE.sub("\ufffd", message)  # a parser's echo of bytes not UTF-8
        if self.machine and self.mode != "csv":
            self.err.write(to_json({"error": {"code": code, "message": message}}) + "\n")
        else:
            self.err.write(f"Error: {_CONTROL.sub('?', message)}\n")
        self.err.flush()


def table(
    records: Iterable[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    title: str | None = None,
) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # No vertical rules: at 80 columns every character goes to the data.
    t = Table(
        title=Text(title) if title else None,
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    for key, label in columns:
        numeric = key in NUMERIC
        t.add_column(
            label,
            justify="right" if numeric else "left",
            overflow="fold",
            no_wrap=numeric or key in NO_WRAP,
        )
    for r in records:
        t.add_row(*(Text(_table_cell(key, r.get(key))) for key, _ in columns))
    return t


def _table_cell(key: str, value: Any) -> str:
    # Instants read better in a table as "2026-11-25 10:00" under an "(UTC)" header.
    if key in TIMES and isinstance(value, str) and value.endswith("Z"):
        return value.replace("T", " ")[:16]  # to the minute; JSON and CSV keep the seconds
    return cell(value)


TIMES = {"at", "created_at", "updated_at", "resets_at", "next_due", "last_applied"}
NO_WRAP = TIMES | {"kind", "user", "name", "window", "period", "status", "action"}


# Columns shown right-aligned.
NUMERIC = {
    "id",
    "amount",
    "balance",
    "balance_after",
    "overdraft",
    "available",
    "cost",
    "price",
    "parts",
    "limit",
    "spent",
    "remaining",
    "count",
    "messages",
    "refunded",
    "units",
}


def bar(value: Decimal, limit: Decimal | None, width: int = 20) -> str:
    """A text bar of value / limit (full when over)."""
    if not limit:
        return "░" * width if limit is not None else ""
    filled = min(width, int(value * width / limit + Decimal("0.5")))
    return "█" * filled + "░" * (width - filled)


def balance_panel(account: Any, windows: Sequence[Any], plans: Sequence[Any]) -> Any:
    """The terminal view of one account: balance, limits as bars, refill plans."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    top = Table.grid(padding=(0, 2))
    top.add_row(
        "Balance",
        Text(cell(account.balance), style="bold"),
        "Overdraft",
        cell(account.overdraft) if account.overdraft is not None else "unlimited",
    )
    top.add_row(
        "Available",
        cell(account.available) if account.available is not None else "unlimited",
        "Status",
        "disabled" if account.disabled else "active",
    )
    limits = Table.grid(padding=(0, 2))
    for w in windows:
        if w.limit is None:
            limits.add_row(w.window, Text("no limit", style="dim"), f"{cell(w.spent)} spent", "")
        else:
            style = "red" if w.remaining == 0 else "green"
            limits.add_row(
                w.window,
                Text(bar(w.spent, w.limit), style=style),
                f"{cell(w.spent)} / {cell(w.limit)}",
                f"resets {local_time(w.resets_at, account.tz)}",
            )
    parts: list[Any] = [top, Text("\nLimits", style="bold"), limits]
    active = [p for p in plans if p.status == "active"]
    if active:
        refills = Table.grid(padding=(0, 2))
        for p in active:
            when = f"next {p.next_due}" if p.next_due else ("armed" if p.armed else "fired")
            refills.add_row(f"#{p.id}", Text(f"{p.action} {p.rule}"), when)
        parts += [Text("\nRefill plans", style="bold"), refills]
    title = Text(f"{account.user} ({account.tz})")
    return Panel(Group(*parts), title=title, title_align="left", expand=False)


def usage_chart(rows: Sequence[Any], label: str, title: str) -> Any:
    """Spend per period as bars, with the numbers beside them."""
    from rich.table import Table
    from rich.text import Text

    top = max((r.spent for r in rows), default=Decimal(0))
    t = Table(title=Text(title), header_style="bold", box=None, padding=(0, 1))
    t.add_column(label, no_wrap=True)
    t.add_column("Spent", justify="right", no_wrap=True)
    t.add_column("", no_wrap=True)
    t.add_column("Messages", justify="right", no_wrap=True)
    t.add_column("Refunded", justify="right", no_wrap=True)
    for r in rows:
        t.add_row(
            Text(cell(r.period)),
            cell(r.spent),
            Text(bar(r.spent, top, 30).rstrip("░"), style="cyan"),
            cell(r.messages),
            cell(r.refunded),
        )
    return t


def local_time(iso_utc: str, tz: str) -> str:
    """An ISO UTC instant as local time in a zone: ``2026-11-26 00:00 CET``."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    at = datetime.fromisoformat(iso_utc.replace("Z", "+00:00"))
    return at.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")


class Progress:
    """A progress bar on stderr when stderr is a terminal; otherwise nothing at all."""

    def __init__(self, description: str, total: int | None) -> None:
        self.bar: Any = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task(description, total=total)
            self.bar.start()

    def advance(self, amount: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, amount)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
