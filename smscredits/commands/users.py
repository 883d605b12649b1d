"""`user` and `power`: the accounts and their credits powers."""

from __future__ import annotations

from typing import Annotated

import typer

from smscredits.commands.base import amount, app, command, db, output

users_app = app("user", "Add, list, show, rename, disable, enable and delete users (gateway "
                "accounts).",
                "smscredits user add alice --tz Europe/Budapest")
power_app = app("power", "Give users a credits power (put them under credit control).",
                "smscredits power create alice credits --initial 100")

USER_COLUMNS = [("user", "User"), ("tz", "Time zone"), ("disabled", "Disabled"),
                ("balance", "Balance")]
ACCOUNT_COLUMNS = [("user", "User"), ("kind", "Power"), ("balance", "Balance"),
                   ("held", "Held"), ("overdraft", "Overdraft"), ("available", "Available"),
                   ("disabled", "Disabled")]
# The columns a short width may leave out of a table, with their priority (lowest first).
USER_OPTIONAL = {"tz": 2, "disabled": 1}
ACCOUNT_OPTIONAL = {"kind": 1, "overdraft": 3, "disabled": 2, "held": 4}

# User names are completed by commands.complete (wired by parameter name in base.py).
UserArg = Annotated[str, typer.Argument(help="User name.", show_default=False)]


OptionalUser = Annotated[
    str | None, typer.Argument(help="Only this user (default: all).", show_default=False),
]


@command(users_app, "add", example="smscredits user add alice --tz Europe/Budapest")
def user_add(
    name: Annotated[str, typer.Argument(help="1-64 letters, digits and . _ @ -")],
    tz: Annotated[str | None, typer.Option(help="IANA time zone of the user's limit windows "
                                            "and refill times (default: config default_tz, "
                                            "else UTC).")] = None,
) -> None:
    """Add a user."""
    from smscredits import ledger

    handle = db(create=True)
    user = ledger.add_user(handle, name, tz=handle.default_tz if tz is None else tz)
    output().message(f"{user.user}: user added (time zone {user.tz})", user)


@command(users_app, "list", example="smscredits user list --json")
def user_list() -> None:
    """List users with their balances."""
    from smscredits import ledger

    output().rows(ledger.list_users(db()), USER_COLUMNS, empty="no users yet",
                  optional=USER_OPTIONAL)


@command(users_app, "show", example="smscredits user show alice")
def user_show(name: UserArg) -> None:
    """Show one user."""
    from smscredits import ledger
    from smscredits.render import in_zone

    user, out = ledger.get_user(db(), name), output()
    out.record(user if out.machine else in_zone(user, user.tz),
               [("name", "User"), ("tz", "Time zone"), ("disabled", "Disabled"),
                ("created_at", "Created"), ("balance", "Balance")])


def _set_disabled(name: str, disabled: bool) -> None:
    from smscredits import ledger

    user = ledger.set_disabled(db(), name, disabled)
    state = "disabled (no charges accepted, balance kept)" if disabled else "enabled"
    output().message(f"{user.user}: {state}", user)


@command(users_app, "disable", example="smscredits user disable alice")
def user_disable(name: UserArg) -> None:
    """Disable a user: charges are refused, the balance is kept."""
    _set_disabled(name, True)


@command(users_app, "enable", example="smscredits user enable alice")
def user_enable(name: UserArg) -> None:
    """Enable a disabled user."""
    _set_disabled(name, False)


@command(users_app, "rename", example="smscredits user rename alice alice.smith")
def user_rename(
    old: UserArg,
    new: Annotated[str, typer.Argument(help="The new name: 1-64 letters, digits and . _ @ -",
                                       show_default=False)],
) -> None:
    """Rename a user: power, plans, limits and journal stay the user's."""
    from smscredits import ledger

    user = ledger.rename_user(db(), old, new)
    output().message(f"{user.user}: renamed from {old}", user)


@command(users_app, "delete", example="smscredits user delete alice")
def user_delete(name: UserArg) -> None:
    """Delete a user whose power holds no credits; the journal is kept."""
    from smscredits import ledger

    user = ledger.delete_user(db(), name)
    output().message(f"{user.user}: user deleted (journal kept)", user)


@command(users_app, "set-tz", example="smscredits user set-tz alice America/New_York")
def user_set_tz(
    name: UserArg,
    tz: Annotated[str, typer.Argument(metavar="ZONE", help="IANA time zone.",
                                      show_default=False)],
) -> None:
    """Change a user's time zone: open limit windows are recounted in the new zone."""
    from smscredits import ledger

    user = ledger.set_tz(db(), name, tz)
    output().message(f"{user.user}: time zone {user.tz}", user)


def _overdraft(text: str) -> int | None:
    from smscredits.amounts import parse_optional

    return parse_optional(text, what="overdraft")


@command(power_app, "create",
         example="smscredits power create alice credits --initial 100 --overdraft 0")
def power_create(
    user: UserArg,
    kind: Annotated[str, typer.Argument(help="Power kind: credits.")] = "credits",
    initial: Annotated[str, typer.Option(help="Opening balance.")] = "0",
    overdraft: Annotated[str, typer.Option(help="How far below zero charges may go: N, "
                                                 "or unlimited (postpaid).")] = "0",
) -> None:
    """Give a user a credits power."""
    from smscredits import ledger

    account = ledger.create_power(
        db(), user, kind, initial=amount(initial, what="initial balance", signed=True),
        overdraft=_overdraft(overdraft),
    )
    output().message(
        f"{account.user}: {kind} power created, balance {account.balance}, overdraft "
        f"{account.overdraft if account.overdraft is not None else 'unlimited'}",
        account,
    )


@command(power_app, "list", example="smscredits power list")
def power_list(user: OptionalUser = None) -> None:
    """List credits powers."""
    from smscredits import reads

    output().rows(reads.list_accounts(db(), user), ACCOUNT_COLUMNS, empty="no powers yet",
                  optional=ACCOUNT_OPTIONAL)


@command(power_app, "show", example="smscredits power show alice")
def power_show(user: UserArg) -> None:
    """Show a user's credits power."""
    from smscredits import ledger

    output().record(ledger.get_account(db(), user), [*ACCOUNT_COLUMNS, ("tz", "Time zone")])


@command(power_app, "overdraft", example="smscredits power overdraft alice unlimited")
def power_overdraft(
    user: UserArg,
    overdraft: Annotated[str, typer.Argument(help="N, 0 (prepaid) or unlimited (postpaid).")],
) -> None:
    """Change how far below zero a user's charges may take the balance."""
    from smscredits import ledger

    account = ledger.set_overdraft(db(), user, _overdraft(overdraft))
    shown = account.overdraft if account.overdraft is not None else "unlimited"
    output().message(f"{account.user}: overdraft {shown}", account)


@command(power_app, "delete", example="smscredits power delete alice credits")
def power_delete(
    user: UserArg,
    kind: Annotated[str, typer.Argument(help="Power kind: credits.")] = "credits",
    force: Annotated[bool, typer.Option(help="Delete even with credits left.")] = False,
) -> None:
    """Remove a user's power: the user is no longer metered; the journal stays."""
    from smscredits import ledger

    account = ledger.delete_power(db(), user, kind, force=force)
    output().message(f"{account.user}: {kind} power deleted", account)
