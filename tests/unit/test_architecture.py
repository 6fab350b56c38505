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


def test_log_lines_are_named_by_an_event_not_prose() -> None:
    """``log.info("alert_received", ...)``: the message is a grep-able event name, the context keys."""
    import ast
    import re

    methods = {"debug", "info", "warning", "error", "exception", "critical"}
    name = re.compile(r"[a-z][a-z0-9_]*")
    package = ROOT / "operator" / "flywheel"
    prose = []
    checked = 0
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            function = node.func
            if isinstance(function, ast.Attribute) and function.attr in methods:
                receiver = function.value
                receiver_name = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", "")
                if not receiver_name.endswith("log"):
                    continue
            elif not (isinstance(function, ast.Name) and function.id == "log"):
                continue
            event = node.args[0]
            checked += 1
            # One name, or a choice between two (``"x_created" if created else "x_updated"``).
            choices = [event.body, event.orelse] if isinstance(event, ast.IfExp) else [event]
            if not all(isinstance(c, ast.Constant) and isinstance(c.value, str) and name.fullmatch(c.value)
                       for c in choices):
                prose.append(f"{path.relative_to(package)}:{node.lineno}: {ast.unparse(event)[:80]}")
    assert checked > 100, "the check found the log calls"
    assert prose == [], "log events must be names like alert_received:\n" + "\n".join(prose)
