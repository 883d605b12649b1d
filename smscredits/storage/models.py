"""The tables, as SQLModel models.

Amounts are BIGINT thousandths of a credit and instants are BIGINT microseconds since the
epoch (UTC): exact on both engines. Hot paths use ``Model.__table__`` with SQLAlchemy Core;
the ORM is kept for the schema and for Alembic.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Column, Index, Integer, MetaData, String, Text
from sqlalchemy import text as sql_text
from sqlmodel import Field, SQLModel

from smscredits.storage import blocks

# Named constraints: Alembic's SQLite batch mode cannot drop unnamed ones.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata


def _big(**kw: Any) -> Any:
    # Any, as Field's own return: the value stands for the annotated type of the attribute.
    return Field(sa_column=Column(BigInteger, **kw))


# SQLite reuses the highest rowid once its row is deleted; AUTOINCREMENT never does, so a
# new power can never inherit a deleted one's id (and with it the old one's journal chain).
_NEVER_REUSED = {"sqlite_autoincrement": True}


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (_NEVER_REUSED,)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    tz: str | None = Field(default=None, max_length=64)
    disabled: bool = False
    created_at: int = _big(nullable=False)


class Power(SQLModel, table=True):
    """A capability of a user; kind ``credits`` holds the balance and the limit windows.

    The current day/week/month windows are counters on this row: the charge path checks and
    moves them with the row held, so a limit check never sums history.
    """

    __tablename__ = "powers"
    __table_args__ = (
        # What a charge or a hold can take: balance - held + overdraft (a hold reserves).
        CheckConstraint("overdraft IS NULL OR balance - held >= -overdraft",
                        name="within_overdraft"),
        CheckConstraint("held >= 0", name="held_not_negative"),
        Index("uq_powers_user_kind", "user_id", "kind", unique=True),
        _NEVER_REUSED,
    )
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", nullable=False)
    kind: str = Field(default="credits", max_length=16)
    balance: int = _big(nullable=False, default=0)
    # The sum of the account's open holds: reserved, not yet taken from the balance.
    held: int = _big(nullable=False, default=0, server_default="0")
    overdraft: int | None = _big(nullable=True, default=0)  # NULL: unlimited (postpaid)
    daily_limit: int | None = _big(nullable=True)
    weekly_limit: int | None = _big(nullable=True)
    monthly_limit: int | None = _big(nullable=True)
    day_key: int = _big(nullable=False, default=0)
    day_spent: int = _big(nullable=False, default=0)
    week_key: int = _big(nullable=False, default=0)
    week_spent: int = _big(nullable=False, default=0)
    month_key: int = _big(nullable=False, default=0)
    month_spent: int = _big(nullable=False, default=0)
    # The highest threshold of the user's armed "when below" refill plans (NULL: none), so
    # the charge's UPDATE tells at once whether a plan may fire.
    refill_below: int | None = _big(nullable=True)
    last_hash: str | None = Field(default=None, max_length=64)
    # The instant of the account's latest event: no later event may carry an earlier one,
    # so a window key never moves backwards (see ``charging``'s module docstring).
    last_at: int = _big(nullable=False, default=0, server_default="0")
    created_at: int = _big(nullable=False)


class Event(SQLModel, table=True):
    """One append-only journal row. ``amount`` is set for credit-log rows (balance changes)."""

    __tablename__ = "events"
    __table_args__ = (
        # A user's events, led by the block of the id (storage.blocks explains why).
        Index("ix_events_block_user_id", sql_text(blocks.INDEX_EXPR), "user_id", "id"),
        Index("ix_events_at", "at"),
    )
    # SQLite only auto-increments an INTEGER PRIMARY KEY; Postgres gets a BIGSERIAL.
    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    at: int = _big(nullable=False)
    user_id: int | None = Field(default=None)
    # No FK: a deleted power keeps its journal. No index of its own either: a power belongs
    # to one user, so the user's index serves; every index costs each charge a page write.
    power_id: int | None = Field(default=None)
    kind: str = Field(max_length=32)
    amount: int | None = _big(nullable=True)
    balance_after: int | None = _big(nullable=True)
    ref: str | None = Field(default=None, max_length=128)
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    actor: str | None = Field(default=None, max_length=128)
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON
    hash: str | None = Field(default=None, max_length=64)


class Message(SQLModel, table=True):
    """The outcome of one charge, keyed by message id: makes retries idempotent."""

    __tablename__ = "messages"
    # No index but the id and the open holds': every charge writes a row, and an index led
    # by the user would take a random page write per charge. `usage` finds a user's messages
    # by their events. The holds' index holds the held rows only (partial): a charge's row
    # is not in it, and `holds expire` finds the due ones without a scan.
    __table_args__ = (
        Index("ix_messages_held_expires_at", "expires_at",
              sqlite_where=sql_text("status = 'held'"),
              postgresql_where=sql_text("status = 'held'")),
    )
    id: str = Field(primary_key=True, max_length=128)
    user_name: str = Field(max_length=64)  # as requested: an unknown user has no user_id
    user_id: int | None = Field(default=None)
    power_id: int | None = Field(default=None)
    at: int = _big(nullable=False)
    to_number: str = Field(max_length=32)
    country: str | None = Field(default=None, max_length=8)
    rule: str | None = Field(default=None, max_length=16)
    encoding: str | None = Field(default=None, max_length=8)
    parts: int = 1
    price: int | None = _big(nullable=True)
    cost: int | None = _big(nullable=True)
    # charged | rejected | refunded; held, then settled or voided (by a report, a command
    # or expiry). While held, ``cost`` is the amount held; once settled, the amount taken.
    status: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=32)
    balance_after: int | None = _big(nullable=True)
    day_key: int | None = _big(nullable=True)
    week_key: int | None = _big(nullable=True)
    month_key: int | None = _big(nullable=True)
    expires_at: int | None = _big(nullable=True)  # a hold's expiry


class Price(SQLModel, table=True):
    """Credits per message part: ``default``, a country (``HU``) or a prefix (``+3630``)."""

    __tablename__ = "prices"
    key: str = Field(primary_key=True, max_length=16)
    price: int = _big(nullable=False)
    updated_at: int = _big(nullable=False)


class RefillPlan(SQLModel, table=True):
    __tablename__ = "refill_plans"
    __table_args__ = (_NEVER_REUSED,)
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", nullable=False)
    every: str | None = Field(default=None, max_length=8)  # day|week|month; NULL: threshold
    on_day: int | None = None
    at_minute: int = 0
    below: int | None = _big(nullable=True)
    add_amount: int | None = _big(nullable=True)
    top_up_to: int | None = _big(nullable=True)
    status: str = Field(default="active", max_length=16)  # active | paused | cancelled
    armed: bool = True
    start_after: int = _big(nullable=False)  # periods due after this instant only
    last_period: int | None = _big(nullable=True)
    last_applied_at: int | None = _big(nullable=True)
    created_at: int = _big(nullable=False)


class RefillApplication(SQLModel, table=True):
    """The key that makes a refill exactly-once: one row per (plan, period), ever."""

    __tablename__ = "refill_applications"
    plan_id: int = Field(primary_key=True, foreign_key="refill_plans.id")
    period: int = Field(sa_column=Column(BigInteger, primary_key=True))
    at: int = _big(nullable=False)
    amount: int = _big(nullable=False)
