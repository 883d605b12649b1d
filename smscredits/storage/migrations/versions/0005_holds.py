"""holds: powers.held, messages.expires_at, and the overdraft check counting what is held

A hold reserves credits until a delivery report settles or voids it, or it expires. The
power row keeps the sum of its open holds (``held``); the credits a charge or a hold can
take are ``balance - held + overdraft``, and the overdraft check says so, so that no admin
change can leave a hold unpayable. A held message keeps its expiry instant; a partial index
finds the held ones that are due without touching the others.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HELD_DUE = sa.text("status = 'held'")


def _powers_counter() -> int | None:
    """SQLite's AUTOINCREMENT counter of powers, which a rebuild of the table drops."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return None
    return bind.exec_driver_sql(
        "SELECT seq FROM sqlite_sequence WHERE name = 'powers'").scalar()


def _keep_counter(seq: int | None) -> None:
    if seq is not None:  # a deleted power's id stays unused (see 0004)
        bind = op.get_bind()
        bind.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = 'powers'")
        bind.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES ('powers', ?)",
                             (seq,))


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    seq = _powers_counter()
    with op.batch_alter_table("powers", recreate="always" if sqlite else "auto",
                              table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("held", sa.BigInteger(), nullable=False, server_default="0"))
        batch.drop_constraint("within_overdraft", type_="check")
        batch.create_check_constraint("within_overdraft",
                                      "overdraft IS NULL OR balance - held >= -overdraft")
        batch.create_check_constraint("held_not_negative", "held >= 0")
    _keep_counter(seq)
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("expires_at", sa.BigInteger(), nullable=True))
    op.create_index("ix_messages_held_expires_at", "messages", ["expires_at"],
                    sqlite_where=_HELD_DUE, postgresql_where=_HELD_DUE)


def downgrade() -> None:
    op.drop_index("ix_messages_held_expires_at", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("expires_at")
    sqlite = op.get_bind().dialect.name == "sqlite"
    seq = _powers_counter()
    with op.batch_alter_table("powers", recreate="always" if sqlite else "auto",
                              table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint("held_not_negative", type_="check")
        batch.drop_constraint("within_overdraft", type_="check")
        batch.create_check_constraint("within_overdraft",
                                      "overdraft IS NULL OR balance >= -overdraft")
        batch.drop_column("held")
    _keep_counter(seq)
