"""Storage: SQLModel tables, migrations, engines and the hot statements in SQLAlchemy Core."""
