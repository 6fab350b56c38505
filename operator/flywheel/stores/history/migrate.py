"""Alembic migrations of the history database, run programmatically.

The migration scripts ship inside the package (``flywheel/migrations``), so ``flywheel db
upgrade`` and the operator's start-up work from an installed wheel without an ``alembic.ini``.
Upgrading is idempotent: at head, it does nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc

from flywheel.errors import ConfigurationError
from flywheel.logs import get_logger
from flywheel.stores.history.engine import as_unavailable, create_history_engine, describe_database_url

_log = get_logger(__name__)

MIGRATIONS_DIRECTORY: Final = Path(__file__).resolve().parent.parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration for ``database_url`` without any ini file."""
    if not (MIGRATIONS_DIRECTORY / "env.py").is_file():
        raise ConfigurationError(
            f"history migrations not found in {MIGRATIONS_DIRECTORY}: the package was built without them"
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIRECTORY))
    config.attributes["database_url"] = database_url
    return config


def head_revision() -> str:
    """The newest migration shipped with this version of Flywheel."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    if head is None:
        raise ConfigurationError(f"no migrations in {MIGRATIONS_DIRECTORY}")
    return head


def current_revision(database_url: str) -> str | None:
    """The revision the database is at; ``None`` for a database never migrated."""
    engine = create_history_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except sa_exc.SQLAlchemyError as exc:
        unavailable = as_unavailable(exc, describe_database_url(engine.url))
        if unavailable is not None:
            raise unavailable from exc
        raise
    finally:
        engine.dispose()


def upgrade(database_url: str, revision: str = "head") -> str | None:
    """Migrate the history database to ``revision`` and return the revision it is at.

    Raises :class:`DatabaseUnavailableError` when the database cannot be reached, so the
    operator can retry later instead of failing to start.
    """
    described = describe_database_url(database_url)
    _log.info("history_database_migrating", database=described, target=revision)
    try:
        command.upgrade(alembic_config(database_url), revision)
    except sa_exc.SQLAlchemyError as exc:
        unavailable = as_unavailable(exc, described)
        if unavailable is not None:
            raise unavailable from exc
        raise
    reached = current_revision(database_url)
    _log.info("history_database_migrated", database=described, revision=reached)
    return reached


__all__ = ["MIGRATIONS_DIRECTORY", "alembic_config", "current_revision", "head_revision", "upgrade"]
