"""Project every Incident, Run and Approval into the history database as it changes.

Watch events carry the object as stored (after our own status patches), so the
projection never lags one update behind; the writer coalesces and retries on its own.
A resolved Incident also leaves a knowledge entry (what was done, how it ended, why).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from flywheel.api.enums import ActionType, IncidentPhase
from flywheel.api.times import parse_time
from flywheel.stores.history import HistoryKind, KnowledgeEntry
from flywheel.stores.kube import GROUP, VERSION
from flywheel.wiring import FlywheelMemo


def knowledge_entry(incident: Mapping[str, Any]) -> KnowledgeEntry | None:
    """The knowledge entry of a resolved Incident, or None while it is not resolved."""
    status = incident.get("status") or {}
    if status.get("phase") not in (IncidentPhase.RESOLVED, IncidentPhase.CLOSED):
        return None
    meta, spec = incident["metadata"], incident.get("spec") or {}
    resolution = spec.get("resolution") or {}
    action = ((status.get("decision") or {}).get("action") or {}).get("type")
    resolved_at = status.get("resolvedAt")
    return KnowledgeEntry(
        incident_uid=meta["uid"],
        namespace=meta["namespace"],
        incident_name=meta["name"],
        outcome=str(status.get("phase")),
        resolved_at=parse_time(resolved_at) if resolved_at else datetime.now(UTC),
        anomaly_key=(status.get("anomaly") or {}).get("key"),
        action=ActionType(action) if action else None,
        disposition=status.get("disposition"),
        root_cause=resolution.get("rootCause"),
        note=resolution.get("note"),
    )


def project(kind: HistoryKind, event: kopf.RawEvent, memo: FlywheelMemo) -> None:
    """Hand the stored version of the object to the history writer (never blocks)."""
    if event.get("type") == "DELETED":
        return  # the history outlives the resource: that is its point
    body = event["object"]
    memo.deps.history.submit(kind, body)
    if kind is HistoryKind.INCIDENT and (entry := knowledge_entry(body)) is not None:
        memo.deps.history.submit(HistoryKind.KNOWLEDGE_ENTRY, entry)


# Incidents and Runs are projected by their own watch handlers (flywheel.handlers.incident and
# .run): one handler call per watch event instead of two, which an alert storm notices.
@kopf.on.event(GROUP, VERSION, "approvals", id="history-approvals")
async def project_approval(event: kopf.RawEvent, memo: FlywheelMemo, **_: Any) -> None:
    project(HistoryKind.APPROVAL, event, memo)
