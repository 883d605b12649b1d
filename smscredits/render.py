"""All output in one place: Rich tables for people, JSON / JSON lines / CSV for scripts.

User-controlled text (names, notes) is rendered as ``rich.text.Text`` so markup in it is
shown, never interpreted; control characters are made visible so they cannot break a
table, a CSV file or the terminal.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TextIO

import orjson

if TYPE_CHECKING:
    from smscredits.charging import ChargeResult

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


# One JSON writer, orjson, for every document and line: compact (or indented by two),
# keys in order, non-ASCII as it is. A Decimal is written as its exact text (``12.5``, never a
# float); what orjson refuses (a lone surrogate, an int beyond 64 bits, a key that is no str)
# is made writable on a second try, so that any value the project holds can be written.
_INDENTED = orjson.OPT_INDENT_2
# A datetime is refused, not written in orjson's own format: the project writes ISO UTC text.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME


def to_json(value: Any, indent: int | None = None) -> str:
    """JSON text of ``value`` (dicts, lists, tuples, dataclasses, str, int, bool, None,
    Decimal), on one line, or indented by 2 (the only indent there is)."""
    if indent not in (None, 2):
        raise ValueError(f"JSON is indented by 2 or not at all, not by {indent}")
    option = _OPTIONS | _INDENTED if indent else _OPTIONS
    try:
        return orjson.dumps(value, default=_default, option=option).decode()
    except orjson.JSONEncodeError:
        writable = _writable(value, indent is not None, 0)
        return orjson.dumps(writable, default=_default, option=option).decode()


def _number(value: Decimal) -> orjson.Fragment:
    """A Decimal as an exact JSON number. ``str`` takes a third of ``format(value, "f")``'s
    time and gives the same text, unless it has an exponent (``1E+3``, ``1E-7``)."""
    text = str(value)
    if "E" in text or "e" in text:
        text = format(value, "f")
    return orjson.Fragment(text)


def _default(value: Any) -> orjson.Fragment:
    if isinstance(value, Decimal):
        return _number(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# The JSON numbers of the cost and price of recent result lines, by cost. A charge's cost and
# price are the Decimals of a cached quote, the same objects line after line, so their text
# is kept: found by the cost's hash (which the object keeps), used only for the very same
# objects (an equal Decimal may be written otherwise: 0.05, 0.050).
_shown: dict[Any, tuple[Any, Any, Any, Any]] = {}
_SHOWN_MAX = 1024


def _plain_charge(r: ChargeResult) -> str | None:
    """A plain charge's result, by far the most common, written out up to its last field
    (a third of ``as_dict`` and ``to_json``'s time); None for any other result. Its strings
    need no escape; its Decimals are written as ``_number`` writes them (``f``: no exponent)."""
    user, msg_id, encoding = r.user, r.id, r.encoding
    if (r.status == "charged" and r.reason is None and r.message is None
            and r.metered is True and r.replayed is False and r.refusal is None
            and r.held is None and r.expires_at is None and type(r.parts) is int
            and type(r.cost) is type(r.price) is type(r.balance) is Decimal
            and type(msg_id) is type(user) is type(r.to) is type(r.rule) is type(r.country)
            is str and _bare(msg_id + user + r.to + r.rule + r.country)
            and (encoding is None or encoding in _ENCODINGS)):
        return (f'{{"status":"charged","id":"{msg_id}","user":"{user}","to":"{r.to}",'
                f'"reason":null,"message":null,"cost":{r.cost:f},"parts":{r.parts},'
                f'"encoding":{"null" if encoding is None else _ENCODINGS[encoding]},'
                f'"price":{r.price:f},"rule":"{r.rule}","country":"{r.country}",'
                f'"balance":{r.balance:f},"metered":true,"replayed":false,"refusal":null,'
                f'"held":null,"expires_at":null')
    return None


def result_doc(r: ChargeResult) -> dict[str, Any]:
    """A result as the HTTP API shows it: ``as_dict`` without ``line`` (a file's own)."""
    doc = r.as_dict()
    del doc["line"]
    return doc


def result_json(r: ChargeResult) -> str:
    """``to_json(result_doc(r))``, a plain charge's written out."""
    plain = _plain_charge(r)
    return plain + "}" if plain is not None else to_json(result_doc(r))


def charge_line(r: ChargeResult, line: int) -> str:
    """One result line of ``charge --file``: ``to_json({**r.as_dict(), "line": line})``.
    Once per message, so the dict is written out here and its amounts made numbers here
    (orjson's call back per Decimal costs more)."""
    plain = _plain_charge(r)
    if plain is not None:
        return f'{plain},"line":{int(line)}}}'
    cost, price, balance = r.cost, r.price, r.balance
    seen = _shown.get(cost)
    if seen is not None and seen[0] is cost and seen[2] is price:
        cost_json, price_json = seen[1], seen[3]
    else:
        cost_json = _number(cost) if type(cost) is Decimal else cost
        price_json = _number(price) if type(price) is Decimal else price
        if len(_shown) >= _SHOWN_MAX:
            _shown.clear()
        _shown[cost] = (cost, cost_json, price, price_json)
    doc = {"status": r.status, "id": r.id, "user": r.user, "to": r.to, "reason": r.reason,
           "message": r.message, "cost": cost_json, "parts": r.parts, "encoding": r.encoding,
           "price": price_json, "rule": r.rule, "country": r.country,
           "balance": _number(balance) if type(balance) is Decimal else balance,
           "metered": r.metered, "replayed": r.replayed, "refusal": r.refusal,
           "held": _number(r.held) if type(r.held) is Decimal else r.held,
           "expires_at": r.expires_at, "line": line}
    try:
        return orjson.dumps(doc, default=_default, option=_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return to_json(doc)


_ENCODINGS = {"GSM-7": '"GSM-7"', "UCS-2": '"UCS-2"'}


def _bare(text: str) -> bool:
    """Whether JSON writes ``text`` as it is, between quotes."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


_INT_RANGE = range(-(2**63), 2**64)  # what orjson writes of an int


def _writable(value: Any, indented: bool, depth: int) -> Any:
    """``value`` with what orjson refuses made writable: a str with a lone surrogate (bytes
    that were not UTF-8) as its JSON text with ``\\udcff`` escapes, an int beyond 64 bits as
    its digits, a key that is no str as ``str(key)``. ``depth``: how deep in the document
    ``value`` is, which a written object's indentation follows."""
    if isinstance(value, str):
        return orjson.Fragment(_escaped(value)) if _SURROGATE.search(value) else value
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value in _INT_RANGE else orjson.Fragment(int.__repr__(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # As orjson writes a dataclass: its fields but those named with a leading "_".
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
                 if not f.name.startswith("_")}
    if isinstance(value, dict):
        items = [(k if type(k) is str else str(k), v) for k, v in value.items()]
        if any(_SURROGATE.search(k) for k, _ in items):  # a key cannot be a Fragment
            return orjson.Fragment(_object(items, indented, depth))
        return {k: _writable(v, indented, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [_writable(v, indented, depth + 1) for v in value]
    return value


def _object(items: list[tuple[str, Any]], indented: bool, depth: int) -> str:
    """The JSON text of an object, written pair by pair, as orjson would place it at
    ``depth`` (``items`` is not empty)."""
    if not indented:
        return "{" + ",".join(f"{_escaped(k)}:{to_json(v)}" for k, v in items) + "}"
    inner = "\n" + "  " * (depth + 1)  # orjson's JSON has a newline only between values
    pairs = [f"{_escaped(k)}: " + to_json(v, indent=2).replace("\n", inner) for k, v in items]
    return "{" + inner + ("," + inner).join(pairs) + "\n" + "  " * depth + "}"


_SURROGATES = re.compile(r"([\ud800-\udfff])")


def _escaped(text: str) -> str:
    """A str as a JSON string, a lone surrogate in it as its escape (``"\\udcff"``)."""
    parts = _SURROGATES.split(text)  # text, a surrogate, text, ...
    return '"' + "".join(orjson.dumps(p).decode()[1:-1] if i % 2 == 0 else
                         f"\\u{ord(p):04x}" for i, p in enumerate(parts)) + '"'


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
    """Text of one CSV cell: ``cell`` with booleans as ``true``/``false``; a text that a
    spreadsheet would take for a formula (``=HYPERLINK(...)``, ``@SUM(...)``, ``-2+3``) gets a
    leading ``'``, so that it is shown as text. Numbers stay numbers, and so does text that
    is one (a +3630 price prefix), which no spreadsheet runs."""
    if isinstance(value, bool):  # as JSON writes them: a script reads one vocabulary
        return "true" if value else "false"
    if isinstance(value, dict | list):  # an event's detail: JSON text in one cell
        return to_json(value)
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
        made = console(stream or self.out)
        if self.silent and stream is None:
            made.quiet = True
        return made

    def document(self, value: Any) -> None:
        """One JSON document (``--json``)."""
        self.out.write(to_json(value, indent=2) + "\n")

    def line(self, value: Any) -> None:
        """One JSON line, flushed at once (streams, ``--jsonl``)."""
        self.out.write(to_json(value) + "\n")
        self.out.flush()

    def message(self, text: str, data: Any = None) -> None:
        """The result of a change: a sentence for people, the data for scripts."""
        if self.machine:
            self.one(data if data is not None else {"message": text})
        elif not self.silent:
            self.out.write(_CONTROL.sub("?", text) + "\n")

    def stream(
        self,
        chunks: Iterable[Sequence[Any]],
        columns: Sequence[tuple[str, str]],
        **table: Any,
    ) -> None:
        """``rows`` for an export of any length, read in chunks: JSON, JSON lines and CSV are
        written chunk by chunk (constant memory; a JSON array with one record per line); a
        table needs all its rows to size its columns, so it takes them all."""
        if self.mode == "table":
            self.rows([r for chunk in chunks for r in chunk], columns, **table)
            return
        writer = csv.writer(self.out, lineterminator="\n")
        count = 0
        for chunk in chunks:
            records = [plain(r) for r in chunk]
            if self.mode == "csv":
                if count == 0 and records:
                    writer.writerow(list(records[0]))
                writer.writerows([csv_cell(v) for v in r.values()] for r in records)
            else:
                sep = ",\n" if self.mode == "json" else "\n"
                lead = ("[\n" if count == 0 else sep) if self.mode == "json" else ""
                if records:
                    self.out.write(lead + sep.join(to_json(r) for r in records)
                                   + ("" if self.mode == "json" else "\n"))
            count += len(records)
            self.out.flush()
        if self.mode == "json":
            self.out.write("[]\n" if count == 0 else "\n]\n")
        elif self.mode == "csv" and count == 0:
            writer.writerow([key for key, _ in columns])

    def rows(
        self,
        rows: Sequence[Any],
        columns: Sequence[tuple[str, str]],
        *,
        title: str | None = None,
        empty: str = "nothing to show",
        optional: Mapping[str, int] | None = None,
    ) -> None:
        """A list of records: table, JSON array, JSON lines or CSV. ``optional``: the columns
        a short width may leave out of the table, with their priority (lowest first)."""
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
                                      cell=_table_cell, right=NUMERIC, free=FREE,
                                      optional=optional)
            if text is None:  # a terminal, or text beyond ASCII: Rich draws the same layout
                draw(records, columns, title=title, out=self.out, optional=optional)
            else:
                self.out.write(text)

    def one(self, value: Any) -> None:
        """One object for scripts: a JSON document (``--json``), one JSON line (``--jsonl``)
        or a CSV header and one row (``--csv``; a nested value is a cell of JSON text)."""
        data = plain(value)
        if self.mode == "jsonl":
            self.line(data)
        elif self.mode == "csv" and isinstance(data, dict):
            self.rows([{k: to_json(v) if isinstance(v, dict | list) else v
                        for k, v in data.items()}], [])
        else:
            self.document(data)

    def record(
        self, data: Any, fields: Sequence[tuple[str, str]], *, title: str | None = None
    ) -> None:
        """One record: "Label  value" lines for people (nothing cut: a long value runs on,
        as the terminal wraps it), an object for scripts."""
        if self.silent:
            return
        if self.machine:
            self.one(data)
            return
        values = plain(data)
        pairs(self.out, [[(label, cell(values.get(key))) for key, label in fields]], title)

    def error(self, code: str, message: str) -> None:
        """One line on stderr (a JSON object with ``--json``/``--jsonl``)."""
        message = _SURROGATE.sub("\ufffd", message)  # a parser's echo of bytes not UTF-8
        if self.machine and self.mode != "csv":
            self.err.write(to_json({"error": {"code": code, "message": message}}) + "\n")
        else:
            self.err.write(f"Error: {_CONTROL.sub('?', message)}\n")
        self.err.flush()


# Wide enough for any line a view writes: "unlimited" for a Rich console on a pipe.
UNLIMITED = 100_000


def console(out: TextIO) -> Any:
    """A Rich console on ``out``: a terminal's width (or COLUMNS); on a pipe or a file,
    COLUMNS when set, else no limit (nothing is cut to fit a terminal that is not there)."""
    from rich.console import Console

    from smscredits import plain_table

    rich = Console(file=out, highlight=False, soft_wrap=False)
    if not rich.is_terminal:
        rich.width = plain_table.pipe_width() or UNLIMITED
    return rich


def width_limit(rich: Any) -> int | None:
    """The width a view on this console is laid out for; None: no limit."""
    return None if rich.width >= UNLIMITED else int(rich.width)


def draw(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    title: str | None,
    out: TextIO,
    optional: Mapping[str, int] | None = None,
) -> None:
    """A table drawn by Rich, laid out by the rule of ``plain_table`` (nothing cut)."""
    from rich import box
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    from smscredits import plain_table

    rich = console(out)
    lay = plain_table.layout(records, columns, title=title, limit=width_limit(rich),
                             cell=_table_cell, right=NUMERIC, free=FREE, optional=optional,
                             measure=cell_len)
    if lay.blocks is not None:
        pairs(out, lay.blocks, title, rich=rich)
        return
    if lay.title is not None and not lay.title_inside:
        rich.print(Text(lay.title), soft_wrap=True)  # wider than the table: never wrapped
    # No vertical rules, no edges: at 80 columns every character goes to the data.
    t = Table(
        title=Text(lay.title) if lay.title is not None and lay.title_inside else None,
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )
    for label, width, right in zip(lay.labels, lay.widths, lay.right, strict=True):
        # Every width is laid out already; "ellipsis" would only ever show a mistake.
        t.add_column(Text(label), justify="right" if right else "left", width=width,
                     no_wrap=True, overflow="ellipsis")
    for row in lay.rows:
        t.add_row(*(Text("\n".join(lines)) for lines in row))
    rich.print(t)
    footer = lay.footer()
    if footer:
        lines = plain_table.wrap(footer, lay.limit or len(footer), cell_len, len(footer))
        rich.print(Text("\n".join(lines), style="dim"), soft_wrap=True)


def pairs(out: TextIO, blocks: Sequence[Sequence[tuple[str, str]]], title: str | None,
          *, rich: Any = None) -> None:
    """Records as blocks of "Label  value" lines (labels in bold on a terminal)."""
    from smscredits import plain_table

    if rich is None and plain_table.plain_stream(out):
        out.write(plain_table.write_blocks(title, blocks))
        return
    from rich.text import Text

    rich = rich or console(out)
    pad = max((len(label) for block in blocks for label, _ in block), default=0) + 2
    if title is not None:
        rich.print(Text(title), soft_wrap=True)
        rich.print()
    for n, block in enumerate(blocks):
        if n:
            rich.print()
        for label, value in block:
            line = Text.assemble((label.ljust(pad), "bold"), value)
            line.rstrip()
            rich.print(line, soft_wrap=True)


def _table_cell(key: str, value: Any) -> str:
    # Instants read better in a table as "2026-11-25 10:00" under an "(UTC)" header.
    if key in TIMES and isinstance(value, str) and value.endswith("Z"):
        return value.replace("T", " ")[:16]  # to the minute; JSON and CSV keep the seconds
    if isinstance(value, dict):
        return detail_text(value)
    return cell(value)


def detail_text(detail: Mapping[str, Any]) -> str:
    """An event's detail for people: ``day=20->30 week=->100``, ``parts=2 to=+3630...``."""
    old = detail.get("old")
    old = old if isinstance(old, dict) else {}
    shown = [f"{k}={cell(old.get(k))}->{cell(v)}" if k in old else f"{k}={cell(v)}"
             for k, v in detail.items() if k != "old"]
    shown += [f"{k}={cell(v)}->" for k, v in old.items() if k not in detail]  # removed
    return " ".join(shown)


TIMES = {"at", "created_at", "updated_at", "resets_at", "next_due_at", "last_applied_at",
         "expires_at"}
# Columns of free text: they wrap (and are cut with "…" after a few lines). Every other
# column holds ids, numbers, times, names or references, which are never cut nor wrapped.
FREE = {"note", "rule", "detail", "meaning"}


# Columns shown right-aligned.
NUMERIC = {
    "id",
    "amount",
    "balance",
    "balance_after",
    "held",
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


PANEL_BAR = 20  # the widest limit bar of the balance panel


def balance_panel(account: Any, windows: Sequence[Any], plans: Sequence[Any],
                  limit: int | None = None) -> Any:
    """The terminal view of one account: balance, limits as bars, refill plans. Laid out
    for ``limit`` columns (None: no limit) by the rule of tables: numbers, times and names
    are never cut nor wrapped; bars narrow, then go; what does not fit beside goes below."""
    from rich.cells import cell_len
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from smscredits import plain_table

    title = f"{account.user} ({account.tz})"
    # A title too long for the border: no border (Rich would cut the title), the title on
    # a line of its own that nothing cuts.
    bordered = limit is None or cell_len(title) <= limit - 6
    inner = limit if limit is None or not bordered else limit - 4  # borders and padding
    span = plain_table.span

    def fits(*widths: int) -> bool:
        return inner is None or span(widths) <= inner

    def grid(rows: list[list[Any]], wrap: int | None = None) -> Any:
        """A grid of unwrapped cells (but column ``wrap``), laid out as given."""
        t = Table.grid(padding=(0, 2))
        for i in range(max(map(len, rows), default=0)):
            t.add_column(no_wrap=i != wrap)
        for row in rows:
            t.add_row(*row)
        return t

    balance, available = cell(account.balance), (
        cell(account.available) if account.available is not None else "unlimited")
    overdraft = cell(account.overdraft) if account.overdraft is not None else "unlimited"
    status = "disabled" if account.disabled else "active"
    values = [("Balance", Text(balance, style="bold")), ("Overdraft", overdraft),
              ("Available", available), ("Status", status)]
    held = cell(account.held) if getattr(account, "held", 0) else ""
    if held:  # open holds: shown beside the balance they are not yet taken from
        values = [values[0], ("Held", held), values[2], values[1], values[3]]
    if fits(9, max(len(balance), len(available)), 9,
            max(len(overdraft), len(status), len(held))):
        top = grid([[*values[i], *values[i + 1]] if i + 1 < len(values) else list(values[i])
                    for i in range(0, len(values), 2)])
    else:  # one value a line
        top = grid([list(v) for v in values])
    parts: list[Any] = [top] if bordered else [
        Text(title, style="bold", no_wrap=True, overflow="ignore"), top]
    parts += [Text("\nLimits", style="bold"), _limit_grid(windows, account.tz, inner, grid)]
    active = [p for p in plans if p.status == "active"]
    if active:
        rows = []
        for p in active:
            when = (f"next {local_time(p.next_due_at, account.tz)}" if p.next_due_at
                    else ("armed" if p.armed else "fired"))
            what = Text(f"{p.action} {p.rule}")
            if fits(len(f"#{p.id}"), plain_table.FREE_MIN, cell_len(when)):
                rows.append([f"#{p.id}", what, when])
            else:  # the due time under the rule
                rows += [[f"#{p.id}", what], ["", when]]
        parts += [Text("\nRefill plans", style="bold"), grid(rows, wrap=1)]
    if not bordered:
        return Group(*parts)
    return Panel(Group(*parts), title=Text(title), title_align="left", expand=False)


def _limit_grid(windows: Sequence[Any], tz: str, inner: int | None, grid: Any) -> Any:
    """The limit windows of the balance panel: a bar, spent / limit, when it resets. Bars
    narrow to fit, then go; then "resets ..." goes under the numbers."""
    from rich.text import Text

    from smscredits import plain_table

    span, gap = plain_table.span, plain_table.GAP

    def rows(bars: bool) -> list[tuple[Any, str, str]]:
        return [(w, f"{cell(w.spent)} / {cell(w.limit)}" if w.limit is not None
                 else f"{cell(w.spent)} spent" + ("" if bars else ", no limit"),
                 f"resets {local_time(w.resets_at, tz)}" if w.limit is not None else "")
                for w in windows]

    def widest(texts: list[tuple[Any, str, str]], i: int) -> int:
        return max((len(t[i]) for t in texts), default=0)

    texts = rows(True)
    room = PANEL_BAR if inner is None else min(
        PANEL_BAR, inner - span([5, widest(texts, 1), widest(texts, 2)]) - gap)
    bars = room >= len("no limit")
    if not bars:
        texts = rows(False)
    below = inner is not None and span([5, widest(texts, 1), widest(texts, 2)]) > inner
    out = []
    for w, numbers, resets in texts:
        row: list[Any] = [w.window, numbers]
        if bars:
            shown = Text("no limit", style="dim") if w.limit is None else Text(
                bar(w.spent, w.limit, room), style="red" if w.remaining == 0 else "green")
            row.insert(1, shown)
        out.append(row if below else [*row, resets])
        if below and resets:  # under the numbers
            out.append(["", resets])
    return grid(out)


BAR = 30  # the widest bar of a usage chart
BAR_MIN = 8  # narrower than this, a chart shows no bars


def usage_chart(rich: Any, rows: Sequence[Any], label: str, title: str) -> bool:
    """Spend per period as bars, with the numbers beside them, on ``rich``; the bars narrow
    to fit the width and go when there is no room for them. False when the numbers alone do
    not fit (the caller then shows them as a table)."""
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    from smscredits import plain_table

    heads = [label, "Spent", "Messages", "Refunded"]
    texts = [[cell(r.period), cell(r.spent), cell(r.messages), cell(r.refunded)] for r in rows]
    widths = [max(map(cell_len, column)) for column in zip(heads, *texts, strict=True)]
    limit = width_limit(rich)
    room = BAR if limit is None else min(BAR, limit - plain_table.span(widths) - plain_table.GAP)
    if room < BAR_MIN and limit is not None and plain_table.span(widths) > limit:
        return False
    top = max((r.spent for r in rows), default=Decimal(0))
    t = Table(header_style="bold", box=None, pad_edge=False, padding=(0, 2, 0, 0))
    for head, width in zip(heads, widths, strict=True):
        t.add_column(Text(head), justify="left" if head is label else "right", width=width,
                     no_wrap=True)
        if head == "Spent" and room >= BAR_MIN:
            t.add_column("", width=room, no_wrap=True)
    for r, text in zip(rows, texts, strict=True):
        bar_ = [Text(bar(r.spent, top, room).rstrip("░"), style="cyan")] if room >= BAR_MIN \
            else []
        t.add_row(Text(text[0]), text[1], *bar_, text[2], text[3])
    table_width = plain_table.span(widths) + (room + plain_table.GAP if room >= BAR_MIN else 0)
    if cell_len(title) <= table_width:
        t.title = Text(title)
    else:
        rich.print(Text(title), soft_wrap=True)
    rich.print(t)
    return True


def in_zone(value: Any, tz: str) -> dict[str, Any]:
    """A record as a table shows it: its instants (ISO UTC, as JSON has them) as local
    time in ``tz``, with the zone's abbreviation."""
    return {k: local_time(v, tz) if k in TIMES and isinstance(v, str) and v.endswith("Z")
            else v for k, v in plain(value).items()}


def local_time(iso_utc: str, tz: str) -> str:
    """An ISO UTC instant as local time in a zone: ``2026-11-26 00:00 CET``."""
    from smscredits import clock

    return clock.local_text(iso_utc, tz)


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
