"""`refill`: automatic refill plans and the cron entry point."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from smscredits.commands.base import amount, app, command, db, output
from smscredits.commands.users import OptionalUser, UserArg
from smscredits.errors import Exit

refill_app = app("refill", "Automatic refill plans, applied exactly once by `refill run`.",
                 "smscredits refill schedule alice --every month --on 1 --add 100")

PLAN_COLUMNS = [("id", "Plan"), ("user", "User"), ("action", "Action"), ("rule", "Rule"),
                ("status", "Status"), ("next_due_at", "Next due"),
                ("last_applied_at", "Last applied")]
# The columns a short width may leave out, with their priority (lowest first).
PLAN_OPTIONAL = {"last_applied_at": 1, "rule": 2, "status": 3, "next_due_at": 4}
PlanArg = Annotated[int, typer.Argument(metavar="PLAN", help="Plan number (refill list).")]


def _opt_amount(text: str | None, what: str) -> int | None:
    return None if text is None else amount(text, what=what)


@command(refill_app, "schedule",
         example="smscredits refill schedule alice --every month --on 1 --add 100")
def refill_schedule(
    user: UserArg,
    every: Annotated[str | None, typer.Option(help="day, week or month.")] = None,
    on: Annotated[str | None, typer.Option(help="Weekly: mon..sun; monthly: 1-31 or last "
                                           "(31 means the last day in shorter months).")] = None,
    at: Annotated[str | None, typer.Option(help="HH:MM in the user's time zone (default "
                                           "00:00).")] = None,
    when_below: Annotated[str | None, typer.Option(help="Instead of --every: refill when a "
                                                   "charge takes the balance below this.")] = None,
    add: Annotated[str | None, typer.Option(help="Credits to add each time.")] = None,
    top_up_to: Annotated[str | None, typer.Option(help="Bring the balance up to this "
                                                  "(nothing when above).")] = None,
) -> None:
    """Schedule a refill plan: periodic (--every) or threshold (--when-below)."""
    from smscredits import refills

    plan = refills.schedule_plan(
        db(), user, every=every, on=on, at=at,
        below=_opt_amount(when_below, "--when-below"),
        add=_opt_amount(add, "--add"), top_up_to=_opt_amount(top_up_to, "--top-up-to"),
    )
    from smscredits.render import local_time

    due = f"\n  next due {local_time(plan.next_due_at, plan.tz)}" if plan.next_due_at else ""
    output().message(
        f"{plan.user}: plan {plan.id} scheduled, {plan.action}\n  {plan.rule}{due}", plan)


@command(refill_app, "list", example="smscredits refill list alice")
def refill_list(
    user: OptionalUser = None,
    all_: Annotated[bool, typer.Option("--all", help="Include cancelled plans.")] = False,
) -> None:
    """List refill plans with their rule, next due time and last application."""
    from smscredits import reads
    from smscredits.render import in_zone

    columns = [c for c in PLAN_COLUMNS if c[0] != "user"] if user else PLAN_COLUMNS
    plans, out = reads.list_plans(db(), user, all_=all_), output()
    rows = plans if out.machine else [in_zone(p, p.tz) for p in plans]  # times in its zone
    out.rows(rows, columns, title="Refill plans" + (f" of {user}" if user else ""),
             empty="no refill plans", optional=PLAN_OPTIONAL)


def _set(plan_id: int, status: str, verb: str) -> None:
    from smscredits import refills

    plan = refills.set_status(db(), plan_id, status)
    output().message(f"{plan.user}: plan {plan.id} {verb}", plan)


@command(refill_app, "cancel", example="smscredits refill cancel 3")
def refill_cancel(plan_id: PlanArg) -> None:
    """Cancel a plan for good."""
    _set(plan_id, "cancelled", "cancelled")


@command(refill_app, "pause", example="smscredits refill pause 3")
def refill_pause(plan_id: PlanArg) -> None:
    """Pause a plan; periods due while paused are skipped, not caught up."""
    _set(plan_id, "paused", "paused")


@command(refill_app, "resume", example="smscredits refill resume 3")
def refill_resume(plan_id: PlanArg) -> None:
    """Resume a paused plan."""
    _set(plan_id, "active", "resumed")


@command(refill_app, "run", example="smscredits refill run --quiet   # from cron, every 5 minutes")
def refill_run(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what is due; change "
                                          "nothing.")] = False,
) -> None:
    """Apply every due refill exactly once (the cron entry point); missed periods catch up.

    A refill that would take a balance past the maximum is skipped (one line on stderr each,
    even with --quiet) and the run exits 1."""
    from smscredits import refills

    done = refills.run(db(), dry_run=dry_run)
    out = output()
    shown = done if out.machine else [a for a in done if a.skipped is None]
    if out.machine:
        out.rows(done, [])
    elif not done:
        out.message("nothing due")
    elif shown:
        title = "Refills due (dry run: nothing applied)" if dry_run else "Refills applied"
        out.rows(shown, [("plan_id", "Plan"), ("user", "User"), ("period", "Period"),
                         ("amount", "Added"), ("balance", "Balance")], title=title)
    _report_skipped([a for a in done if a.skipped is not None], dry_run)


def _report_skipped(skipped: list[Any], dry_run: bool) -> None:
    """A skipped refill needs a person: one error line each (whatever --quiet says, so that
    cron mails it) and exit 1."""
    from smscredits.amounts import MAX_MILLIS, format_amount, to_decimal

    if not skipped:
        return
    out, bound = output(), format_amount(MAX_MILLIS)
    for a in skipped:
        why = (f"the refill {a.amount} is out of range (at most {bound})"
               if a.amount > to_decimal(MAX_MILLIS)
               else f"adding {a.amount} to the balance {a.balance} would exceed {bound}")
        out.error(a.skipped, f"refill plan {a.plan_id} of {a.user!r} "
                  f"{'would be skipped' if dry_run else 'skipped'} for {a.period}: {why} "
                  f"({a.skipped})")
    raise typer.Exit(int(Exit.FAILURE))
