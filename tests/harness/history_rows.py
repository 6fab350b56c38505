"""Rows of the history tables with every required column filled, for seeding metrics tests.

The metrics read the history with aggregates over timestamps, so their tests insert rows
directly (exact times, states and codes) rather than projecting whole custom resources.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Table, insert

from flywheel.stores.history.tables import (
    ApprovalRow,
    IncidentRow,
    KnowledgeEntryRow,
    RepairExecutionRow,
    RunRow,
)

INCIDENTS: Table = IncidentRow.__table__  # type: ignore[assignment]
RUNS: Table = RunRow.__table__  # type: ignore[assignment]
APPROVALS: Table = ApprovalRow.__table__  # type: ignore[assignment]
EXECUTIONS: Table = RepairExecutionRow.__table__  # type: ignore[assignment]
KNOWLEDGE: Table = KnowledgeEntryRow.__table__  # type: ignore[assignment]


def _uid() -> str:
    return str(uuid.uuid4())


def incident_row(name: str, created_at: datetime, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "uid": _uid(), "namespace": "shop", "name": name, "created_at": created_at,
        "alert_name": "KubePodOOMKilled", "service": "checkout", "error_type": "OOMKilled", "severity": "P2",
        "source": "alertmanager", "summary": None, "target_kind": "Deployment", "target_name": "checkout",
        "remediation_mode": "Auto", "phase": "Investigating", "anomaly_key": "0123456789abcdef",
        "escalation_level": None, "decision_id": None, "decision_source": None, "decision_action": None,
        "run_name": None, "run_uid": None, "duplicate_of": None, "disposition": None, "resolved_at": None,
        "resource_version": "1", "projected_at": created_at,
    }
    row.update(values)
    return row


def run_row(name: str, created_at: datetime, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "uid": _uid(), "namespace": "shop", "name": name, "created_at": created_at,
        "incident_name": f"incident-of-{name}", "incident_uid": _uid(), "action_type": "RolloutRestart",
        "target_kind": "Deployment", "target_name": "checkout", "action_params": {}, "risk_level": "medium",
        "requires_approval": False, "mode": "Auto", "trace_id": uuid.uuid4().hex, "trigger_type": "Incident",
        "trigger_ref": None, "state": "Pending", "attempt": 0, "started_at": None, "completed_at": None,
        "error_code": None, "error_detail": None, "approval_name": None, "approval_uid": None,
        "resource_version": "1", "projected_at": created_at,
    }
    row.update(values)
    return row


def approval_row(name: str, created_at: datetime, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "uid": _uid(), "namespace": "shop", "name": name, "created_at": created_at, "run_name": f"run-of-{name}",
        "run_uid": _uid(), "action_type": "RolloutRestart", "target_kind": "Deployment", "target_name": "checkout",
        "risk_level": "high", "escalation_level": None, "reasoning": None,
        "expires_at": created_at + timedelta(hours=1), "decision": None, "reason": None, "phase": "Pending",
        "decided_by": None, "decided_at": None, "message": None, "resource_version": "1", "projected_at": created_at,
    }
    row.update(values)
    return row


def execution_row(finished_at: datetime, succeeded: bool, action: str = "RolloutRestart", **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_uid": _uid(), "attempt": 1, "namespace": "shop", "incident_uid": _uid(),
        "anomaly_key": "0123456789abcdef", "action": action, "target_kind": "Deployment", "target_name": "checkout",
        "shadow": False, "succeeded": succeeded, "error_code": None if succeeded else "E-VERIFY-TIMEOUT",
        "started_at": finished_at - timedelta(seconds=30), "finished_at": finished_at, "latency_ms": 30000,
        "recorded_at": finished_at,
    }
    row.update(values)
    return row


def knowledge_row(resolved_at: datetime, root_cause: str | None, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "incident_uid": _uid(), "namespace": "shop", "incident_name": f"incident-{uuid.uuid4().hex[:6]}",
        "anomaly_key": "0123456789abcdef", "action": "RolloutRestart", "outcome": "Succeeded",
        "disposition": "auto_repair", "root_cause": root_cause, "note": None, "resolved_at": resolved_at,
        "recorded_at": resolved_at,
    }
    row.update(values)
    return row


def insert_rows(engine: Engine, rows: Mapping[Table, Sequence[Mapping[str, Any]]]) -> None:
    with engine.begin() as connection:
        for table, table_rows in rows.items():
            if table_rows:
                connection.execute(insert(table), [dict(row) for row in table_rows])
