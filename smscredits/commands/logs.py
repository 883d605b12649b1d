"""`log` (the credit log) and `events` (the whole journal)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from smscredits.commands.base import command, output, reader
from smscredits.commands.users import OptionalUser
from smscredits.errors import BadInput

EVENT_COLUMNS = [
    ("id", "ID"), ("at", "At (UTC)"), ("user", "User"), ("kind", "Kind"), ("amount", "Amount"),
    ("balance_after", "Balance"), ("ref", "Ref"), ("note", "Note"), ("actor", "Actor"),
    ("detail", "Detail"),
]
# The columns a short width may leave out, with their priority (lowest first). The detail,
# free text that may be long, goes first; the id last: a log without ids still reads well,
# but `--before` pages by them.
EVENT_OPTIONAL = {"detail": 0, "actor": 1, "note": 3, "ref": 4, "id": 5}
# Rows read at a time by a full export (--limit 0): memory stays the same at any length.
CHUNK = 1000

UserOpt = OptionalUser
Since = Annotated[str | None, typer.Option(help="From this time: 2026-11-25, "
                                                 "2026-11-25T10:00Z, or an age like 7d.")]
Until = Annotated[str | None, typer.Option(help="Before this time (same forms).")]
Kind = Annotated[list[str] | None, typer.Option(help="Only this kind (repeatable), "
                                                      "e.g. message.charged; see the README "
                                                      "for every kind.")]
Limit = Annotated[int, typer.Option(help="At most this many rows; 0: all of them, streamed "
                                         "(for exports).", min=0, max=100_000)]
Before = Annotated[int | None, typer.Option(help="Page on: rows older than this event id.")]


def _show(user: str | None, since: str | None, until: str | None, kind: list[str] | None,
          limit: int, before: int | None, credit_only: bool) -> None:
    from smscredits import clock, journal, reads, validate

    if before is not None and not 1 <= before <= 2**62:
        raise BadInput(f"bad --before {before}: not an event id")
    for k in kind or []:
        if k not in journal.KINDS:
            raise BadInput(f"unknown kind {k!r}: one of {', '.join(journal.KINDS)}",
                           code="unknown_kind")
    since_at, until_at = validate.time_range(since, until, now=clock.now())
    lo = None if since_at is None else clock.to_us(since_at)
    hi = None if until_at is None else clock.to_us(until_at)
    source, out = reader(), output()

    def page(older_than: int | None, n: int) -> list[Any]:
        return reads.query_events(source, user, since=lo, until=hi, kinds=kind,
                                  before=older_than, limit=n, credit_only=credit_only)

    title = ("Credit log" if credit_only else "Events") + (f" of {user}" if user else "")
    columns = [c for c in EVENT_COLUMNS if c[0] != "user"] if user else EVENT_COLUMNS
    shown: dict[str, Any] = dict(title=title, empty="no events match", optional=EVENT_OPTIONAL)
    if limit == 0:
        out.stream(_pages(page, before), columns, **shown)
        return
    rows = page(before, limit + 1)  # one more says whether there is a next page
    out.rows(rows[:limit], columns, **shown)
    if len(rows) > limit and not out.quiet:
        out.err.write(f"more: --before {rows[limit - 1].id}\n")


def _pages(page: Callable[[int | None, int], list[Any]], before: int | None) -> Iterator[
        list[Any]]:
    """Every matching event, newest first, read by keyset pages of ``CHUNK`` rows."""
    while True:
        rows = page(before, CHUNK)
        yield rows
        if len(rows) < CHUNK:
            return
        before = rows[-1].id


def register(root: typer.Typer) -> None:
    @command(root, "log", example="smscredits log alice --since 7d --limit 20",
             rich_help_panel="Logs")
    def log(user: UserOpt = None, since: Since = None, until: Until = None, kind: Kind = None,
            limit: Limit = 50, before: Before = None) -> None:
        """The credit log: every change of a balance (and every hold), newest first."""
        _show(user, since, until, kind, limit, before, credit_only=True)

    @command(root, "events", example="smscredits events alice --kind user.disabled --json",
             rich_help_panel="Logs")
    def events(user: UserOpt = None, since: Since = None, until: Until = None, kind: Kind = None,
               limit: Limit = 50, before: Before = None) -> None:
        """The event journal: everything that happened, newest first."""
        _show(user, since, until, kind, limit, before, credit_only=False)
