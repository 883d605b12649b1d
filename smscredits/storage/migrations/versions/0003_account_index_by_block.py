"""account index by block: events((id >> 15), user_id, id) for events(user_id, id)

A user-led index took each charge's entry to a random page of a B-tree as big as the whole
journal. Led by the block of the event id, new entries land among the newest block's few
pages; a user's events are found with one seek per block (see ``storage.blocks``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain statements, not batch mode: SQLite creates and drops an index in place.
    op.create_index("ix_events_block_user_id", "events",
                    [sa.text("(id >> 15)"), "user_id", "id"], unique=False)
    op.drop_index("ix_events_user_id_id", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_user_id_id", "events", ["user_id", "id"], unique=False)
    op.drop_index("ix_events_block_user_id", table_name="events")
