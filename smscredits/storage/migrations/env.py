"""Alembic environment: runs on the connection smscredits hands over."""

from alembic import context

from smscredits.storage.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `alembic` run by hand without smscredits
    raise SystemExit("run migrations with `smscredits db upgrade`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite needs batch mode to alter tables
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
