"""Shell completion of values: zones, event kinds, schedule words, and names read from the
database (users, price keys, plan ids, message ids).

Imported only while a shell asks for completions (base.py wires each parameter by name), and
cheap then: the database is read through the stdlib ``sqlite3`` when it is a SQLite file.
A completion never fails: anything that goes wrong completes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BY = ("day", "week", "month", "country", "user")
MESSAGES_OFFERED = 5000  # the newest charged messages: what a refund is usually about


def _starting(values: Iterable[str], incomplete: str) -> list[str]:
    return [v for v in values if v.startswith(incomplete)]


def zones(ctx: Any, incomplete: str) -> list[str]:
    from smscredits.validate import iana_zones

    return sorted(z for z in iana_zones() if z.lower().startswith(incomplete.lower()))


def kinds(ctx: Any, incomplete: str) -> list[str]:
    from smscredits.journal import KINDS

    return _starting(KINDS, incomplete)


def every(ctx: Any, incomplete: str) -> list[str]:
    from smscredits.schedule import KINDS

    return _starting(KINDS, incomplete)


def on(ctx: Any, incomplete: str) -> list[str]:
    """Weekdays for a weekly plan, days of the month for a monthly one (both when unknown)."""
    chosen = ctx.params.get("every")
    days = [str(d) for d in range(1, 32)] + ["last"]
    values = WEEKDAYS if chosen == "week" else days if chosen == "month" else (*WEEKDAYS, *days)
    return _starting(values, incomplete)


def by(ctx: Any, incomplete: str) -> list[str]:
    return _starting(BY, incomplete)


def _column(ctx: Any, sql: str) -> list[str]:
    """The first column of a query on the database the command line names."""
    flag = ctx.find_root().params.get("db")
    try:
        from smscredits.storage.lite import open_lite

        lite = open_lite(flag)
        if lite is not None:
            try:
                with lite.read() as conn:
                    return [str(r[0]) for r in conn.execute(sql)]
            finally:
                lite.close()
        from sqlalchemy import text

        from smscredits.storage.engine import open_db

        handle = open_db(flag, actor="-", create=False)
        try:
            with handle.read() as conn:
                return [str(r[0]) for r in conn.execute(text(sql))]
        finally:
            handle.dispose()
    except Exception:  # a shell completing must never see a traceback
        return []


def users(ctx: Any, incomplete: str) -> list[str]:
    return _starting(_column(ctx, "SELECT name FROM users ORDER BY name"), incomplete)


def price_keys(ctx: Any, incomplete: str) -> list[str]:
    keys = _column(ctx, "SELECT key FROM prices ORDER BY key")
    return _starting(dict.fromkeys(["default", *keys]), incomplete)


def plan_ids(ctx: Any, incomplete: str) -> list[str]:
    return _starting(_column(ctx, "SELECT id FROM refill_plans WHERE status <> 'cancelled' "
                                  "ORDER BY id"), incomplete)


def message_ids(ctx: Any, incomplete: str) -> list[str]:
    return _starting(_column(ctx, "SELECT id FROM messages WHERE status = 'charged' "
                                  f"ORDER BY at DESC LIMIT {MESSAGES_OFFERED}"), incomplete)


def commands(ctx: Any, incomplete: str) -> list[str]:
    """`help`'s names: a top-level command, then one of its sub-commands."""
    given = list(ctx.params.get("names") or [])
    root = ctx.find_root()
    if not given:  # the root lists its commands without loading them
        return _starting(root.command.list_commands(root), incomplete)
    group = root.command.get_command(root, given[0]) if len(given) == 1 else None
    return _starting(getattr(group, "commands", {}), incomplete)


# (command name, parameter name) -> completer; "*" is any command.
COMPLETERS: dict[tuple[str, str], Callable[[Any, str], list[str]]] = {
    ("*", "tz"): zones, ("log", "kind"): kinds, ("events", "kind"): kinds,
    ("*", "every"): every, ("*", "on"): on,
    ("*", "by"): by, ("*", "user"): users, ("show", "name"): users,
    ("disable", "name"): users, ("enable", "name"): users, ("delete", "name"): users,
    ("set-tz", "name"): users, ("rename", "old"): users, ("set", "destination"): price_keys,
    ("delete", "destination"): price_keys, ("*", "plan_id"): plan_ids,
    ("refund", "msg_id"): message_ids, ("help", "names"): commands,
}


def completer(command: str, param: str) -> Callable[[Any, Any, str], list[str]] | None:
    """The completion of a command's parameter, as Click calls it (ctx, param, incomplete)."""
    found = COMPLETERS.get((command, param)) or COMPLETERS.get(("*", param))
    if found is None:
        return None
    return lambda ctx, _param, incomplete: found(ctx, incomplete)
