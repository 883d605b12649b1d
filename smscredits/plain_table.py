"""Tables written as Rich draws them, without Rich, in the case where that is simple.

Importing Rich and laying out a table costs a `log` page of 50 rows about as much as all the
rest of the command. When the output is not a terminal (so Rich writes no styles), every
cell is printable ASCII (one column per character) and the table fits the width without
wrapping, Rich's layout reduces to padding each cell to its column's widest; this module
writes exactly that text. Anything else returns None, and the caller draws with Rich. A
test compares the two on generated tables.
"""

from __future__ import annotations

import builtins
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

_STD_FDS = (0, 1, 2)  # Rich asks each of stdin, stdout, stderr for the terminal size


def _plain_width(out: TextIO) -> int | None:
    """The width Rich's Console gives ``out`` when it would write no escape codes; None when
    it would (a terminal, or its environment says so) or when Rich's own rules apply."""
    env = os.environ
    if sys.platform == "win32" or "get_ipython" in vars(builtins):
        return None  # legacy Windows consoles and notebooks have rules of their own
    if env.get("TTY_COMPATIBLE", "") == "1" or env.get("FORCE_COLOR") is not None:
        return None
    if env.get("TTY_COMPATIBLE", "") != "0":
        isatty = getattr(out, "isatty", None)
        try:
            if isatty is None or isatty():
                return None
        except ValueError:
            return None
    if not (getattr(out, "encoding", None) or "utf-8").lower().startswith("utf"):
        return None  # Rich would swap the box lines for ASCII
    columns = env.get("COLUMNS")
    if columns is not None and columns.isdigit():
        return int(columns)
    for fd in _STD_FDS:
        try:
            return os.get_terminal_size(fd).columns or 80
        except (AttributeError, ValueError, OSError):
            continue
    return 80


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
) -> str | None:
    """The text Rich prints for ``render.table(records, columns, title=title)`` on ``out``,
    or None when Rich is needed. ``cell`` gives a cell's text; columns in ``right`` are
    right-justified."""
    width = _plain_width(out)
    if width is None:
        return None
    labels = [label for _, label in columns]
    rows = [[cell(key, r.get(key)) for key, _ in columns] for r in records]
    texts = [*labels, *(title or "",), *(t for row in rows for t in row)]
    # Labels are markup to Rich: keep to those it would print as they are.
    if not all(map(_printable_ascii, texts)) or any("[" in x or ":" in x for x in labels):
        return None
    last = len(columns) - 1
    # Each column: its widest text, plus a right padding of 1 but on the last column.
    widths = [max(len(t) for t in (labels[i], *(row[i] for row in rows))) + (i != last)
              for i in range(len(columns))]
    widths = [w or 1 for w in widths]
    table_width = sum(widths) + len(columns) + 1  # a space at each edge and between columns
    if table_width > width or len(title or "") > table_width:
        return None
    justified = [key in right for key, _ in columns]

    def line(texts_: Sequence[str]) -> str:
        parts = []
        for i, text in enumerate(texts_):
            inner = widths[i] - (i != last)
            text = text.rstrip().rjust(inner) if justified[i] else text.ljust(inner)
            parts.append(text + " " * (i != last))
        return " " + " ".join(parts) + " "

    blank = " " * table_width
    lines = [] if not title else [_centered(title, table_width)]
    lines += [blank, line(labels), " " + "─" * (table_width - 2) + " "]
    lines += [line(row) for row in rows]
    lines.append(blank)
    return "\n".join(lines) + "\n"


def _centered(text: str, width: int) -> str:
    text = text.rstrip()
    left = (width - len(text)) // 2
    return " " * left + text + " " * (width - left - len(text))
