"""Kopf handlers for Run: thin glue between Kopf and the RunController.

The same reconcile runs on create, resume (operator start), spec update and on a timer
that keeps polling non-final Runs (rollouts, deadlines, heartbeats) and finished Runs
whose outcome is not recorded yet. Nothing here blocks: a Run that has to wait simply
returns and is looked at again on the next tick.
"""

from __future__ import annotations

import time
from typing import Any

import kopf

from flywheel.controllers.run import (
    OUTCOME_RECORDED,
    IncidentView,
    RunController,
    RunGuard,
    RunObject,
    observed_run,
)
from flywheel.domain.run_state import TERMINAL_STATES, ObservedRun
from flywheel.errors import StoreUnavailableError
from flywheel.logs import get_logger
from flywheel.stores.kube import API_VERSION, GROUP, VERSION

log = get_logger(__name__)

# How often a Run that is not finished is looked at (rollout polling, deadlines, heartbeats).
POLL_SECONDS = 2.0
# Events about an Approval, posted on the Approval as well as on its Run.
APPROVAL_EVENT_REASONS = frozenset(
    {"ApprovalRequested", "Approved", "Rejected", "ApprovalRefused", "ApprovalExpired"}
)
# Back-off when the Kubernetes API or Redis is unavailable.
UNAVAILABLE_RETRY_SECONDS = 5.0


@kopf.index(GROUP, VERSION, "runs")
def run_views(
    namespace: str | None,
    name: str,
    uid: str,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    **_: Any,
) -> dict[str, ObservedRun] | None:
    """Runs by namespace, for the safety limits (concurrency, circuit breaker) without API calls."""
    if namespace is None:
        return None
    try:
        return {namespace: observed_run(namespace, name, uid, meta, spec, status)}
    except (KeyError, ValueError):
        return None  # an invalid Run is refused by its own handler; it occupies no slot


@kopf.index(GROUP, VERSION, "incidents")
def incident_views(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], IncidentView] | None:
    """Incidents by (namespace, name), so that a Run sees its Incident go away or turn remediation Off."""
    if namespace is None:
        return None
    try:
        return {(namespace, name): IncidentView.from_body(body)}
    except (KeyError, ValueError):
        return None


_FINAL_STATE_NAMES = frozenset(state.value for state in TERMINAL_STATES)


def _needs_driving(status: kopf.Status, **_: Any) -> bool:
    """Not final yet, or final with an outcome still to record."""
    if status.get("state") not in _FINAL_STATE_NAMES:
        return True
    recorded = next((c for c in status.get("conditions") or [] if c.get("type") == OUTCOME_RECORDED), None)
    return recorded is None or recorded.get("status") != "True"


def _guard(memo: kopf.Memo) -> RunGuard:
    # Kopf gives every object its own memo, shared by that object's handlers and timers.
    if "run_guard" not in memo:
        memo["run_guard"] = RunGuard()
    guard: RunGuard = memo["run_guard"]
    return guard


@kopf.on.resume(GROUP, VERSION, "runs")
@kopf.on.create(GROUP, VERSION, "runs")
@kopf.on.update(GROUP, VERSION, "runs", field="spec")
@kopf.timer(GROUP, VERSION, "runs", interval=POLL_SECONDS, when=_needs_driving)
async def reconcile_run(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    run_views: kopf.Index[str, ObservedRun],
    incident_views: kopf.Index[tuple[str, str], IncidentView],
    approvals_by_run: kopf.Index[tuple[str, str], dict[str, Any]],
    **_: Any,
) -> None:
    try:
        run = RunObject.from_body(body)
    except ValueError as exc:
        raise kopf.PermanentError(f"invalid Run: {exc}") from exc
    guard = _guard(memo)
    async with guard.lock:
        if guard.is_stale(run.status, time.monotonic()):
            log.debug("run_pass_skipped_stale_body", run=run.name, namespace=run.namespace)
            return
        incidents = list(incident_views.get((run.namespace, run.spec.incident_ref.name), []))
        approvals = list(approvals_by_run.get((run.namespace, run.name), []))
        controller = RunController(memo.deps.settings, memo.deps.anomalies, memo.deps.run_stores)
        try:
            outcome = await controller.reconcile(
                run,
                incidents[0] if incidents else None,
                list(run_views.get(run.namespace, [])),
                # Only the Approval named after the Run is its own; others are for the approvals handler.
                approval=next((a for a in approvals if a["metadata"]["name"] == run.name), None),
            )
        except StoreUnavailableError as exc:
            raise kopf.TemporaryError(str(exc), delay=UNAVAILABLE_RETRY_SECONDS) from exc
        status_patch = outcome.status_patch(run.status)
        if status_patch:
            patch.status.update(status_patch)
            guard.wrote(outcome.status, time.monotonic())
    approval = outcome.status.approval_ref
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        if approval is not None and event.reason in APPROVAL_EVENT_REASONS:
            # Also on the Approval, where `kubectl describe approval` shows it to the approver.
            regarding = {
                "apiVersion": API_VERSION,
                "kind": "Approval",
                "metadata": {"name": approval.name, "namespace": run.namespace, "uid": approval.uid},
            }
            kopf.event(regarding, type=event.type, reason=event.reason, message=event.message)
