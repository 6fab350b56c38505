"""Kopf handlers for Run: thin glue between Kopf's watch events and the RunController.

A pass starts at once when a Run appears (created, or listed at operator start) or its spec
changes. A Run that is not finished — a rollout to poll, a deadline or an approval to wait
for — or whose outcome is not recorded yet is brought back by one loop for every Run
(:class:`~flywheel.controllers.driver.ObjectDriver`), not by a Kopf timer per Run: a timer is
a task and a finalizer per Run, which cost an alert storm more than the passes themselves.
Nothing here blocks: a Run that has to wait simply asks to be looked at again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import kopf

from flywheel.api.bodies import run_body
from flywheel.api.common import find_condition
from flywheel.api.enums import ConditionStatus, RunState
from flywheel.controllers.driver import ObjectDriver
from flywheel.controllers.run import (
    APPROVAL_EVENT_REASONS,
    OUTCOME_RECORDED,
    AdmittedRuns,
    RunController,
    RunGuard,
    RunObject,
    RunOutcome,
    observed_run,
)
from flywheel.domain.run_state import TERMINAL_STATES, ObservedRun, current_state
from flywheel.errors import InvalidWriteError, KubernetesApiError, StoreUnavailableError
from flywheel.handlers.driving import build_driver, retry_after, stop_driver
from flywheel.handlers.history import project
from flywheel.handlers.incident import IncidentIndex, incident_of
from flywheel.handlers.kopf_bodies import as_body
from flywheel.stores.history import HistoryKind
from flywheel.stores.kube import API_VERSION, GROUP, VERSION

if TYPE_CHECKING:
    from flywheel.wiring import Dependencies, FlywheelMemo


# How often a Run that is not finished is looked at (rollout polling, deadlines, heartbeats).
POLL_SECONDS = 2.0
# Back-off when the Kubernetes API or Redis is unavailable.
UNAVAILABLE_RETRY_SECONDS = 5.0
MEMO_RUN_DRIVER = "run_driver"

# Kopf passes indexes, `old` and `operation` as keyword arguments its callback Protocols do not
# declare, so mypy cannot match such handlers to them: the decorators below carry an ignore for it.


@kopf.index(GROUP, VERSION, "runs")
async def run_views(
    namespace: str | None, body: kopf.Body, **_: Any
) -> dict[str, ObservedRun] | None:
    """Runs by namespace: the safety limits (concurrency, circuit breaker) and the metrics without API calls."""
    if namespace is None:
        return None
    try:
        return {namespace: observed_run(run_body(body))}
    except (KeyError, ValueError):
        return None  # an invalid Run is refused by its own handler; it occupies no slot


_FINAL_STATE_NAMES = frozenset(state.value for state in TERMINAL_STATES)
# States a pass can start its Run from (admitted, or approved).
_STARTABLE_STATES = frozenset({RunState.PENDING, RunState.WAITING_APPROVAL})


def needs_driving(body: Mapping[str, Any]) -> bool:
    """Not final yet, final with an outcome still to record, or a spec this operator has not seen."""
    status = body.get("status") or {}
    if status.get("observedGeneration") != (body.get("metadata") or {}).get("generation"):
        return True
    if status.get("state") not in _FINAL_STATE_NAMES:
        return True
    recorded = next((c for c in status.get("conditions") or [] if c.get("type") == OUTCOME_RECORDED), None)
    return recorded is None or recorded.get("status") != "True"


class RunPasses:
    """One pass over a Run: reconcile, write the status patch, post the Events."""

    def __init__(
        self,
        deps: Dependencies,
        run_views: kopf.Index[str, ObservedRun],
        incident_index: IncidentIndex,
        approvals_by_run: kopf.Index[tuple[str, str], dict[str, Any]],
    ) -> None:
        self._deps = deps
        self._run_views = run_views
        self._incident_index = incident_index
        self._approvals_by_run = approvals_by_run
        self._admitted = AdmittedRuns()

    async def __call__(self, body: Mapping[str, Any], slot: dict[str, Any]) -> float | None:
        try:
            run = RunObject.from_body(run_body(body))
        except ValueError as exc:
            kopf.warn(as_body(body), reason="InvalidRun", message=f"invalid Run, not driven: {exc}")
            return None
        guard: RunGuard = slot.setdefault("guard", RunGuard())
        if guard.is_stale(run.status, time.monotonic()):
            # Our last write has not come back on the watch yet: wait for it, not act twice.
            return POLL_SECONDS
        observed = run.observed()
        # A pass that may start its Run decides and writes under the namespace's lock, so that
        # the next one counts it as started (AdmittedRuns), whatever the watch has brought back.
        may_start = observed.acts and current_state(observed.state) in _STARTABLE_STATES
        try:
            try:
                async with self._admitted.lock(run.namespace) if may_start else contextlib.nullcontext():
                    outcome = await self._reconcile(run, body, guard)
                    if may_start:
                        self._admitted.wrote(observed, outcome.status)
            except InvalidWriteError as refused:
                # Refused again however often it is retried: the Run ends instead of waiting
                # forever (a refusal of that final write stalls it, see handlers.driving).
                outcome = await self._end_refused(run, body, guard, refused)
        except (KubernetesApiError, StoreUnavailableError) as exc:
            return retry_after(exc, "Run", run.namespace, run.name, UNAVAILABLE_RETRY_SECONDS)
        self._post(body, run.namespace, outcome)
        recorded = find_condition(outcome.status.conditions, OUTCOME_RECORDED)
        if (
            outcome.status.state in TERMINAL_STATES
            and recorded is not None
            and recorded.status is ConditionStatus.TRUE
        ):
            return None
        # A verification window asks to come back when it ends (no polling while 1,000 Runs wait).
        return outcome.requeue_after if outcome.requeue_after is not None else POLL_SECONDS

    async def _reconcile(self, run: RunObject, body: Mapping[str, Any], guard: RunGuard) -> RunOutcome:
        """One pass's decisions, with its status patch written (raises if the write failed)."""
        incident = incident_of(self._incident_index, run.namespace, run.spec.incident_ref.name)
        approvals: Iterable[dict[str, Any]] = self._approvals_by_run.get((run.namespace, run.name), [])
        deps = self._deps
        controller = RunController(deps.run_policy, deps.anomalies, deps.run_stores)
        outcome = await controller.reconcile(
            run,
            incident,
            # Read in place: admission looks at the peers only for Runs that act.
            self._admitted.peers(run.namespace, self._run_views.get(run.namespace, ())),
            # Only the Approval named after the Run is its own; others are for the approvals handler.
            approval=next((a for a in approvals if a["metadata"]["name"] == run.name), None),
        )
        status_patch = outcome.status_patch(run.status)
        if status_patch:
            await deps.resources.write_status("runs", body, status_patch)
            guard.wrote(outcome.status, time.monotonic())
        return outcome

    async def _end_refused(
        self, run: RunObject, body: Mapping[str, Any], guard: RunGuard, refused: InvalidWriteError
    ) -> RunOutcome:
        deps = self._deps
        outcome = RunController(deps.run_policy, deps.anomalies, deps.run_stores).refused(run, refused)
        status_patch = outcome.status_patch(run.status)
        if not status_patch:
            raise refused  # final already: the refused write was of its outcome; stalled, not retried
        await deps.resources.write_status("runs", body, status_patch)
        guard.wrote(outcome.status, time.monotonic())
        return outcome

    @staticmethod
    def _post(body: Mapping[str, Any], namespace: str, outcome: RunOutcome) -> None:
        approval = outcome.status.approval_ref
        regarding_run = dict(body)
        for event in outcome.events_to_post():
            kopf.event(as_body(regarding_run), type=event.type, reason=event.reason, message=event.message)
            if approval is not None and event.reason in APPROVAL_EVENT_REASONS:
                # Also on the Approval, where `kubectl describe approval` shows it to the approver.
                regarding = {
                    "apiVersion": API_VERSION,
                    "kind": "Approval",
                    "metadata": {"name": approval.name, "namespace": namespace, "uid": approval.uid},
                }
                kopf.event(as_body(regarding), type=event.type, reason=event.reason, message=event.message)


@kopf.on.startup()  # type: ignore[arg-type]
async def start_run_driver(
    memo: FlywheelMemo,
    run_views: kopf.Index[str, ObservedRun],
    incident_index: IncidentIndex,
    approvals_by_run: kopf.Index[tuple[str, str], dict[str, Any]],
    **_: Any,
) -> None:
    deps = memo.deps
    memo[MEMO_RUN_DRIVER] = build_driver(
        memo, "runs", RunPasses(deps, run_views, incident_index, approvals_by_run)
    )


@kopf.on.cleanup()
async def stop_run_driver(memo: kopf.Memo, **_: Any) -> None:
    await stop_driver(memo, MEMO_RUN_DRIVER)


@kopf.on.event(GROUP, VERSION, "runs", id="drive-runs")
async def run_changed(event: kopf.RawEvent, memo: FlywheelMemo, **_: Any) -> None:
    driver: ObjectDriver = memo[MEMO_RUN_DRIVER]
    project(HistoryKind.RUN, event, memo)
    body = event["object"]
    uid = body["metadata"]["uid"]
    if event["type"] == "DELETED" or not needs_driving(body):
        driver.forget(uid)
        return
    # Started from a handler so that its passes can post Events through Kopf (its context).
    driver.start()
    tracked = driver.observe(body)
    status = body.get("status") or {}
    spec_changed = status.get("observedGeneration") != body["metadata"].get("generation")
    if not tracked or spec_changed or event["type"] in (None, "ADDED"):
        await driver.drive(body)
