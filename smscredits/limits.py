"""Daily, weekly and monthly spending limits.

Spending is kept as counters of the current day, ISO week and calendar month (in the user's
time zone) on the power row, moved by the charge batch that holds the row (``charging``); a
check never sums the history. A counter whose key is not the current window's reads as 0 spent.
"""

from __future__ import annotations

from sqlalchemy import update

from smscredits import clock, journal
from smscredits.amounts import MAX_MILLIS, format_amount
from smscredits.errors import BadInput
from smscredits.ledger import power_of, user_row
from smscredits.reads import LIMIT_COLUMN, Limits, no_power, show_limits
from smscredits.storage.engine import Db
from smscredits.storage.tables import powers

REASON = {"day": "daily_limit", "week": "weekly_limit", "month": "monthly_limit"}


def set_limits(db: Db, user: str, changes: dict[str, int | None]) -> Limits:
    """Set (millis) or clear (None) limits; windows not in ``changes`` are left alone."""
    if not changes:
        raise BadInput("nothing to set: give --daily, --weekly and/or --monthly")
    for window, value in changes.items():
        if value is not None and not 0 <= value <= MAX_MILLIS:
            raise BadInput(f"bad {window} limit {format_amount(value)}: expected 0 to "
                           f"{format_amount(MAX_MILLIS)} or none", code="amount_out_of_range")
    with db.write() as conn:
        urow = user_row(conn, user)
        before = power_of(conn, urow["id"])  # held: the old values journaled are replaced
        values = {LIMIT_COLUMN[w]: v for w, v in changes.items()}
        row = conn.execute(
            update(powers).where(powers.c.user_id == urow["id"], powers.c.kind == "credits")
            .values(**values).returning(powers.c.id, powers.c.last_hash)
        ).first()
        if row is None:
            raise no_power(user)
        journal.record(
            conn, at=clock.now_us(), kind="limits.set", actor=db.actor, user_id=urow["id"],
            power_id=row.id, detail=journal.change(
                {w: format_amount(v) for w, v in changes.items()},
                {w: format_amount(before[LIMIT_COLUMN[w]]) for w in changes} if before else {}),
        )
    return show_limits(db, user)


_ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly"}


def unreachable(lim: Limits) -> list[dict[str, object]]:
    """Warnings for a limit above the limit of a larger window (daily 50, weekly 30): it is
    accepted, since either may change next, but the larger window's limit binds first."""
    found: list[dict[str, object]] = []
    windows = [w for w in lim.windows if w.limit is not None]
    for i, small in enumerate(windows):
        large = next((w for w in windows[i + 1:] if w.limit is not None), None)
        if large is not None and small.limit is not None and large.limit is not None \
                and small.limit > large.limit:
            found.append({
                "code": "unreachable_limit",
                "message": f"{lim.user}: {_ADJECTIVE[small.window]} limit {small.limit} is "
                           f"above the {_ADJECTIVE[large.window]} limit {large.limit}; the "
                           f"{_ADJECTIVE[large.window]} limit is reached first",
                "window": small.window, "limit": small.limit,
                "reached_first": large.window, "reached_first_limit": large.limit,
            })
    return found
