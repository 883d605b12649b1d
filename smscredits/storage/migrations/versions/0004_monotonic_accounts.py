"""monotonic accounts: powers.last_at, and ids never reused on SQLite

``powers.last_at`` holds the instant of the account's latest event. A charge, refund or
adjustment is stamped no earlier than it, so an account's events never go back in time and a
limit window never moves backwards, whatever the order in which concurrent transactions
commit and however the clocks of the hosts that write differ.

SQLite hands out the highest rowid again once its row is deleted: a power created after the
newest one was deleted took its id, and with it the deleted power's journal chain. Users,
powers and refill plans are rebuilt with AUTOINCREMENT, its counter starting above every id
the journal has seen. (Postgres sequences never go back.)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each rebuilt table, with the highest id the rest of the database has seen of it.
_SEEN = {
    "users": ("SELECT max(id) FROM users", "SELECT max(user_id) FROM events",
              "SELECT max(user_id) FROM messages", "SELECT max(user_id) FROM powers",
              "SELECT max(user_id) FROM refill_plans"),
    "powers": ("SELECT max(id) FROM powers", "SELECT max(power_id) FROM events",
               "SELECT max(power_id) FROM messages"),
    "refill_plans": ("SELECT max(id) FROM refill_plans",
                     "SELECT max(plan_id) FROM refill_applications"),
}


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in _SEEN:
        with op.batch_alter_table(table, recreate="always" if sqlite else "auto",
                                  table_kwargs={"sqlite_autoincrement": True}) as batch:
            if table == "powers":
                batch.add_column(sa.Column("last_at", sa.BigInteger(), nullable=False,
                                           server_default="0"))
    op.execute(
        "UPDATE powers SET last_at = m.at FROM (SELECT power_id, max(at) AS at FROM events "
        "WHERE power_id IS NOT NULL GROUP BY power_id) AS m WHERE m.power_id = powers.id"
    )
    if sqlite:
        bind = op.get_bind()
        # smscredits runs this with foreign keys off (the parent tables are rebuilt): check
        # them all before the transaction commits.
        broken = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"foreign keys broken by the rebuild: {broken[:3]}")
        for table, queries in _SEEN.items():
            seen = max((bind.exec_driver_sql(q).scalar() or 0) for q in queries)
            bind.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
            bind.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)",
                                 (table, seen))


def downgrade() -> None:
    with op.batch_alter_table("powers") as batch:
        batch.drop_column("last_at")
