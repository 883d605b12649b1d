"""usage through the journal: drop messages(user_id, at)

Every charge inserted a row at a random place of this index (one page written per charge),
which made a charge on a 10-million-event journal cost twice what it did on a small one.
`usage` now reaches a user's messages through the user's message events instead.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_user_id_at")


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_user_id_at", ["user_id", "at"], unique=False)
