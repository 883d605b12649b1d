"""How a table is laid out, and the table written without Rich where that is simple.

The layout rule (the README's "Output for scripts"): a table never cuts or wraps an id, a
number, a time, a name or a reference: such a column is as wide as its widest cell. Free text
(notes, rules) wraps, and is cut with "…" after a few lines. When even that does not fit the
width, the table's optional columns are left out, lowest priority first, and a footer line
names them; when the other columns alone do not fit, each record is written as a block of
"Label  value" lines, which nothing cuts. Without a terminal the width is COLUMNS when it is
set, else unlimited: a pipe gets every column at full width.

Importing Rich and laying out a table costs a `log` page of 50 rows about as much as all the
rest of the command. When the output is not a terminal (so Rich writes no styles) and every
cell is printable ASCII (one column per character), Rich's drawing of a laid-out table
reduces to padding each cell line to its column's width; this module writes exactly that
text. Anything else returns None, and the caller draws the same layout with Rich. A test
compares the two on generated tables.
"""

from __future__ import annotations

import builtins
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

# A table's optional columns have a priority: when the width is short they are left out, the
# lowest priority first. The others are always shown.
ESSENTIAL = 1_000
FREE_MIN = 16  # free text is not narrowed below this (or its label, or its widest cell)
FREE_LINES = 3  # ... and shows at most this many lines, the last one cut with "…"
_DATUM = re.compile(r"[0-9=]")
GAP = 2  # between two columns: a padding space and a separator
HIDDEN_NOTE = "widen the terminal or use --json"


def span(widths: Iterable[int]) -> int:
    """The width of a table of columns this wide."""
    widths = list(widths)
    return sum(widths) + GAP * (len(widths) - 1)


@dataclass(frozen=True, slots=True)
class Layout:
    """A table as it will be drawn: the columns shown, their widths, each cell's lines."""

    labels: list[str]
    right: list[bool]  # right-justified (numbers)
    widths: list[int]  # text width of each column, without padding
    rows: list[list[list[str]]]  # row -> column -> lines
    title: str | None
    title_inside: bool  # centred over the table; else a line of its own above it
    hidden: list[str]  # labels of the columns left out
    limit: int | None  # the width laid out for; None: unlimited
    blocks: list[list[tuple[str, str]]] | None  # one record per block: nothing else fits

    @property
    def width(self) -> int:
        return span(self.widths)

    def footer(self) -> str | None:
        if not self.hidden:
            return None
        return f"(hidden at {self.limit} columns: {', '.join(self.hidden)} — {HIDDEN_NOTE})"


def layout(
    records: Iterable[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    title: str | None,
    limit: int | None,
    cell: Callable[[str, Any], str],
    right: set[str],
    free: set[str],
    optional: Mapping[str, int] | None = None,
    measure: Callable[[str], int] = len,
) -> Layout:
    """Lay out ``records`` under ``columns`` (key, label) in ``limit`` columns (None: no
    limit).

    ``cell`` gives a cell's text, ``measure`` its width on screen; keys in ``right`` are
    right-justified, keys in ``free`` hold free text that may wrap; ``optional`` gives the
    keys of the columns that may be left out, with their priority."""
    records = list(records)
    texts = [[cell(c[0], r.get(c[0])) for r in records] for c in columns]
    return layout_texts(texts, columns, title=title, limit=limit, right=right, free=free,
                        optional=optional, measure=measure)


def layout_texts(
    texts: list[list[str]],
    columns: Sequence[tuple[str, str]],
    *,
    title: str | None,
    limit: int | None,
    right: set[str],
    free: set[str],
    optional: Mapping[str, int] | None,
    measure: Callable[[str], int],
) -> Layout:
    """``layout`` of the cells' texts, column by column."""
    labels = [str(c[1]) for c in columns]
    count = len(texts[0]) if texts else 0
    # A column empty in every row hides nothing: when the width is short it goes first.
    empty = [count > 0 and not any(texts[i]) for i in range(len(columns))]
    rank = [-1 if empty[i] else (optional or {}).get(c[0], ESSENTIAL)
            for i, c in enumerate(columns)]
    natural = [max([measure(labels[i]), *map(measure, texts[i])]) or 1
               for i in range(len(columns))]
    is_free = [c[0] in free for c in columns]
    least = [max(measure(labels[i]), min(natural[i], FREE_MIN), _widest_datum(texts[i], measure))
             if is_free[i] else natural[i] for i in range(len(columns))]
    shown = list(range(len(columns)))
    if limit is not None:
        while span(least[i] for i in shown) > limit:
            droppable = [i for i in shown if rank[i] < ESSENTIAL]
            if not droppable:
                blocks = [[(labels[i], texts[i][r]) for i in range(len(columns))]
                          for r in range(count)]
                return Layout(labels, [], [], [], title, False, [], limit, blocks)
            # The lowest priority goes first; of equals, the one furthest right.
            shown.remove(min(droppable, key=lambda i: (rank[i], -i)))
        # A column left out early may fit again beside the narrower set (the actor beside a
        # log whose detail went): the most important first.
        for i in sorted(set(range(len(columns))) - set(shown), key=lambda i: (-rank[i], i)):
            if not empty[i] and span(least[j] for j in [*shown, i]) <= limit:
                shown = sorted([*shown, i])
    widths = {i: natural[i] for i in shown}
    if limit is not None and span(natural[i] for i in shown) > limit:
        spare = limit - span(least[i] for i in shown)
        for i in shown:
            if is_free[i]:
                widths[i] = least[i] + min(spare, natural[i] - least[i])
                spare -= widths[i] - least[i]
    rows = [[wrap(texts[i][r], widths[i], measure) if is_free[i] else [texts[i][r]]
             for i in shown] for r in range(count)]
    table_width = span(widths[i] for i in shown)
    inside = title is not None and measure(title) <= table_width
    return Layout([labels[i] for i in shown], [columns[i][0] in right for i in shown],
                  [widths[i] for i in shown], rows, title, inside,
                  [labels[i] for i in range(len(columns)) if i not in shown and not empty[i]],
                  limit, None)


def _widest_datum(texts: Sequence[str], measure: Callable[[str], int]) -> int:
    """The widest word of a column of free text that is data rather than prose: one with a
    digit (an amount, a date, an invoice number) or a ``key=value`` of an event's detail
    (``status=active->paused``). Free text wraps between words, and such a word is never
    split: the column is at least that wide."""
    return max((measure(w) for t in texts for w in t.split(" ") if _DATUM.search(w)),
               default=0)


def wrap(text: str, width: int, measure: Callable[[str], int] = len,
         lines: int = FREE_LINES) -> list[str]:
    """Free text in lines of at most ``width``: broken at spaces (inside a word only when the
    word alone is wider), at most ``lines`` of them, the last cut with "…" if text is left."""
    if measure(text) <= width:
        return [text]
    out: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if measure(candidate) <= width:
            line = candidate
            continue
        if line:
            out.append(line)
        while measure(word) > width:  # a word wider than the column: split it
            cut = _fit(word, width, measure)
            out.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        out.append(line)
    if len(out) > lines:
        last = out[lines - 1]
        if measure(last) >= width:  # no room for the "…": the last word goes, or its end
            head = last[: _fit(last, width - 1, measure)]
            last = head.rsplit(" ", 1)[0] if " " in head.strip() else head
        out = [*out[: lines - 1], last.rstrip() + "…"]
    return out


def _fit(text: str, width: int, measure: Callable[[str], int]) -> int:
    """How many leading characters of ``text`` fit ``width`` (at least one)."""
    n = len(text)
    while n > 1 and measure(text[:n]) > width:
        n -= 1
    return n


# -- where the output goes ---------------------------------------------------------------


def plain_stream(out: TextIO) -> bool:
    """Whether Rich would write ``out`` without escape codes and box lines of its own: not a
    terminal (nor told to act as one), a UTF-8 stream, an ordinary platform."""
    env = os.environ
    if sys.platform == "win32" or "get_ipython" in vars(builtins):
        return False  # legacy Windows consoles and notebooks have rules of their own
    if env.get("TTY_COMPATIBLE", "") == "1" or env.get("FORCE_COLOR") is not None:
        return False
    if env.get("TTY_COMPATIBLE", "") != "0":
        isatty = getattr(out, "isatty", None)
        try:
            if isatty is None or isatty():
                return False
        except ValueError:
            return False
    # Rich would swap the box lines for ASCII on another encoding.
    return (getattr(out, "encoding", None) or "utf-8").lower().startswith("utf")


def pipe_width() -> int | None:
    """The width for output that is not a terminal: COLUMNS when it is set, else None (no
    limit: a pipe or a file gets whole tables, however wide)."""
    columns = os.environ.get("COLUMNS")
    return int(columns) if columns is not None and columns.isdigit() and columns != "0" \
        else None


# -- the plain writer ---------------------------------------------------------------------


def _printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


def render(
    records: Iterable[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    title: str | None,
    out: TextIO,
    cell: Callable[[str, Any], str],
    right: set[str],
    free: set[str],
    optional: Mapping[str, int] | None = None,
) -> str | None:
    """The text Rich prints for this table on ``out`` (``render.draw``), or None when Rich
    is needed: a terminal, or text that is not printable ASCII."""
    if not plain_stream(out):
        return None
    records = list(records)
    texts = [[cell(c[0], r.get(c[0])) for r in records] for c in columns]
    if not all(_printable_ascii(t) for column in texts for t in column) or not all(
            _printable_ascii(t) for t in [title or "", *(c[1] for c in columns)]):
        return None
    return write(layout_texts(texts, columns, title=title, limit=pipe_width(), right=right,
                              free=free, optional=optional, measure=len))


def write(lay: Layout) -> str:
    """A layout as text, as Rich draws it (without styles)."""
    if lay.blocks is not None:
        return write_blocks(lay.title, lay.blocks)
    width = lay.width

    def line(cells: Sequence[str]) -> str:
        return "  ".join(text.rstrip().rjust(lay.widths[i]) if lay.right[i]
                         else text.ljust(lay.widths[i]) for i, text in enumerate(cells))

    lines = []
    if lay.title is not None:
        lines.append(_centered(lay.title, width) if lay.title_inside else lay.title)
    lines += [line(lay.labels), "─" * width]
    for row in lay.rows:
        height = max(len(c) for c in row)
        for k in range(height):
            lines.append(line([c[k] if k < len(c) else "" for c in row]))
    footer = lay.footer()
    if footer:
        lines += wrap(footer, lay.limit or len(footer), lines=len(footer))
    return "\n".join(lines) + "\n"


def write_blocks(title: str | None, blocks: Sequence[Sequence[tuple[str, str]]]) -> str:
    """Records as blocks of "Label  value" lines, a blank line between blocks."""
    pad = max((len(label) for block in blocks for label, _ in block), default=0) + 2
    lines = [] if title is None else [title, ""]
    for n, block in enumerate(blocks):
        if n:
            lines.append("")
        lines += [(label.ljust(pad) + value).rstrip() for label, value in block]
    return "\n".join(lines) + "\n"


def _centered(text: str, width: int) -> str:
    text = text.rstrip()
    left = (width - len(text)) // 2
    return " " * left + text + " " * (width - left - len(text))
