"""The Incident's decision follows its Run: Ready → Executing when the Run acts, Error when it is cancelled.

(Completed is written with the Run's outcome, in ``outcome.py``.) Every change goes through the
decision state machine (``domain/decision_state.py``) and only while the Incident's runRef is this
Run: a later decision of the ladder is never touched by an older Run. The Incident index says
whether anything is to write, so a pass costs no API call once the Incident says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flywheel.api.bodies import own_status
from flywheel.api.common import new_condition, set_condition
from flywheel.api.enums import ConditionStatus, DecisionState, RunState
from flywheel.api.incident import IncidentStatus
from flywheel.api.names import DECIDED, FINAL_PHASES
from flywheel.controllers.run.passes import RunPass
from flywheel.controllers.run.ports import IncidentStatusWriter
from flywheel.domain.decision_state import check_decision_transition
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import ACTIVE_STATES
from flywheel.errors import KubernetesApiError, StoreUnavailableError
from flywheel.logs import get_logger

log = get_logger(__name__)


def wanted_decision_state(ctx: RunPass) -> DecisionState | None:
    if ctx.state in ACTIVE_STATES and ctx.status.attempt >= 1:
        return DecisionState.EXECUTING
    if ctx.state is RunState.CANCELLED:
        return DecisionState.ERROR
    return None


def decision_patch(
    body: Mapping[str, Any], *, run_uid: str, target: DecisionState, reason: str, message: str, ctx: RunPass
) -> dict[str, Any] | None:
    """The Incident status patch moving its decision to ``target``; None if not this Run's or not allowed."""
    status = IncidentStatus.model_validate(own_status(body.get("status") or {}, IncidentStatus))
    if status.phase in FINAL_PHASES or status.decision is None:
        return None
    if status.run_ref is None or status.run_ref.uid != run_uid:
        return None
    if not check_decision_transition(status.decision.state, target).allowed:
        return None
    generation = int((body.get("metadata") or {}).get("generation") or 1)
    condition_status = ConditionStatus.FALSE if target is DecisionState.ERROR else ConditionStatus.TRUE
    conditions = set_condition(
        status.conditions,
        new_condition(DECIDED, condition_status, reason, message, now=ctx.now, observed_generation=generation),
    )
    decision: dict[str, Any] = {"state": target.value}
    if target is DecisionState.ERROR:
        decision["error"] = message[:4096]
    return {
        "status": {
            "decision": decision,
            "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions],
        }
    }


async def follow_decision(ctx: RunPass, incident: IncidentView | None, incidents: IncidentStatusWriter) -> None:
    """Move the Incident's decision with its Run, once (the index tells when it is done)."""
    target = wanted_decision_state(ctx)
    run = ctx.run
    if target is None or incident is None or incident.run_uid not in (run.uid, run.name):
        return
    if not check_decision_transition(incident.decision_state, target).allowed:
        return
    if target is DecisionState.EXECUTING:
        reason, message = "Executing", f"Run {run.name} acts: {run.action.describe()}"
    else:
        cause = ctx.status.steps[-1].message if ctx.status.steps else "cancelled"
        reason, message = "RunCancelled", f"Run {run.name} was cancelled ({ctx.status.error_code}): {cause}"

    def mutation(body: Mapping[str, Any]) -> dict[str, Any] | None:
        return decision_patch(body, run_uid=run.uid, target=target, reason=reason, message=message, ctx=ctx)

    ref = run.spec.incident_ref
    try:
        await incidents.update_status(run.namespace, ref.name, ref.uid, mutation)
    except (StoreUnavailableError, KubernetesApiError) as exc:
        # The view still says the old state: the next pass tries again.
        log.warning("run_decision_state_pending", run=run.name, incident=ref.name, state=target.value, error=str(exc))
