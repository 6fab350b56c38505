"""The Incident status patches a Run's outcome writes: resolved, or not remediated."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flywheel.api.bodies import own_status
from flywheel.api.common import ObjectRef, find_condition, new_condition, set_condition
from flywheel.api.enums import (
    ConditionStatus,
    DecisionState,
    Disposition,
    IncidentPhase,
)
from flywheel.api.incident import IncidentStatus
from flywheel.api.names import FINAL_PHASES, RESOLVED
from flywheel.api.times import format_precise_time

# The reason of the Incident's condition Resolved=False once its Run ended without remediating it.
NOT_REMEDIATED = "NotRemediated"


def unremediated_patch(
    incident: Mapping[str, Any], *, run_ref: ObjectRef, message: str, now: datetime
) -> dict[str, Any] | None:
    """The Incident status merge patch saying its Run ended without remediating it.

    Condition Resolved turns False (reason NotRemediated), the decision is Completed and the phase stays
    as it is. None when
    the Incident is final already, its Run is another one, or the condition says so already.
    """
    status = IncidentStatus.model_validate(own_status(incident.get("status") or {}, IncidentStatus))
    if status.phase in FINAL_PHASES or status.phase is IncidentPhase.DUPLICATE:
        return None
    if status.run_ref is not None and status.run_ref.uid != run_ref.uid:
        return None
    existing = find_condition(status.conditions, RESOLVED)
    if existing is not None and existing.reason == NOT_REMEDIATED and existing.message == message:
        return None
    conditions = _with_resolved(incident, status, ConditionStatus.FALSE, NOT_REMEDIATED, message, now)
    patch: dict[str, Any] = {"conditions": conditions}
    if status.decision is not None and status.decision.state not in (DecisionState.COMPLETED, DecisionState.ERROR):
        # The decision completed (its Run ended): the Incident controller's ladder takes it from here.
        patch["decision"] = {"state": DecisionState.COMPLETED.value}
    return {"status": patch}


def _with_resolved(
    incident: Mapping[str, Any],
    status: IncidentStatus,
    value: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
) -> list[dict[str, Any]]:
    """The Incident's conditions, as written, with Resolved set to ``value``."""
    generation = int((incident.get("metadata") or {}).get("generation") or 1)
    conditions = set_condition(
        status.conditions,
        new_condition(RESOLVED, value, reason, message, now=now, observed_generation=generation),
    )
    return [condition.model_dump(mode="json", by_alias=True, exclude_none=True) for condition in conditions]


def resolution_patch(
    incident: Mapping[str, Any],
    *,
    run_ref: ObjectRef,
    disposition: Disposition,
    message: str,
    now: datetime,
) -> dict[str, Any] | None:
    """The Incident status merge patch resolving it after a successful Run; None if already final."""
    status = IncidentStatus.model_validate(own_status(incident.get("status") or {}, IncidentStatus))
    if status.phase in FINAL_PHASES:
        return None
    reason = "HumanApproved" if disposition is Disposition.HUMAN_APPROVED else "AutoRepaired"
    patch: dict[str, Any] = {
        "phase": IncidentPhase.RESOLVED.value,
        "disposition": disposition.value,
        "resolvedAt": format_precise_time(now),
        "conditions": _with_resolved(incident, status, ConditionStatus.TRUE, reason, message, now),
    }
    if status.run_ref is None:
        patch["runRef"] = run_ref.model_dump(mode="json", by_alias=True)
    if status.decision is not None:
        patch["decision"] = {"state": DecisionState.COMPLETED.value}
    return {"status": patch}

