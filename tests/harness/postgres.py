"""A real PostgreSQL server for the test session.

As root (CI, the dev container) PostgreSQL refuses to run as the invoking user, so we
use Debian's cluster tools (pg_createcluster/pg_ctlcluster), which run the server as
the ``postgres`` user. Otherwise pytest-postgresql's executor starts one in a temp dir.
``FLYWHEEL_TEST_POSTGRES_URL`` points at an existing server instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, make_url, text

from tests.harness.ports import free_port


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    # Stops and starts the server (None: not ours to restart, FLYWHEEL_TEST_POSTGRES_URL).
    restarter: Callable[[], None] | None = field(default=None, compare=False)

    def restart(self) -> None:
        """A real restart of the server: every connection is cut, and it accepts new ones after."""
        if self.restarter is None:
            raise RuntimeError("this PostgreSQL was not started by the tests: it cannot be restarted")
        self.restarter()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname="postgres", autocommit=True
        )

    def create_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')




def _debian_version() -> str:
    versions = sorted(p.name for p in Path("/usr/lib/postgresql").iterdir() if (p / "bin" / "postgres").exists())
    if not versions:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)")
    return versions[-1]


@contextlib.contextmanager
def _debian_cluster() -> Iterator[PostgresServer]:
    version = _debian_version()
    name = f"flywheeltest{uuid.uuid4().hex[:8]}"
    port = free_port()
    password = uuid.uuid4().hex
    datadir = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    shutil.chown(datadir, "postgres", "postgres")
    try:
        subprocess.run(
            ["pg_createcluster", version, name, "--port", str(port), "--datadir", str(datadir / "data"),
             "--start", "--", "--auth-host=scram-sha-256", "--auth-local=peer"],
            check=True, capture_output=True, text=True,
        )
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "psql", "-p", str(port), "-c",
             f"ALTER USER postgres PASSWORD '{password}'"],
            check=True, capture_output=True, text=True,
        )
        def restart() -> None:
            subprocess.run(["pg_ctlcluster", version, name, "restart", "-m", "fast"],
                           check=True, capture_output=True, text=True)

        yield PostgresServer(host="127.0.0.1", port=port, user="postgres", password=password, restarter=restart)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"could not start PostgreSQL: {exc.cmd}: {exc.stderr}") from exc
    finally:
        subprocess.run(["pg_dropcluster", "--stop", version, name], check=False, capture_output=True)
        shutil.rmtree(datadir, ignore_errors=True)


@contextlib.contextmanager
def _pytest_postgresql_executor() -> Iterator[PostgresServer]:
    from pytest_postgresql.executor import PostgreSQLExecutor

    version = _debian_version()
    password = uuid.uuid4().hex
    workdir = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    executor = PostgreSQLExecutor(
        executable=f"/usr/lib/postgresql/{version}/bin/pg_ctl",
        host="127.0.0.1", port=free_port(), datadir=str(workdir / "data"), unixsocketdir=str(workdir),
        logfile=str(workdir / "pg.log"), startparams="-w", dbname="postgres", user="postgres", password=password,
    )
    def restart() -> None:
        executor.stop()
        executor.start()

    with executor:
        yield PostgresServer(
            host="127.0.0.1", port=executor.port, user="postgres", password=password, restarter=restart
        )
    shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def start_postgres() -> Iterator[PostgresServer]:
    explicit = os.environ.get("FLYWHEEL_TEST_POSTGRES_URL")
    if explicit:
        info = psycopg.conninfo.conninfo_to_dict(explicit.replace("postgresql+psycopg://", "postgresql://"))
        yield PostgresServer(
            host=str(info.get("host", "127.0.0.1")), port=int(info.get("port", 5432)),
            user=str(info.get("user", "postgres")), password=str(info.get("password", "")),
        )
        return
    factory = _debian_cluster if os.geteuid() == 0 else _pytest_postgresql_executor
    with factory() as server:
        yield server


class PostgresSwitch:
    """Makes one database refuse connections for real, and accept them again."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        assert url.database is not None
        self.database = url.database
        self._admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def refuse_connections(self) -> None:
        with self._admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false'))
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                {"name": self.database},
            )

    def accept_connections(self) -> None:
        with self._admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true'))

    def close(self) -> None:
        self.accept_connections()
        self._admin.dispose()
