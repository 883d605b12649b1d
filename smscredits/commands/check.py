"""`check`: users low on credits or near a limit, for cron and monitoring (exit 1 when any)."""

from __future__ import annotations

from typing import Annotated

import typer

from smscredits.commands.base import amount, command, output, reader
from smscredits.errors import BadInput

Below = Annotated[list[str] | None, typer.Option(
    metavar="N|USER=N", help="Low when available credits are below N (repeatable: USER=N "
    "for one user). Default: no credits left.")]
LimitLeft = Annotated[str | None, typer.Option(
    metavar="PCT", help="Near a limit when less than PCT % of it is left. Default: nothing "
    "left.")]


def _thresholds(below: list[str], limit_left: str | None) -> object:
    from smscredits.check import Thresholds, parse_percent

    everyone: int | None = None
    per_user: dict[str, int] = {}
    for item in below:
        user, sep, value = item.rpartition("=")
        if not sep:
            if everyone is not None:
                raise BadInput(f"--below {item!r}: a threshold for everyone is already given")
            everyone = amount(value, what="--below")
        elif not user:
            raise BadInput(f"bad --below {item!r}: expected N or USER=N")
        else:
            per_user[user] = amount(value, what=f"--below for {user}")
    return Thresholds(everyone, per_user, None if limit_left is None
                      else parse_percent(limit_left))


FINDING_COLUMNS = [("user", "User"), ("check", "Check"), ("value", "Value"),
                   ("threshold", "Threshold"), ("resets_at", "Resets"), ("message", "Message")]


def register(root: typer.Typer) -> None:
    @command(root, "check", example="smscredits check --below 10 --below bigcorp=500 "
             "--limit-left 10")
    def check_(below: Below = None, limit_left: LimitLeft = None) -> None:
        """List users low on credits or close to a spending limit; exit 1 when there are any.

        For cron, Nagios or Icinga: disabled users are skipped, and an unlimited overdraft is
        never low on credits (its limits are still checked)."""
        from smscredits import check

        report = check.check(reader(), _thresholds(below or [], limit_left))  # type: ignore[arg-type]
        out = output()
        if out.mode == "csv":  # a spreadsheet wants the findings, one per row
            out.rows(report.findings, FINDING_COLUMNS)
        elif out.machine:
            out.one({"ok": report.ok, "checked": report.checked, "findings": report.findings})
        elif report.ok:
            out.message(f"ok: {report.checked} account(s) checked, none low on credits or "
                        "near a limit")
        else:
            for finding in report.findings:
                typer.echo(finding.message)
        if not report.ok:
            raise typer.Exit(1)
