"""Custom resource bodies, as Kopf hands them to handlers, for the history tests.

Built from the API models, so a body the history store accepts here is one the operator can
really produce.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from flywheel.api.approval import APPROVAL, ApprovalSpec, ApprovalStatus
from flywheel.api.common import Action, ActionParams, ObjectRef, WorkloadRef
from flywheel.api.enums import (
    ActionType,
    ApprovalDecision,
    ApprovalPhase,
    IncidentPhase,
    RiskLevel,
    RunState,
    TargetKind,
)
from flywheel.api.incident import INCIDENT, IncidentSpec, IncidentStatus, IncidentTargetRef
from flywheel.api.run import RUN, RunSpec, RunStatus, RunStep, RunTrigger


def new_uid() -> str:
    return str(uuid.uuid4())


def _stamp(body: dict[str, Any], *, uid: str, created_at: datetime, resource_version: int) -> dict[str, Any]:
    body["metadata"]["uid"] = uid
    body["metadata"]["creationTimestamp"] = created_at.isoformat().replace("+00:00", "Z")
    body["metadata"]["resourceVersion"] = str(resource_version)
    return body


def restart_action(target: str = "web") -> Action:
    return Action(
        type=ActionType.ROLLOUT_RESTART, target=WorkloadRef(kind=TargetKind.DEPLOYMENT, name=target)
    )


def scale_action(target: str = "web", replicas: int = 3) -> Action:
    return Action(
        type=ActionType.SCALE,
        target=WorkloadRef(kind=TargetKind.DEPLOYMENT, name=target),
        params=ActionParams(replicas=replicas),
    )


def steps(start: datetime, *entries: tuple[str, str, str | None]) -> list[RunStep]:
    """Journal steps one second apart: (name, result, message)."""
    return [
        RunStep(seq=index, name=name, result=result, at=start + timedelta(seconds=index), message=message)
        for index, (name, result, message) in enumerate(entries, start=1)
    ]


def run_body(
    *,
    name: str,
    namespace: str,
    created_at: datetime,
    incident_name: str = "checkout-oom",
    incident_uid: str | None = None,
    uid: str | None = None,
    action: Action | None = None,
    state: RunState | None = RunState.PENDING,
    attempt: int = 0,
    journal: Sequence[RunStep] = (),
    started_at: datetime | None = None,
    completed_at: datetime | None = None,
    error_code: str | None = None,
    error_detail: str | None = None,
    approval: ObjectRef | None = None,
    resource_version: int = 1,
) -> dict[str, Any]:
    spec = RunSpec(
        incident_ref=ObjectRef(name=incident_name, uid=incident_uid or f"uid-{incident_name}"),
        action=action or restart_action(),
        risk_level=RiskLevel.MEDIUM,
        requires_approval=approval is not None,
        trace_id=uuid.uuid4().hex,
        trigger=RunTrigger(type="Incident", ref=incident_name),
    )
    status = RunStatus(
        state=state,
        attempt=attempt,
        started_at=started_at,
        completed_at=completed_at,
        error_code=error_code,
        error_detail=error_detail,
        approval_ref=approval,
        steps=list(journal),
    )
    body = RUN.manifest(name=name, namespace=namespace, spec=spec)
    body["status"] = status.model_dump(mode="json", exclude_none=True)
    return _stamp(body, uid=uid or new_uid(), created_at=created_at, resource_version=resource_version)


def incident_body(
    *,
    name: str,
    namespace: str,
    created_at: datetime,
    uid: str | None = None,
    summary: str | None = None,
    phase: IncidentPhase | None = IncidentPhase.INVESTIGATING,
) -> dict[str, Any]:
    spec = IncidentSpec(
        alert_name="KubePodCrashLooping",
        service="checkout",
        error_type="OOMKilled",
        summary=summary,
        target_ref=IncidentTargetRef(kind=TargetKind.DEPLOYMENT, name="web"),
    )
    body = INCIDENT.manifest(name=name, namespace=namespace, spec=spec)
    body["status"] = IncidentStatus(phase=phase).model_dump(mode="json", exclude_none=True)
    return _stamp(body, uid=uid or new_uid(), created_at=created_at, resource_version=1)


def approval_body(
    *,
    name: str,
    namespace: str,
    run_name: str,
    run_uid: str,
    created_at: datetime,
    uid: str | None = None,
    decision: ApprovalDecision | None = None,
    reason: str | None = None,
    phase: ApprovalPhase = ApprovalPhase.PENDING,
    decided_by: str | None = None,
    decided_at: datetime | None = None,
    reasoning: str | None = "pod_crash matched: rollout restart",
) -> dict[str, Any]:
    spec = ApprovalSpec(
        run_ref=ObjectRef(name=run_name, uid=run_uid),
        action=restart_action(),
        risk_level=RiskLevel.HIGH,
        reasoning=reasoning,
        expires_at=created_at + timedelta(hours=1),
        decision=decision,
        reason=reason,
    )
    status = ApprovalStatus(phase=phase, decided_by=decided_by, decided_at=decided_at)
    body = APPROVAL.manifest(name=name, namespace=namespace, spec=spec)
    body["status"] = status.model_dump(mode="json", exclude_none=True)
    return _stamp(body, uid=uid or new_uid(), created_at=created_at, resource_version=1)
