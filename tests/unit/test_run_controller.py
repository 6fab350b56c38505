"""The RunController's passes, driven with a clock and in-memory stand-ins for its stores.

The stand-ins implement the controller's own store interfaces (WorkloadActions,
IncidentStatusWriter, RepairRecorder) over plain dicts; the real stores are exercised
against the real API server in tests/e2e/test_runs.py.

Scenario matrix:
- the happy path pass by pass: admit → execute → verify → Succeeded, Incident resolved
  (auto_repair, or human_approved with an approvalRef), repair attempt and disposition
  recorded, attempts handed to the history;
- a verification that never completes: retry, then Failed E-VERIFY-TIMEOUT, and the
  Incident (still open) is told once: Resolved=False NotRemediated, retried while its store
  is down, never written when it is final or a Duplicate;
- deadlines: a Pending Run throttled past its deadline times out (E-RUN-TIMEOUT); a
  Verifying Run abandoned across a restart is reaped (E-RUN-STALE);
- failures: 403 → Failed E-ACTION-FORBIDDEN; API unavailable → still Running, retried;
  rollback without history → E-ACTION-NOT-APPLICABLE;
- cancellation: Incident gone, recreated with another uid, or remediation Off;
- outcome recording retried while Redis is down; an Incident resolved by a person keeps
  its disposition; Shadow runs record nothing;
- a Run moved to Running by someone else (an approval) starts its attempt;
- heartbeats, the merge patch (changed fields only, deletions as null) and the RunGuard;
- AdmittedRuns: a Run started within the watch lag counts for the next admission, until
  the index catches up or the Run is gone.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flywheel.api.common import ObjectRef
from flywheel.api.enums import ActionType, Disposition, RunMode, RunState, TargetKind
from flywheel.api.names import Event
from flywheel.api.run import RunStatus
from flywheel.controllers.run import (
    GUARD_PATIENCE_SECONDS,
    HEARTBEAT_INTERVAL,
    AdmittedRuns,
    AttemptRecord,
    RunController,
    RunGuard,
    RunObject,
    RunOutcome,
    RunStores,
    resolution_patch,
)
from flywheel.domain.actions import ProposedAction
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import (
    ActionNotApplicableError,
    AdmissionKind,
    ObservedRun,
    RolloutFacts,
    SafetyLimits,
    admit,
)
from flywheel.errors import KubernetesApiError, RedisUnavailableError, StoreUnavailableError
from flywheel.settings import FlywheelSettings
from flywheel.stores.incidents import StatusMutation, StatusUpdate, UpdateResult
from flywheel.stores.workloads import ActionResult, ActionStamp
from flywheel.wiring import run_policy

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NAMESPACE = "shop"
INCIDENT_UID = "incident-uid-1"
RUN_UID = "run-uid-1"
KEY = "0123456789abcdef"


# --------------------------------------------------------------------------- stand-ins


class Workloads:
    """Applies actions to an in-memory workload and reports whatever rollout it is told."""

    def __init__(self) -> None:
        self.applied: list[tuple[ProposedAction, ActionStamp, bool]] = []
        self.stamps: set[tuple[str, int]] = set()
        self.facts = RolloutFacts(
            generation=2, observed_generation=2, desired=1, total=1, updated=1, ready=1, available=1
        )
        self.apply_error: Exception | None = None

    async def apply(
        self, namespace: str, action: ProposedAction, stamp: ActionStamp, *, dry_run: bool, max_replicas: int
    ) -> ActionResult:
        if self.apply_error is not None:
            raise self.apply_error
        already = (stamp.run_uid, stamp.attempt) in self.stamps
        if not dry_run and not already:
            self.stamps.add((stamp.run_uid, stamp.attempt))
            self.applied.append((action, stamp, dry_run))
        summary = f"would {action.describe()}" if dry_run else action.describe()
        return ActionResult(
            changed=not already,
            already_applied=already,
            dry_run=dry_run,
            summary=summary,
            generation_before=1,
            generation_after=2,
        )

    async def rollout(self, namespace: str, kind: TargetKind, name: str) -> RolloutFacts:
        return self.facts


class Incidents:
    def __init__(self, body: dict[str, Any] | None) -> None:
        self.body = body
        self.fail_next: Exception | None = None
        self.writes = 0

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.body)

    async def update_status(
        self, namespace: str, name: str, uid: str, mutation: StatusMutation
    ) -> StatusUpdate:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        if self.body is None or self.body["metadata"]["uid"] != uid:
            return StatusUpdate(UpdateResult.GONE, self.body)
        patch = mutation(copy.deepcopy(self.body))
        if patch is None:
            return StatusUpdate(UpdateResult.UNCHANGED, self.body)
        self.writes += 1
        status = self.body.setdefault("status", {})
        for key, value in patch["status"].items():
            if isinstance(value, dict) and isinstance(status.get(key), dict):
                status[key].update(value)
            else:
                status[key] = value
        return StatusUpdate(UpdateResult.UPDATED, copy.deepcopy(self.body))


class Repairs:
    def __init__(self) -> None:
        self.attempts: dict[str, tuple[str, bool]] = {}
        self.dispositions: dict[str, str] = {}
        self.down = False

    async def record_repair_attempt(
        self, tenant: str, key: str, action: str, success: bool, attempt_id: str, at: datetime
    ) -> bool:
        if self.down:
            raise RedisUnavailableError("Redis is down")
        new = attempt_id not in self.attempts
        self.attempts.setdefault(attempt_id, (action, success))
        return new

    async def record_disposition(
        self, tenant: str, key: str, disposition: str, disposition_id: str, at: datetime | None = None
    ) -> bool:
        if self.down:
            raise RedisUnavailableError("Redis is down")
        new = disposition_id not in self.dispositions
        self.dispositions.setdefault(disposition_id, disposition)
        return new


class Attempts:
    def __init__(self) -> None:
        self.records: list[AttemptRecord] = []

    def record_attempt(self, record: AttemptRecord) -> None:
        self.records.append(record)


IN_PROGRESS = RolloutFacts(
    generation=2, observed_generation=1, desired=1, total=1, updated=0, ready=0, available=0
)
DONE = RolloutFacts(generation=2, observed_generation=2, desired=1, total=1, updated=1, ready=1, available=1)


def incident_body(mode: str = "Auto", uid: str = INCIDENT_UID, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "checkout-oom", "namespace": NAMESPACE, "uid": uid, "generation": 1,
                     "creationTimestamp": T0.isoformat()},
        "spec": {"remediation": {"mode": mode}},
        "status": {
            "phase": "Mitigating",
            "anomaly": {"key": KEY},
            "decision": {"id": "DEC-0123456789ab", "state": "Ready"},
            **status,
        },
    }


def run_body(**spec: Any) -> dict[str, Any]:
    body = {
        "metadata": {
            "name": "checkout-oom-1",
            "namespace": NAMESPACE,
            "uid": RUN_UID,
            "generation": 1,
            "creationTimestamp": T0.isoformat(),
            "labels": {"flywheel.dev/anomaly-key": KEY},
        },
        "spec": {
            "incidentRef": {"name": "checkout-oom", "uid": INCIDENT_UID},
            "action": {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "checkout"}},
            "riskLevel": "medium",
            "requiresApproval": False,
            "mode": "Auto",
            "timeoutSeconds": 600,
            "maxAttempts": 2,
            "traceId": "0af7651916cd43dd8448eb211c80319c",
        },
        "status": {},
    }
    body["spec"].update(spec)
    return body


class Harness:
    """A Run, its stores and a clock; ``step()`` runs one pass and stores its status."""

    def __init__(
        self, body: dict[str, Any] | None = None, incident: dict[str, Any] | None = None, **settings: Any
    ) -> None:
        self.body = body or run_body()
        self.workloads = Workloads()
        self.incidents = Incidents(incident if incident is not None else incident_body())
        self.repairs = Repairs()
        self.attempts = Attempts()
        self.peers: list[ObservedRun] = []
        self.now = T0
        self.controller = RunController(
            run_policy(FlywheelSettings(**settings)),
            self.repairs,
            RunStores(workloads=self.workloads, incidents=self.incidents, attempts=self.attempts),
        )
        self.outcomes: list[RunOutcome] = []

    @property
    def status(self) -> RunStatus:
        return RunStatus.model_validate(self.body["status"])

    async def step(self, seconds: float = 0) -> RunStatus:
        self.now += timedelta(seconds=seconds)
        run = RunObject.from_body(self.body)
        view = IncidentView.from_body(self.incidents.body) if self.incidents.body is not None else None
        outcome = await self.controller.reconcile(run, view, self.peers, now=self.now)
        patch = outcome.status_patch(run.status)
        for key, value in patch.items():
            if value is None:
                self.body["status"].pop(key, None)
            else:
                self.body["status"][key] = value
        self.outcomes.append(outcome)
        return self.status

    def events(self) -> list[str]:
        return [event.reason for outcome in self.outcomes for event in outcome.events]


def condition(status: RunStatus, condition_type: str) -> tuple[str, str]:
    found = next(c for c in status.conditions if c.type == condition_type)
    return found.status.value, found.reason


# --------------------------------------------------------------------------- scenarios


async def test_happy_path_pass_by_pass() -> None:
    h = Harness()
    status = await h.step()
    assert (status.state, status.attempt, status.started_at) == (RunState.RUNNING, 1, T0)
    assert status.timeout_at == T0 + timedelta(seconds=300), "half the Run's time for each of two attempts"
    assert h.workloads.applied == [], "nothing is done before startedAt is stored"
    assert condition(status, "Succeeded") == ("Unknown", "Running")

    h.workloads.facts = IN_PROGRESS
    status = await h.step(2)
    assert status.state is RunState.VERIFYING
    assert len(h.workloads.applied) == 1
    assert condition(status, "Succeeded") == ("Unknown", "Verifying")

    h.workloads.facts = DONE
    status = await h.step(2)
    assert status.state is RunState.SUCCEEDED
    assert status.completed_at == T0 + timedelta(seconds=4)
    assert status.timeout_at is None and status.error_code is None
    assert [(s.seq, s.name, s.result) for s in status.steps] == [
        (1, "admit", "Succeeded"),
        (2, "execute", "Succeeded"),
        (3, "verify", "Succeeded"),
    ]
    assert [s.latency_ms for s in status.steps] == [None, 2000, 2000]
    assert condition(status, "Succeeded") == ("True", "Succeeded")
    assert condition(status, "OutcomeRecorded") == ("True", "Recorded")
    assert h.repairs.attempts == {f"{RUN_UID}:1": ("RolloutRestart", True)}
    assert h.repairs.dispositions == {f"{INCIDENT_UID}:auto_repair": "auto_repair"}
    incident = h.incidents.body
    assert incident is not None
    assert (incident["status"]["phase"], incident["status"]["disposition"]) == ("Resolved", "auto_repair")
    assert incident["status"]["decision"]["state"] == "Completed"
    assert incident["status"]["decision"]["id"] == "DEC-0123456789ab", "the rest of the decision is kept"
    resolved = incident["status"]["conditions"][0]
    assert (resolved["type"], resolved["status"], resolved["reason"]) == ("Resolved", "True", "AutoRepaired")
    assert h.events() == ["Started", "ActionApplied", "Succeeded", "IncidentResolved"]
    assert [(r.attempt, r.succeeded, r.error_code) for r in h.attempts.records] == [(1, True, None)]
    assert h.attempts.records[0].latency_ms == 4000

    # Finished and recorded: further passes change nothing and count nothing twice.
    before = copy.deepcopy(h.body["status"])
    await h.step(60)
    assert h.body["status"] == before
    assert len(h.repairs.attempts) == 1 and len(h.attempts.records) == 1


async def test_an_approved_run_resolves_the_incident_as_human_approved() -> None:
    h = Harness()
    h.body["status"] = {"state": "Running", "approvalRef": {"name": "checkout-oom-1", "uid": "appr-1"}}
    h.workloads.facts = IN_PROGRESS
    status = await h.step()
    assert (status.state, status.attempt, status.started_at) == (RunState.VERIFYING, 1, T0), (
        "moved to Running by an approval: the attempt starts and the action runs"
    )
    h.workloads.facts = DONE
    assert (await h.step(2)).state is RunState.SUCCEEDED
    assert h.incidents.body is not None and h.incidents.body["status"]["disposition"] == "human_approved"
    assert h.repairs.dispositions == {f"{INCIDENT_UID}:human_approved": "human_approved"}


async def test_verification_that_never_completes_retries_then_fails() -> None:
    h = Harness(run_body(timeoutSeconds=20, maxAttempts=2))
    h.workloads.facts = RolloutFacts(
        generation=2, observed_generation=2, desired=1, total=2, updated=1, ready=1, available=1
    )
    await h.step()
    status = await h.step(1)
    assert status.state is RunState.VERIFYING and status.timeout_at == T0 + timedelta(seconds=10)
    status = await h.step(8)
    assert status.state is RunState.VERIFYING, "before the attempt's deadline it waits"
    status = await h.step(1)
    assert (status.state, status.attempt) == (RunState.VERIFYING, 2), "retried and re-executed in one pass"
    assert status.timeout_at == T0 + timedelta(seconds=20)
    assert len(h.workloads.applied) == 2
    status = await h.step(10)
    assert (status.state, status.error_code) == (RunState.FAILED, "E-VERIFY-TIMEOUT")
    assert condition(status, "Succeeded") == ("False", "VerifyTimeout")
    assert [s.name for s in status.steps] == ["admit", "execute", "retry", "execute", "verify"]
    assert h.repairs.attempts == {f"{RUN_UID}:2": ("RolloutRestart", False)}
    assert h.incidents.body is not None and h.incidents.body["status"]["phase"] == "Mitigating"
    assert [(r.attempt, r.succeeded, r.error_code) for r in h.attempts.records] == [
        (1, False, "E-VERIFY-TIMEOUT"),
        (2, False, "E-VERIFY-TIMEOUT"),
    ]
    assert "Retrying" in h.events() and "Failed" in h.events()
    told = resolved_condition(h)
    assert (told["status"], told["reason"]) == ("False", "NotRemediated")
    assert told["message"].startswith("Run checkout-oom-1 failed: E-VERIFY-TIMEOUT: ")
    assert "its decision is completed" in told["message"]
    assert h.events()[-1] == "IncidentNotRemediated"
    assert condition(status, "OutcomeRecorded") == ("True", "Recorded")


def resolved_condition(h: Harness) -> dict[str, Any]:
    assert h.incidents.body is not None
    return next(c for c in h.incidents.body["status"]["conditions"] if c["type"] == "Resolved")


async def test_the_incident_is_told_once_and_only_while_it_is_open() -> None:
    h = Harness(run_body(timeoutSeconds=60))
    h.peers = [
        ObservedRun(
            NAMESPACE, "other-1", "other-uid", T0, TargetKind.DEPLOYMENT, "checkout", RunMode.AUTO, False,
            RunState.RUNNING, T0,
        )
    ]
    await h.step()
    h.incidents.fail_next = StoreUnavailableError("API down")
    status = await h.step(60)
    assert status.state is RunState.TIMED_OUT
    assert condition(status, "OutcomeRecorded") == ("False", "Retrying"), "the Incident still has to be told"
    assert "Resolved" not in {c["type"] for c in (h.incidents.body or {})["status"].get("conditions", [])}
    status = await h.step(2)
    assert condition(status, "OutcomeRecorded") == ("True", "NothingToRecord")
    told = resolved_condition(h)
    assert told["reason"] == "NotRemediated" and "timed out: E-RUN-TIMEOUT" in told["message"]
    writes = h.incidents.writes
    await h.step(2)
    assert h.incidents.writes == writes and h.events().count("IncidentNotRemediated") == 1

    for phase in ("Resolved", "Closed", "Duplicate"):
        final = Harness(run_body(timeoutSeconds=60), incident=incident_body(phase=phase))
        final.peers = h.peers
        await final.step()
        status = await final.step(60)
        assert status.state is RunState.TIMED_OUT
        assert final.incidents.writes == 0, phase
        assert "IncidentNotRemediated" not in final.events()


async def test_a_failed_rollout_fails_without_waiting_for_the_deadline() -> None:
    h = Harness(run_body(maxAttempts=1))
    h.workloads.facts = RolloutFacts(
        generation=2,
        observed_generation=2,
        desired=1,
        total=2,
        updated=1,
        ready=0,
        available=0,
        failure_reason="ProgressDeadlineExceeded: too slow",
    )
    await h.step()
    status = await h.step(1)
    assert (status.state, status.error_code) == (RunState.FAILED, "E-ROLLOUT-FAILED")


async def test_a_throttled_run_waits_then_times_out() -> None:
    h = Harness(run_body(timeoutSeconds=60))
    busy = ObservedRun(
        NAMESPACE,
        "other-1",
        "other-uid",
        T0 - timedelta(minutes=1),
        TargetKind.DEPLOYMENT,
        "checkout",
        RunMode.AUTO,
        False,
        RunState.VERIFYING,
        T0,
    )
    h.peers = [busy]
    status = await h.step()
    assert status.state is RunState.PENDING
    assert condition(status, "Throttled") == ("True", "TargetLimitReached")
    assert [s.name for s in status.steps] == ["throttle"]
    assert status.timeout_at == T0 + timedelta(seconds=60)
    status = await h.step(30)
    assert len(status.steps) == 1, "the throttle step is journaled once"
    status = await h.step(30)
    assert (status.state, status.error_code) == (RunState.TIMED_OUT, "E-RUN-TIMEOUT")
    assert condition(status, "Throttled") == ("False", "Finished")
    assert condition(status, "OutcomeRecorded") == ("True", "NothingToRecord")
    assert h.workloads.applied == [] and h.repairs.attempts == {}
    assert h.events() == ["Throttled", "TimedOut", "IncidentNotRemediated"]


async def test_a_run_abandoned_across_a_restart_is_reaped_as_stale() -> None:
    h = Harness()
    h.workloads.facts = IN_PROGRESS
    await h.step()
    status = await h.step(1)
    assert status.state is RunState.VERIFYING and status.heartbeat_at == T0
    # The operator is gone for an hour; the Run's ten minutes pass without a heartbeat.
    status = await h.step(3600)
    assert (status.state, status.error_code) == (RunState.TIMED_OUT, "E-RUN-STALE")
    assert status.steps[-1].name == "reap"
    assert h.repairs.attempts == {f"{RUN_UID}:1": ("RolloutRestart", False)}


async def test_heartbeats_while_executing() -> None:
    h = Harness()
    h.workloads.facts = IN_PROGRESS
    status = await h.step()
    assert status.heartbeat_at == T0, "an attempt starts with a heartbeat"
    status = await h.step(HEARTBEAT_INTERVAL.total_seconds() - 1)
    assert status.state is RunState.VERIFYING
    assert status.heartbeat_at == T0, "no write just for a heartbeat before the interval"
    status = await h.step(1)
    assert status.heartbeat_at == h.now == T0 + HEARTBEAT_INTERVAL


@pytest.mark.parametrize(
    ("error", "state", "code"),
    [
        (KubernetesApiError("forbidden", status=403), RunState.FAILED, "E-ACTION-FORBIDDEN"),
        (KubernetesApiError("gone", status=404), RunState.FAILED, "E-TARGET-NOT-FOUND"),
        (ActionNotApplicableError("no revision before 1"), RunState.FAILED, "E-ACTION-NOT-APPLICABLE"),
        (StoreUnavailableError("API down"), RunState.RUNNING, None),
        (KubernetesApiError("conflicts", status=409), RunState.RUNNING, None),
    ],
)
async def test_action_failures_are_classified(error: Exception, state: RunState, code: str | None) -> None:
    h = Harness()
    await h.step()
    h.workloads.apply_error = error
    status = await h.step(2)
    assert (status.state, status.error_code) == (state, code)
    if code is None:
        assert condition(status, "Succeeded") == ("Unknown", "ActionRetrying")
        h.workloads.apply_error = None
        assert (await h.step(2)).state is RunState.SUCCEEDED, "applied on the next pass, then verified"
    else:
        assert status.error_detail and str(error) in status.error_detail


@pytest.mark.parametrize(
    ("incident", "words"),
    [
        (None, "no longer exists"),
        (incident_body(uid="another-uid"), "another uid"),
        (incident_body(mode="Off"), "remediation Off"),
    ],
)
async def test_runs_are_cancelled_when_their_incident_goes_away(
    incident: dict[str, Any] | None, words: str
) -> None:
    h = Harness()
    await h.step()
    h.incidents.body = incident
    status = await h.step(1)
    assert (status.state, status.error_code) == (RunState.CANCELLED, "E-CANCELLED")
    assert status.error_detail and words in status.error_detail
    assert h.workloads.applied == [] and h.repairs.attempts == {}
    assert condition(status, "OutcomeRecorded") == ("True", "NothingToRecord")


async def test_outcome_recording_waits_for_redis() -> None:
    h = Harness()
    h.workloads.facts = IN_PROGRESS
    await h.step()
    await h.step(1)
    h.repairs.down = True
    h.workloads.facts = DONE
    status = await h.step(1)
    assert status.state is RunState.SUCCEEDED
    assert condition(status, "OutcomeRecorded") == ("False", "Retrying")
    assert h.incidents.body is not None and h.incidents.body["status"]["phase"] == "Resolved", (
        "the Incident does not wait for Redis"
    )
    h.repairs.down = False
    status = await h.step(2)
    assert condition(status, "OutcomeRecorded") == ("True", "Recorded")
    assert set(h.repairs.attempts) == {f"{RUN_UID}:1"}
    assert h.repairs.dispositions == {f"{INCIDENT_UID}:auto_repair": "auto_repair"}


async def test_an_incident_resolved_by_a_person_keeps_its_disposition() -> None:
    h = Harness(incident=incident_body(phase="Resolved", disposition="manual_resolved"))
    h.incidents.body["status"]["phase"] = "Resolved"  # type: ignore[index]
    await h.step()
    await h.step(1)
    status = await h.step(1)
    assert status.state is RunState.SUCCEEDED
    assert h.incidents.body is not None and h.incidents.body["status"]["disposition"] == "manual_resolved"
    assert h.repairs.dispositions == {}
    assert set(h.repairs.attempts) == {f"{RUN_UID}:1"}, "the repair still counts"


async def test_shadow_runs_dry_run_and_record_nothing() -> None:
    h = Harness(run_body(mode="Shadow"))
    status = await h.step()
    assert status.state is RunState.SUCCEEDED, "a dry run changes nothing: one pass, one status write"
    assert [(s.name, s.result) for s in status.steps] == [
        ("admit", "Succeeded"),
        ("dry-run", "WouldChange"),
        ("verify", "Skipped"),
    ]
    assert status.steps[1].message is not None and status.steps[1].message.startswith("would ")
    assert h.workloads.applied == [] and h.repairs.attempts == {} and h.repairs.dispositions == {}
    assert h.incidents.body is not None and h.incidents.body["status"]["phase"] == "Mitigating"
    assert [r.shadow for r in h.attempts.records] == [True]
    posted = h.outcomes[0].events_to_post()
    assert [(e.type, e.reason) for e in posted] == [("Normal", "Succeeded")], "one Event write for the whole pass"
    assert "would " in posted[0].message and posted[0].message.index("attempt 1") < posted[0].message.index("would ")


def test_warnings_and_approval_events_are_never_merged() -> None:
    outcome = RunOutcome(
        status=RunStatus(),
        events=[
            Event("Normal", "Started", "restart (attempt 1)"),
            Event("Warning", "CircuitBreakerOpen", "too many"),
            Event("Normal", "ApprovalRequested", "Approval x waits"),
            Event("Normal", "Throttled", "no slot"),
        ],
    )
    assert [(e.reason, e.message) for e in outcome.events_to_post()] == [
        ("CircuitBreakerOpen", "too many"),
        ("ApprovalRequested", "Approval x waits"),
        ("Throttled", "restart (attempt 1); no slot"),
    ]
    finishing = RunOutcome(
        status=RunStatus(),
        events=[Event("Normal", "Succeeded", "rolled out"), Event("Normal", "IncidentResolved", "auto_repair")],
    )
    assert [(e.reason, e.message) for e in finishing.events_to_post()] == [
        ("Succeeded", "rolled out; auto_repair")
    ], "the merged Event is named after the state the Run ended in"


async def test_approval_required_and_the_circuit_breaker_wait_in_waiting_approval() -> None:
    h = Harness(run_body(requiresApproval=True))
    status = await h.step()
    assert status.state is RunState.WAITING_APPROVAL
    assert condition(status, "AwaitingApproval") == ("True", "ApprovalRequired")
    assert status.timeout_at is not None, "the Run's own approval deadline"
    status = await h.step(3599)
    assert status.state is RunState.WAITING_APPROVAL, "the Run's approval deadline governs the wait, not timeoutSeconds"
    status = await h.step(1)
    assert (status.state, status.error_code) == (RunState.TIMED_OUT, "E-APPR-EXPIRED"), "its own deadline"

    breaker = Harness(circuit_breaker_max_remediations=1)
    breaker.peers = [
        ObservedRun(
            NAMESPACE,
            "earlier",
            "earlier-uid",
            T0 - timedelta(minutes=5),
            TargetKind.DEPLOYMENT,
            "checkout",
            RunMode.AUTO,
            False,
            RunState.SUCCEEDED,
            T0 - timedelta(minutes=4),
        )
    ]
    status = await breaker.step()
    assert status.state is RunState.WAITING_APPROVAL
    assert condition(status, "AwaitingApproval") == ("True", "CircuitBreakerOpen")
    assert breaker.events() == ["CircuitBreakerOpen"]


async def test_a_run_left_executing_resumes_from_its_stamp() -> None:
    h = Harness()
    h.workloads.facts = IN_PROGRESS
    await h.step()
    assert (await h.step(1)).state is RunState.VERIFYING
    h.body["status"]["state"] = "Running"  # the write of "Verifying" was lost
    status = await h.step(1)
    assert status.state is RunState.VERIFYING
    assert [s.result for s in status.steps if s.name == "execute"] == ["Succeeded", "AlreadyApplied"]
    assert len(h.workloads.applied) == 1


# --------------------------------------------------------------------------- pieces


def test_the_status_patch_holds_changed_fields_and_deletes_unset_ones() -> None:
    before = RunStatus.model_validate({"state": "Verifying", "timeoutAt": T0.isoformat(), "attempt": 1})
    after = before.model_copy(update={"state": RunState.SUCCEEDED, "timeout_at": None, "completed_at": T0})
    patch = RunOutcome(status=after).status_patch(before)
    assert patch == {
        "state": "Succeeded",
        "timeoutAt": None,
        "completedAt": after.model_dump(mode="json", by_alias=True)["completedAt"],
    }
    assert RunOutcome(status=before).status_patch(before) == {}


def test_the_guard_skips_bodies_older_than_its_own_write_for_a_while() -> None:
    guard = RunGuard()
    old = RunStatus.model_validate(
        {"steps": [{"seq": 1, "name": "admit", "result": "Succeeded", "at": T0.isoformat()}]}
    )
    new = RunStatus.model_validate(
        {
            "steps": [
                *old.model_dump(mode="json", by_alias=True)["steps"],
                {"seq": 2, "name": "execute", "result": "Succeeded", "at": T0.isoformat()},
            ]
        }
    )
    assert not guard.is_stale(old, 100.0)
    guard.wrote(new, 100.0)
    assert guard.is_stale(old, 100.5)
    assert not guard.is_stale(new, 100.5)
    assert not guard.is_stale(old, 100.0 + GUARD_PATIENCE_SECONDS), "a lost write is not waited for forever"


ONE_PER_TARGET = SafetyLimits(
    max_running_per_namespace=5,
    max_running_per_target=1,
    breaker_max_remediations=10,
    breaker_window=timedelta(hours=1),
)


def pending_on_web(name: str) -> ObservedRun:
    """An Auto Run on Deployment/web as the index has it before its first pass."""
    return ObservedRun(
        NAMESPACE, name, f"uid-{name}", T0, TargetKind.DEPLOYMENT, "web", RunMode.AUTO, False, None, None
    )


def started() -> RunStatus:
    return RunStatus(state=RunState.RUNNING, started_at=T0)


def test_a_run_started_within_the_watch_lag_counts_for_the_next_admission() -> None:
    first, second = pending_on_web("cart-b-1"), pending_on_web("cart-a-1")
    # Created in the same second, "cart-a-1" queues ahead by name: with only the index to go
    # by, it would start next to the Run just started before the watch brings that write back.
    assert admit(second, [first, second], ONE_PER_TARGET, T0).kind is AdmissionKind.ADMIT
    admitted = AdmittedRuns()
    # The first one was passed before the second existed.
    assert admit(first, admitted.peers(NAMESPACE, [first]), ONE_PER_TARGET, T0).kind is AdmissionKind.ADMIT
    admitted.wrote(first, started())

    admission = admit(second, admitted.peers(NAMESPACE, [first, second]), ONE_PER_TARGET, T0)
    assert (admission.kind, admission.reason) == (AdmissionKind.THROTTLE, "TargetLimitReached")
    assert "1 Runs executing" in admission.message
    other_namespace = ObservedRun(
        "other", "x-1", "uid-x", T0, TargetKind.DEPLOYMENT, "web", RunMode.AUTO, False, None, None
    )
    assert list(admitted.peers("other", [other_namespace])) == [other_namespace]


def test_the_written_view_gives_way_once_the_index_moves_on_or_the_run_is_gone() -> None:
    first, second = pending_on_web("cart-b-1"), pending_on_web("cart-a-1")
    admitted = AdmittedRuns()
    admitted.wrote(first, started())
    finished = ObservedRun(
        NAMESPACE, first.name, first.uid, T0, TargetKind.DEPLOYMENT, "web", RunMode.AUTO, False,
        RunState.SUCCEEDED, T0,
    )
    assert list(admitted.peers(NAMESPACE, [finished, second])) == [finished, second]
    assert admit(second, admitted.peers(NAMESPACE, [first, second]), ONE_PER_TARGET, T0).kind is (
        AdmissionKind.ADMIT
    ), "once the index caught up, an old body of the Run is taken as it is"

    admitted.wrote(first, started())
    assert list(admitted.peers(NAMESPACE, [second])) == [second]
    assert list(admitted.peers(NAMESPACE, [first, second])) == [first, second], "a deleted Run is forgotten"


def test_a_pass_that_keeps_the_state_leaves_the_index_as_it_is() -> None:
    waiting = pending_on_web("cart-a-1")
    admitted = AdmittedRuns()
    admitted.wrote(waiting, RunStatus(state=None))
    indexed = [waiting]
    assert admitted.peers(NAMESPACE, indexed) is indexed
    assert admitted.lock(NAMESPACE) is admitted.lock(NAMESPACE)
    assert admitted.lock(NAMESPACE) is not admitted.lock("other")


def test_resolution_patch_leaves_final_incidents_alone_and_keeps_other_conditions() -> None:
    ref = ObjectRef(name="checkout-oom-1", uid=RUN_UID)
    closed = incident_body(phase="Closed")
    assert (
        resolution_patch(closed, run_ref=ref, disposition=Disposition.AUTO_REPAIR, message="m", now=T0)
        is None
    )
    active = incident_body(
        conditions=[
            {
                "type": "Decided",
                "status": "True",
                "reason": "DecisionReady",
                "message": "",
                "lastTransitionTime": T0.isoformat(),
            }
        ]
    )
    patch = resolution_patch(
        active, run_ref=ref, disposition=Disposition.AUTO_REPAIR, message="ok", now=T0 + timedelta(minutes=1)
    )
    assert patch is not None
    status: Mapping[str, Any] = patch["status"]
    assert [c["type"] for c in status["conditions"]] == ["Decided", "Resolved"]
    assert status["runRef"] == {"name": "checkout-oom-1", "uid": RUN_UID}
    assert status["resolvedAt"] == "2025-03-01T12:01:00Z"


def test_an_action_is_built_from_the_run_spec() -> None:
    run = RunObject.from_body(
        run_body(
            action={
                "type": "Scale",
                "target": {"kind": "StatefulSet", "name": "db"},
                "params": {"replicas": 3},
            }
        )
    )
    assert run.action == ProposedAction(ActionType.SCALE, TargetKind.STATEFULSET, "db", replicas=3)
    assert run.observed().target == (NAMESPACE, TargetKind.STATEFULSET, "db")
