"""Alembic environment of the history database.

The URL comes from the caller (``flywheel.stores.history.migrate.upgrade`` passes it in
``config.attributes["database_url"]``, out of reach of configparser's ``%`` interpolation, which
would mangle URL-encoded passwords) or else from ``FLYWHEEL_DATABASE_URL``, so that the plain
``alembic`` command works too. Logging is left as the host process configured it.
"""

from __future__ import annotations

import os
from typing import Final

from alembic import context
from sqlalchemy import text

from flywheel.errors import ConfigurationError
from flywheel.stores.history.engine import create_history_engine, normalize_database_url
from flywheel.stores.history.tables import HistoryBase

# Two operator replicas starting together would both try to create the tables. On PostgreSQL
# the whole upgrade runs in one transaction (transactional DDL), so a transaction-scoped
# advisory lock taken first makes the second replica wait and then find the schema at head.
MIGRATION_LOCK_ID: Final = 0x466C7977686C  # "Flywhl"

config = context.config
target_metadata = HistoryBase.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("FLYWHEEL_DATABASE_URL")
    if not url:
        raise ConfigurationError("no history database URL: pass one or set FLYWHEEL_DATABASE_URL")
    return str(url)


def run_migrations_offline() -> None:
    """Print the SQL instead of running it (``alembic upgrade head --sql``)."""
    url = normalize_database_url(_database_url())
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_history_engine(_database_url())
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:lock_id)"), {"lock_id": MIGRATION_LOCK_ID}
                    )
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
