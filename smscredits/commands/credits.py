"""`credits`: add, subtract, set and show balances."""

from __future__ import annotations

from typing import Annotated

import typer

from smscredits.commands.base import amount, app, command, db, output, reader
from smscredits.commands.users import ACCOUNT_COLUMNS, ACCOUNT_OPTIONAL, OptionalUser, UserArg

credits_app = app("credits", "Add, subtract and set prepaid credits; show balances.",
                  "smscredits credits add alice 100")

Note = Annotated[str | None, typer.Option(help="Why: kept in the journal.")]
SIGNED = {"ignore_unknown_options": True}  # so that `credits add alice -5` reads -5 as a number


def _changed(change: object, verb: str) -> None:
    c = change  # a ledger.Change
    sign = "+" if c.amount >= 0 else ""  # type: ignore[attr-defined]
    output().message(f"{c.user}: {verb} {sign}{c.amount}, balance {c.balance}", c)  # type: ignore[attr-defined]


@command(credits_app, "add", example="smscredits credits add alice 100 --note 'invoice 42'",
         context_settings=SIGNED)
def credits_add(
    user: UserArg,
    value: Annotated[str, typer.Argument(metavar="AMOUNT",
                                         help="Credits to add; negative subtracts.")],
    note: Note = None,
) -> None:
    """Add credits (a negative amount subtracts; refused below the overdraft)."""
    from smscredits import ledger

    _changed(ledger.add_credits(db(), user, amount(value, signed=True), note=note), "added")


@command(credits_app, "set", example="smscredits credits set alice 250", context_settings=SIGNED)
def credits_set(
    user: UserArg,
    value: Annotated[str, typer.Argument(metavar="AMOUNT", help="The new balance.")],
    note: Note = None,
) -> None:
    """Set the balance; the difference is journaled as an adjustment."""
    from smscredits import ledger

    _changed(ledger.set_credits(db(), user, amount(value, signed=True), note=note), "adjusted")


@command(credits_app, "balance", example="smscredits credits balance alice --json")
def credits_balance(
    user: OptionalUser = None,
) -> None:
    """Show balances."""
    from smscredits import reads

    source = reader()
    if user is None:
        output().rows(reads.list_accounts(source), ACCOUNT_COLUMNS, empty="no credits powers yet",
                      optional=ACCOUNT_OPTIONAL)
        return
    account = reads.get_account(source, user)
    out = output()
    if out.machine:
        out.record(account, ACCOUNT_COLUMNS)
        return
    from smscredits.render import balance_panel, width_limit

    windows = reads.show_limits(source, user).windows
    plans = reads.list_plans(source, user)
    rich = out.console()
    # Not cropped: a name wider than the terminal runs on (the terminal wraps it).
    rich.print(balance_panel(account, windows, plans, width_limit(rich)), crop=False)
