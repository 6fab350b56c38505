"""``flywheel run`` refuses to start peering on SQLite, as a user runs it (a real process).

Scenario matrix:
- without --standalone and an SQLite FLYWHEEL_DATABASE_URL: exits 1 at once, before it
  reaches any cluster (the kubeconfig points nowhere), saying "use PostgreSQL";
- the same with --standalone gets past the check (it then fails on the missing kubeconfig,
  which shows the check did not stop it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def flywheel_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("FLYWHEEL_")},
        "FLYWHEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'history.db'}",
        "FLYWHEEL_REDIS_URL": "redis://127.0.0.1:1/0",
        "KUBECONFIG": str(tmp_path / "no-such-kubeconfig"),
    }
    return subprocess.run(
        [sys.executable, "-m", "flywheel", "run", *args, "--namespace", "shop"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_peering_on_sqlite_exits_with_use_postgresql(tmp_path: Path) -> None:
    result = flywheel_run(tmp_path)
    assert result.returncode == 1, result.stderr
    assert "use PostgreSQL" in result.stderr
    assert "FLYWHEEL_DATABASE_URL is SQLite" in result.stderr
    assert not (tmp_path / "history.db").exists(), "refused before anything was written"


def test_standalone_on_sqlite_gets_past_the_check(tmp_path: Path) -> None:
    result = flywheel_run(tmp_path, "--standalone")
    assert "use PostgreSQL" not in result.stderr
