"""Peering replicas refuse a history of their own (``flywheel.main.require_shared_history``).

Scenario matrix (database URL × peering):
- SQLite (a file, relative or absolute, or in memory) with peering: refused, the message
  names FLYWHEEL_DATABASE_URL, says "use PostgreSQL" and how to run one replica instead;
- SQLite with --standalone, PostgreSQL (psycopg or plain postgresql://) with peering: allowed;
"""

from __future__ import annotations

import pytest

from flywheel.errors import ConfigurationError
from flywheel.main import require_shared_history

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "url", ["sqlite:////var/lib/flywheel/history.db", "sqlite:///flywheel.db", "sqlite://", "sqlite+pysqlite:///h.db"]
)
def test_sqlite_with_peering_is_refused_with_what_to_do(url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        require_shared_history(url, standalone=False)
    message = str(refused.value)
    assert "FLYWHEEL_DATABASE_URL" in message
    assert "use PostgreSQL" in message
    assert "--standalone" in message


@pytest.mark.parametrize(
    ("url", "standalone"),
    [
        ("sqlite:////var/lib/flywheel/history.db", True),
        ("postgresql+psycopg://flywheel:secret@db:5432/flywheel", False),
        ("postgresql://flywheel@db/flywheel", False),
    ],
)
def test_one_replica_on_sqlite_and_peering_on_postgresql_are_allowed(url: str, standalone: bool) -> None:
    require_shared_history(url, standalone=standalone)

