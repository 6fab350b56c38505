"""Connecting to the history database, and telling an outage from a bug.

PostgreSQL (psycopg 3) or an SQLite file. Engines connect lazily, so a database that is down
when the operator starts only delays history; errors that mean "not now" are mapped to
:class:`DatabaseUnavailableError` so that callers retry them, and everything else propagates.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry

from flywheel.errors import ConfigurationError, DatabaseUnavailableError

CONNECT_TIMEOUT_SECONDS: Final = 5
# Lets a CLI read wait briefly for the operator's write instead of failing on a locked file.
SQLITE_BUSY_TIMEOUT_MS: Final = 5000

_SCHEMA_MISSING_HINT: Final = "has no or an outdated history schema (run `flywheel db upgrade`)"
# PostgreSQL error classes meaning "not now" rather than "never": connection exceptions (08),
# insufficient resources (53), operator intervention such as shutdown or a cancelled
# statement (57), and a missing table or column, which the next migration creates.
_TRANSIENT_SQLSTATE_PREFIXES: Final = ("08", "53", "57")
_SCHEMA_MISSING_SQLSTATES: Final = frozenset({"42P01", "42703"})  # undefined table, undefined column
_SQLITE_SCHEMA_MISSING: Final = ("no such table", "no such column", "has no column named")


def normalize_database_url(database_url: str) -> URL:
    """The URL SQLAlchemy should use: plain ``postgresql://`` means psycopg 3, the driver we ship.

    (SQLAlchemy's own default for ``postgresql://`` is psycopg2, which is not installed.)
    """
    try:
        url = make_url(database_url)
    except sa_exc.ArgumentError as exc:
        raise ConfigurationError(f"database URL {database_url!r} is not a valid SQLAlchemy URL") from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("postgresql", "sqlite"):
        raise ConfigurationError(
            f"history database must be PostgreSQL or SQLite, got {url.get_backend_name()!r}"
        )
    return url


def describe_database_url(database_url: str | URL) -> str:
    """The URL with its password hidden, for logs and messages."""
    url = database_url if isinstance(database_url, URL) else make_url(database_url)
    return url.render_as_string(hide_password=True)


def sqlite_database_path(database_url: str) -> str | None:
    """The file behind an SQLite URL; ``None`` for other backends and in-memory databases."""
    url = normalize_database_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return url.database


def _configure_sqlite_connection(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets `flywheel history` read while the operator writes to the same file.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def create_history_engine(database_url: str) -> Engine:
    """A sync engine for the history database that fails fast when the server is unreachable.

    Nothing connects here: a database that is down at start-up only delays history.
    """
    url = normalize_database_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url)
        event.listen(engine, "connect", _configure_sqlite_connection)
        return engine
    return create_engine(
        url,
        # Connections killed by a restart or failover are noticed before use, not mid-write.
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=2,
        pool_timeout=CONNECT_TIMEOUT_SECONDS,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )


def unavailability_reason(exc: sa_exc.SQLAlchemyError) -> str | None:
    """Why ``exc`` means the database cannot serve us *right now*, or ``None`` if it is not that.

    Unavailable means retrying later can succeed: a refused or lost connection, a server shutting
    down, a locked SQLite file, or a schema not migrated yet.
    """
    if isinstance(exc, sa_exc.TimeoutError):
        return "has no free connection"
    if not isinstance(exc, sa_exc.DBAPIError):
        return None
    if exc.connection_invalidated:
        return "dropped the connection"
    sqlstate = getattr(exc.orig, "sqlstate", None)
    message = str(exc.orig)
    if sqlstate in _SCHEMA_MISSING_SQLSTATES or any(phrase in message for phrase in _SQLITE_SCHEMA_MISSING):
        return _SCHEMA_MISSING_HINT
    if sqlstate is not None and sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES):
        return "is unavailable"
    # Connection failures carry no SQLSTATE (psycopg) or are plain OperationalErrors (SQLite:
    # locked, unable to open, disk I/O); DBAPI reserves OperationalError for such conditions.
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) and (
        sqlstate is None or sqlstate == "55000"  # 55000: database not accepting connections
    ):
        return "is unreachable"
    return None


def as_unavailable(exc: sa_exc.SQLAlchemyError, database: str) -> DatabaseUnavailableError | None:
    """The :class:`DatabaseUnavailableError` for ``exc``, or ``None`` if ``exc`` is not about availability."""
    reason = unavailability_reason(exc)
    if reason is None:
        return None
    detail = " ".join(str(getattr(exc, "orig", None) or exc).split())
    return DatabaseUnavailableError(f"history database {database} {reason}: {detail}")


__all__ = [
    "CONNECT_TIMEOUT_SECONDS",
    "SQLITE_BUSY_TIMEOUT_MS",
    "as_unavailable",
    "create_history_engine",
    "describe_database_url",
    "normalize_database_url",
    "sqlite_database_path",
    "unavailability_reason",
]
