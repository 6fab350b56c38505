"""The layering is machine-checked (.importlinter): lower layers never import higher ones, the
controllers never import each other, and settings are read only at the top."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    result = subprocess.run([str(lint_imports)], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
    kept = " ".join(result.stdout.split())
    for contract in (
        "Layers: handlers > wiring > controllers | metrics | intake > stores > domain > api KEPT",
        "Each controller stands alone: shared names live in the API layer, stores come in through Protocols KEPT",
        "Settings and wiring are read at the top: controllers, metrics, intake, stores and below get slices KEPT",
    ):
        assert contract in kept, f"contract missing from .importlinter: {contract}"


def test_the_settings_are_read_from_the_environment_only_at_the_top() -> None:
    """``get_settings()`` only in the entry points: everything below gets what they built (wiring, handlers' slices)."""
    import ast

    allowed = {"main.py", "cli.py", "cli_history.py", "cli_explain.py", "cli_approvals.py", "cli_kube.py", "settings.py"}
    package = ROOT / "operator" / "flywheel"
    readers = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name | ast.Attribute) and (
                getattr(node, "id", None) == "get_settings" or getattr(node, "attr", None) == "get_settings"
            ):
                relative = path.relative_to(package)
                if str(relative) not in allowed:
                    readers.append(f"{relative}:{node.lineno}")
    assert readers == [], f"get_settings() read below the entry points: {readers}"
