"""`log` (the credit log) and `events` (the whole journal)."""

from __future__ import annotations

from typing import Annotated

import typer

from smscredits.commands.base import command, output, reader
from smscredits.commands.users import OptionalUser
from smscredits.errors import BadInput

EVENT_COLUMNS = [
    ("id", "ID"), ("at", "At (UTC)"), ("user", "User"), ("kind", "Kind"), ("amount", "Amount"),
    ("balance_after", "Balance"), ("ref", "Ref"), ("note", "Note"), ("actor", "Actor"),
]
# The columns a short width may leave out, with their priority (lowest first).
# The id goes last: a log without ids still reads well, but `--before` pages by them.
EVENT_OPTIONAL = {"actor": 1, "note": 2, "ref": 3, "id": 4}

UserOpt = OptionalUser
Since = Annotated[str | None, typer.Option(help="From this time: 2026-11-25, "
                                                 "2026-11-25T10:00Z, or an age like 7d.")]
Until = Annotated[str | None, typer.Option(help="Before this time (same forms).")]
Kind = Annotated[list[str] | None, typer.Option(help="Only this kind (repeatable), "
                                                      "e.g. message.charged.")]
Limit = Annotated[int, typer.Option(help="At most this many rows.", min=1, max=100_000)]
Before = Annotated[int | None, typer.Option(help="Page on: rows older than this event id.")]


def _show(user: str | None, since: str | None, until: str | None, kind: list[str] | None,
          limit: int, before: int | None, credit_only: bool) -> None:
    from smscredits import clock, reads, validate

    if before is not None and not 1 <= before <= 2**62:
        raise BadInput(f"bad --before {before}: not an event id")
    lo, hi = validate.time_range(since, until, now=clock.now())
    rows = reads.query_events(reader(), user, since=None if lo is None else clock.to_us(lo),
                              until=None if hi is None else clock.to_us(hi), kinds=kind,
                              before=before,
                              limit=limit, credit_only=credit_only)
    title = "Credit log" if credit_only else "Events"
    columns = [c for c in EVENT_COLUMNS if c[0] != "user"] if user else EVENT_COLUMNS
    output().rows(rows, columns, title=title + (f" of {user}" if user else ""),
                  empty="no events match", optional=EVENT_OPTIONAL)


def register(root: typer.Typer) -> None:
    @command(root, "log", example="smscredits log alice --since 7d --limit 20",
             rich_help_panel="Logs")
    def log(user: UserOpt = None, since: Since = None, until: Until = None, kind: Kind = None,
            limit: Limit = 50, before: Before = None) -> None:
        """The credit log: every change of a balance, newest first."""
        _show(user, since, until, kind, limit, before, credit_only=True)

    @command(root, "events", example="smscredits events alice --kind user.disabled --json",
             rich_help_panel="Logs")
    def events(user: UserOpt = None, since: Since = None, until: Until = None, kind: Kind = None,
               limit: Limit = 50, before: Before = None) -> None:
        """The event journal: everything that happened, newest first."""
        _show(user, since, until, kind, limit, before, credit_only=False)
