"""Threshold refills' arming: which plans may fire inside a charge, kept on the power row.

A threshold plan (``refill schedule --when-below N``) fires once when a charge takes the
balance below N, and is armed again when the balance comes back to N or above (a top-up, a
refund, a refill). ``powers.refill_below`` holds the highest threshold of the user's armed
plans, so that the charge path learns from the row it already holds whether a plan may fire.
Every writer that raises a balance (ledger, refills, refunds) calls down into this module;
it calls nobody back.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select, update

from smscredits.reads import ACTIVE
from smscredits.storage.tables import powers, refill_plans


def sync_threshold(conn: Connection, user_id: int) -> None:
    """Keep ``powers.refill_below`` = the highest threshold of the user's armed plans."""
    highest = (
        select(func.max(refill_plans.c.below))
        .where(refill_plans.c.user_id == user_id, refill_plans.c.below.is_not(None),
               refill_plans.c.status == ACTIVE, refill_plans.c.armed)
        .scalar_subquery()
    )
    conn.execute(update(powers).where(powers.c.user_id == user_id).values(refill_below=highest))


def rearm(conn: Connection, user_id: int, balance: int) -> None:
    """After a balance rose: threshold plans whose threshold it reached fire again later."""
    done = conn.execute(
        update(refill_plans)
        .where(refill_plans.c.user_id == user_id, refill_plans.c.below.is_not(None),
               refill_plans.c.below <= balance, refill_plans.c.armed.is_(False))
        .values(armed=True)
    ).rowcount
    if done:
        sync_threshold(conn, user_id)
