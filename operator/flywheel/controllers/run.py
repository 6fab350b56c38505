"""Driving one Run through its state machine: admit, execute once, verify, finish.

Level-triggered: each pass reads the Run as stored, looks at the world (its Incident,
its peers, the workload's rollout) and computes the next status; the handler writes it
as one merge patch. Any pass may run twice or die half-way:

- the action is stamped on the workload with the Run's uid and attempt and applied with
  a resourceVersion precondition (``flywheel.stores.workloads``), so it happens at most
  once per attempt;
- ``startedAt`` is stored (state Running) before the first action is attempted;
- repair attempts and dispositions carry idempotency ids in Redis, and the Incident is
  only resolved if it is not already, so finishing twice counts once;
- within one process, passes over a Run never overlap (``flywheel.controllers.driver``), and
  :class:`RunGuard` skips a pass that sees a status older than one this process already
  wrote (the watch event that brings the write back may lag behind the next pass);
- the safety limits count the peers as this process last wrote them
  (:class:`AdmittedRuns`), so two Runs on one target are never started in the same
  watch lag.

The decisions themselves are pure, in :mod:`flywheel.domain.run_state`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from flywheel.api.common import ObjectRef, find_condition, new_condition, set_condition
from flywheel.api.enums import (
    ActionType,
    ConditionStatus,
    DecisionState,
    Disposition,
    IncidentPhase,
    RemediationMode,
    RunMode,
    RunState,
    TargetKind,
)
from flywheel.api.incident import IncidentStatus
from flywheel.api.run import RunSpec, RunStatus, RunStep, append_step
from flywheel.controllers.approval import ApprovalGate, GateRun, GateState
from flywheel.controllers.incident import (
    EVENT_MESSAGE_LIMIT,
    FINAL_PHASES,
    LABEL_ANOMALY_KEY,
    RESOLVED,
    Event,
)
from flywheel.domain.actions import ProposedAction
from flywheel.domain.approval import TokenRefused
from flywheel.domain.run_state import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    ActionNotApplicableError,
    AdmissionKind,
    FailureClass,
    NextStep,
    ObservedRun,
    RolloutFacts,
    RunErrorCode,
    SafetyLimits,
    admit,
    attempt_deadline,
    check_transition,
    classify_api_status,
    classify_rollout,
    condition_reason,
    current_state,
    overdue,
    run_deadline,
    verification_outcome,
)
from flywheel.errors import FlywheelError, KubernetesApiError, RedisUnavailableError, StoreUnavailableError
from flywheel.logs import get_logger
from flywheel.settings import FlywheelSettings
from flywheel.stores.incidents import StatusMutation, StatusUpdate, UpdateResult
from flywheel.stores.workloads import ActionResult, ActionStamp

log = get_logger(__name__)

# A Running or Verifying Run writes status.heartbeatAt at least this often.
HEARTBEAT_INTERVAL = timedelta(seconds=10)
# No sign of life for this long before the deadline: the Run was abandoned, not slow.
STALE_AFTER = timedelta(seconds=30)
# How long a pass waits for a status this process wrote before trusting what it reads.
GUARD_PATIENCE_SECONDS = 10.0
# Transitions chained within one pass (Verifying → Running → Verifying for a retry).
MAX_HOPS = 4

# Transitions out of Running/Verifying that decide an attempt (Running again: the next attempt).
_ATTEMPT_ENDS = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.TIMED_OUT, RunState.RUNNING})

# Condition types on a Run.
SUCCEEDED = "Succeeded"  # Unknown while in flight, True / False once final
THROTTLED = "Throttled"
AWAITING_APPROVAL = "AwaitingApproval"
OUTCOME_RECORDED = "OutcomeRecorded"
# The reason of the Incident's condition Resolved=False once its Run ended without remediating it.
NOT_REMEDIATED = "NotRemediated"
# Final states of a Run that leave its Incident to a person.
UNREMEDIATED_STATES = frozenset({RunState.FAILED, RunState.TIMED_OUT})

# Journal step names.
STEP_ADMIT = "admit"
STEP_THROTTLE = "throttle"
STEP_AWAIT_APPROVAL = "await-approval"
STEP_EXECUTE = "execute"
STEP_DRY_RUN = "dry-run"
STEP_VERIFY = "verify"
STEP_RETRY = "retry"
STEP_CANCEL = "cancel"
STEP_TIMEOUT = "timeout"
STEP_REAP = "reap"
STEP_APPROVE = "approve"
STEP_REJECT = "reject"
STEP_APPROVAL_EXPIRED = "approval-expired"
STEP_AUTHORISE = "authorise"

_STATE_NAMES = frozenset(state.value for state in RunState)
# Events about an Approval: posted on the Approval as well as on its Run, never merged.
APPROVAL_EVENT_REASONS = frozenset(
    {"ApprovalRequested", "Approved", "Rejected", "ApprovalRefused", "ApprovalExpired"}
)


# --------------------------------------------------------------------------- views


@dataclass(frozen=True, slots=True)
class IncidentView:
    """What the operator keeps in memory of every Incident (Kopf's index): enough for a Run to
    see its Incident go away or turn remediation Off, and for the metrics to count it."""

    namespace: str
    name: str
    uid: str
    created_at: datetime
    remediation_mode: RemediationMode
    phase: IncidentPhase | None
    deleting: bool
    anomaly_key: str | None  # as recorded (status.anomaly.key)
    alert_name: str | None = None
    source: str | None = None
    has_decision: bool = False
    run_uid: str | None = None  # status.runRef.uid (or its name, before a uid is known)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> IncidentView:
        meta = body["metadata"]
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        phase = status.get("phase")
        run_ref = status.get("runRef") or {}
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            created_at=_parse_time(meta["creationTimestamp"]),
            remediation_mode=RemediationMode(
                (spec.get("remediation") or {}).get("mode", RemediationMode.AUTO.value)
            ),
            phase=IncidentPhase(phase) if phase else None,
            deleting=bool(meta.get("deletionTimestamp")),
            anomaly_key=(status.get("anomaly") or {}).get("key"),
            alert_name=spec.get("alertName") or None,
            source=spec.get("source") or None,
            has_decision=bool(status.get("decision")),
            run_uid=(run_ref.get("uid") or run_ref.get("name")) if run_ref else None,
        )


def _parse_time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


def _own_status(status: Mapping[str, Any], model: type[RunStatus | IncidentStatus]) -> dict[str, Any]:
    known = {info.alias or name for name, info in model.model_fields.items()}
    return {key: value for key, value in dict(status).items() if key in known}


@dataclass(frozen=True)
class RunObject:
    name: str
    namespace: str
    uid: str
    generation: int
    created_at: datetime
    labels: Mapping[str, str]
    deleting: bool
    spec: RunSpec
    status: RunStatus

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RunObject:
        """Parse a Run; raises ``ValueError`` (pydantic's ValidationError) for an invalid one."""
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 1),
            created_at=_parse_time(meta["creationTimestamp"]),
            labels=dict(meta.get("labels") or {}),
            deleting=bool(meta.get("deletionTimestamp")),
            spec=RunSpec.model_validate(dict(body.get("spec") or {})),
            status=RunStatus.model_validate(_own_status(body.get("status") or {}, RunStatus)),
        )

    @property
    def action(self) -> ProposedAction:
        params = self.spec.action.params
        return ProposedAction(
            type=self.spec.action.type,
            target_kind=self.spec.action.target.kind,
            target_name=self.spec.action.target.name,
            replicas=params.replicas if params else None,
            to_revision=params.to_revision if params else None,
        )

    @property
    def shadow(self) -> bool:
        return self.spec.mode is RunMode.SHADOW

    def observed(self) -> ObservedRun:
        return ObservedRun(
            namespace=self.namespace,
            name=self.name,
            uid=self.uid,
            created_at=self.created_at,
            target_kind=self.spec.action.target.kind,
            target_name=self.spec.action.target.name,
            mode=self.spec.mode,
            requires_approval=self.spec.requires_approval,
            state=self.status.state,
            started_at=self.status.started_at,
        )


def observed_run(
    namespace: str,
    name: str,
    uid: str,
    meta: Mapping[str, Any],
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
) -> ObservedRun:
    """The safety-limit view of a Run body (for the operator's index); ``ValueError`` if invalid."""
    action = spec["action"]
    state = status.get("state")
    started_at = status.get("startedAt")
    return ObservedRun(
        namespace=namespace,
        name=name,
        uid=uid,
        created_at=_parse_time(meta["creationTimestamp"]),
        target_kind=TargetKind(action["target"]["kind"]),
        target_name=str(action["target"]["name"]),
        mode=RunMode(spec.get("mode", RunMode.AUTO.value)),
        requires_approval=bool(spec.get("requiresApproval", False)),
        state=RunState(state) if state else None,
        started_at=_parse_time(started_at) if started_at else None,
    )


def last_seq(steps: Sequence[RunStep]) -> int:
    return max((step.seq for step in steps), default=0)


# --------------------------------------------------------------------------- seams


class RepairRecorder(Protocol):
    """Where outcomes are counted (``flywheel.stores.anomaly_redis.AnomalyStore``)."""

    async def record_repair_attempt(
        self, tenant: str, key: str, action: str, success: bool, attempt_id: str, at: datetime
    ) -> bool: ...

    async def record_disposition(
        self, tenant: str, key: str, disposition: str, disposition_id: str, at: datetime | None = None
    ) -> bool: ...


@dataclass(frozen=True)
class AttemptRecord:
    """The outcome of one attempt of a Run's action, for the history database (repair executions).

    Handed over once the attempt is decided (verified, failed, timed out, or retried). A pass
    may run twice, so the same record can be handed over twice: the database stores it once
    per (``run_uid``, ``attempt``).
    """

    run_uid: str
    attempt: int
    namespace: str
    incident_uid: str
    anomaly_key: str | None
    action: ActionType
    target_kind: TargetKind
    target_name: str
    succeeded: bool
    started_at: datetime
    finished_at: datetime
    error_code: str | None
    shadow: bool

    @property
    def latency_ms(self) -> int:
        return max(int((self.finished_at - self.started_at).total_seconds() * 1000), 0)


class AttemptSink(Protocol):
    """Where finished attempts go (the durable history, SPEC §5). Must not block.

    Raise a :class:`FlywheelError` when the record cannot even be queued; the Run goes on.
    """

    def record_attempt(self, record: AttemptRecord) -> None: ...


# --------------------------------------------------------------------------- guard


class RunGuard:
    """Read-your-writes for one Run within one operator process.

    Every state change appends a journal step, so the journal's last ``seq`` orders the
    statuses of a Run. A pass that reads an older status than the last one written here
    (the watch event bringing the write back may lag) is skipped.
    If the written status never shows up (the patch failed), the guard gives up waiting
    after :data:`GUARD_PATIENCE_SECONDS` and trusts what is stored.
    """

    def __init__(self) -> None:
        self._written_seq = 0
        self._written_at = -math.inf

    def is_stale(self, status: RunStatus, monotonic_now: float) -> bool:
        if last_seq(status.steps) >= self._written_seq:
            return False
        return monotonic_now - self._written_at < GUARD_PATIENCE_SECONDS

    def wrote(self, status: RunStatus, monotonic_now: float) -> None:
        self._written_seq = last_seq(status.steps)
        self._written_at = monotonic_now


class AdmittedRuns:
    """Read-your-writes for the safety limits, across the Runs of one operator process.

    Admission counts a namespace's Runs from the operator's index, which learns of a
    status write only when the watch brings it back. Without this, two Runs on one target
    passed within that lag both start: the first is still Pending in the index when the
    second looks (and, created in the same second, it may even queue behind the second).

    So a pass that may start its Run holds the namespace's :meth:`lock` from reading the
    peers until its status is written, then reports what it wrote (:meth:`wrote`). Until
    the index shows that Run in another state than it had before the write, the written
    view stands in for the indexed one (:meth:`peers`).
    """

    def __init__(self) -> None:
        # namespace -> uid -> (state the index had before our write, the view we wrote)
        self._written: dict[str, dict[str, tuple[RunState | None, ObservedRun]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, namespace: str) -> asyncio.Lock:
        return self._locks.setdefault(namespace, asyncio.Lock())

    def peers(self, namespace: str, indexed: Iterable[ObservedRun]) -> Iterable[ObservedRun]:
        written = self._written.get(namespace)
        if not written:
            return indexed
        views: list[ObservedRun] = []
        echo_pending: dict[str, tuple[RunState | None, ObservedRun]] = {}
        for view in indexed:
            entry = written.get(view.uid)
            if entry is not None and entry[0] == view.state:
                echo_pending[view.uid] = entry
                views.append(entry[1])
            else:
                views.append(view)
        # Entries the index has caught up with, or whose Run is gone from it, are dropped.
        if echo_pending:
            self._written[namespace] = echo_pending
        else:
            del self._written[namespace]
        return views

    def wrote(self, before: ObservedRun, status: RunStatus) -> None:
        """The pass stored ``status`` for the Run the index showed as ``before``."""
        if status.state == before.state:
            return
        after = replace(before, state=status.state, started_at=status.started_at)
        self._written.setdefault(before.namespace, {})[before.uid] = (before.state, after)


# --------------------------------------------------------------------------- one pass


@dataclass
class RunOutcome:
    """What one pass wants written and announced."""

    status: RunStatus
    events: list[Event] = field(default_factory=list)

    def status_patch(self, before: RunStatus) -> dict[str, Any]:
        """A merge patch of the top-level status fields that changed (empty: nothing to write).

        Unset fields are left out of the written objects (the API server would drop nulls
        inside lists anyway); a field that was set and is now unset is deleted with null.
        """
        old = before.model_dump(mode="json", by_alias=True, exclude_none=True)
        new = self.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        patch: dict[str, Any] = {key: value for key, value in new.items() if old.get(key) != value}
        patch.update({key: None for key in old if key not in new})
        return patch

    def events_to_post(self) -> list[Event]:
        """The pass's Events, its routine Normal ones merged into one.

        A Shadow Run goes from Pending to Succeeded in one pass (Started, DryRun, Succeeded);
        each Event is an API write, which an alert storm cannot spare. The merged message keeps
        every step in order; its reason is the state the pass ended in when it announced one
        (Succeeded, Cancelled…), else the last one. Warnings and the Events about an Approval
        stay on their own.
        """
        routine = [e for e in self.events if e.type == "Normal" and e.reason not in APPROVAL_EVENT_REASONS]
        posted = [e for e in self.events if e.type != "Normal" or e.reason in APPROVAL_EVENT_REASONS]
        if routine:
            states = [e.reason for e in routine if e.reason in _STATE_NAMES]
            reason = states[-1] if states else routine[-1].reason
            message = "; ".join(e.message for e in routine)[:EVENT_MESSAGE_LIMIT]
            posted.append(Event("Normal", reason, message))
        return posted


class _Pass:
    """The working state of one reconcile pass: the status being built and its events."""

    def __init__(self, run: RunObject, now: datetime) -> None:
        self.run = run
        self.now = now
        self.status = run.status.model_copy(deep=True)
        self.events: list[Event] = []
        self.approval: Mapping[str, Any] | None = None
        # Attempts decided in this pass: (attempt, started, succeeded, error code).
        self.attempts: list[tuple[int, datetime, bool, RunErrorCode | None]] = []

    @property
    def state(self) -> RunState:
        return current_state(self.status.state)

    def condition(self, condition_type: str, status: ConditionStatus, reason: str, message: str) -> None:
        self.status.conditions = set_condition(
            self.status.conditions,
            new_condition(
                condition_type, status, reason, message, now=self.now, observed_generation=self.run.generation
            ),
        )

    def clear_condition(self, condition_type: str, reason: str, message: str) -> None:
        """Set a condition False if it is present and not False already."""
        existing = find_condition(self.status.conditions, condition_type)
        if existing is not None and existing.status is not ConditionStatus.FALSE:
            self.condition(condition_type, ConditionStatus.FALSE, reason, message)

    def step(self, name: str, result: str, message: str) -> None:
        previous = self.status.steps[-1].at if self.status.steps else None
        latency = int((self.now - previous).total_seconds() * 1000) if previous is not None else None
        self.status.steps = append_step(
            self.status.steps,
            name=name,
            result=result,
            at=self.now,
            latency_ms=max(latency, 0) if latency is not None else None,
            message=message,
        )

    def event(self, event_type: str, reason: str, message: str) -> None:
        self.events.append(Event(event_type, reason, message[:EVENT_MESSAGE_LIMIT]))

    def move(
        self,
        target: RunState,
        step: str,
        result: str,
        message: str,
        *,
        code: RunErrorCode | None = None,
        detail: str | None = None,
    ) -> bool:
        """Change state through the state machine, journaling the step; False if refused."""
        verdict = check_transition(self.status.state, target)
        run = self.run
        if not verdict.allowed:
            log.error(
                "run_transition_refused",
                run=run.name,
                namespace=run.namespace,
                trace_id=run.spec.trace_id,
                from_state=verdict.current.value,
                to_state=target.value,
                reason=verdict.reason,
            )
            return False
        if verdict.current in ACTIVE_STATES and target in _ATTEMPT_ENDS and self.status.attempt >= 1:
            self.attempts.append(
                (self.status.attempt, self._attempt_started_at(), target is RunState.SUCCEEDED, code)
            )
        self.status.state = target
        self.step(step, result, message)
        if target in TERMINAL_STATES:
            self.status.completed_at = self.now
            self.status.timeout_at = None
            self.status.error_code = code.value if code is not None else None
            self.status.error_detail = (detail or message)[:4096] if code is not None else None
            if target is RunState.SUCCEEDED:
                self.condition(SUCCEEDED, ConditionStatus.TRUE, "Succeeded", message)
            else:
                reason = condition_reason(code) if code is not None else target.value
                self.condition(SUCCEEDED, ConditionStatus.FALSE, reason, message)
            self.clear_condition(THROTTLED, "Finished", f"the Run is {target.value}")
            self.clear_condition(AWAITING_APPROVAL, "Finished", f"the Run is {target.value}")
        log.info(
            "run_transition",
            run=run.name,
            namespace=run.namespace,
            trace_id=run.spec.trace_id,
            from_state=verdict.current.value,
            to_state=target.value,
            attempt=self.status.attempt,
            error_code=code.value if code else None,
            message=message,
        )
        return True

    def _attempt_started_at(self) -> datetime:
        """When the current attempt began: its admit or retry step, else the Run's start."""
        for entry in reversed(self.status.steps):
            if entry.name in (STEP_ADMIT, STEP_RETRY):
                return entry.at
        return self.status.started_at or self.now

    def outcome(self) -> RunOutcome:
        return RunOutcome(status=self.status, events=self.events)


# --------------------------------------------------------------------------- controller


class WorkloadActions(Protocol):
    """Acting on and reading workloads (``flywheel.stores.workloads.WorkloadStore``)."""

    async def apply(
        self, namespace: str, action: ProposedAction, stamp: ActionStamp, *, dry_run: bool, max_replicas: int
    ) -> ActionResult: ...

    async def rollout(self, namespace: str, kind: TargetKind, name: str) -> RolloutFacts: ...


class IncidentStatusWriter(Protocol):
    """Reading Incidents and updating their status (``flywheel.stores.incidents.IncidentStatusStore``)."""

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def update_status(
        self, namespace: str, name: str, uid: str, mutation: StatusMutation
    ) -> StatusUpdate: ...


@dataclass(frozen=True)
class RunStores:
    """The stores the Run controller acts through, built once per operator.

    Without an approval gate (unit tests of the state machine) a Run that needs approval
    simply keeps waiting.
    """

    workloads: WorkloadActions
    incidents: IncidentStatusWriter
    attempts: AttemptSink | None = None
    approvals: ApprovalGate | None = None


def safety_limits(settings: FlywheelSettings) -> SafetyLimits:
    return SafetyLimits(
        max_running_per_namespace=settings.run_max_concurrent_per_namespace,
        max_running_per_target=settings.run_max_concurrent_per_target,
        breaker_max_remediations=settings.circuit_breaker_max_remediations,
        breaker_window=timedelta(seconds=settings.circuit_breaker_window_seconds),
    )


class RunController:
    def __init__(self, settings: FlywheelSettings, repairs: RepairRecorder, stores: RunStores) -> None:
        self._settings = settings
        self._repairs = repairs
        self._workloads = stores.workloads
        self._incidents = stores.incidents
        self._attempts = stores.attempts
        self._approvals = stores.approvals
        self._limits = safety_limits(settings)

    def tenant(self, namespace: str) -> str:
        return self._settings.tenant or namespace

    async def reconcile(
        self,
        run: RunObject,
        incident: IncidentView | None,
        peers: Iterable[ObservedRun],
        now: datetime | None = None,
        approval: Mapping[str, Any] | None = None,
    ) -> RunOutcome:
        """One pass over the Run: the status to write and the Events to post.

        ``approval`` is the Run's Approval as the operator's index has it, if any.
        """
        ctx = _Pass(run, now or datetime.now(UTC))
        ctx.approval = approval
        ctx.status.observed_generation = run.generation
        ctx.status.state = ctx.state  # a new Run is Pending
        if find_condition(ctx.status.conditions, SUCCEEDED) is None:
            ctx.condition(SUCCEEDED, ConditionStatus.UNKNOWN, "Pending", "the Run has not started yet")
        if ctx.state not in TERMINAL_STATES:
            await self._advance(ctx, incident, peers)
        if ctx.state in TERMINAL_STATES:
            await self._finish(ctx, incident)
        self._heartbeat(ctx)
        self._hand_over_attempts(ctx, incident)
        return ctx.outcome()

    # -- state by state ------------------------------------------------------------------

    async def _advance(self, ctx: _Pass, incident: IncidentView | None, peers: Iterable[ObservedRun]) -> None:
        cancellation = await self._cancellation(ctx.run, incident)
        if cancellation is not None:
            waited = ctx.state is RunState.WAITING_APPROVAL
            ctx.move(RunState.CANCELLED, STEP_CANCEL, "Cancelled", cancellation, code=RunErrorCode.CANCELLED)
            ctx.event("Normal", "Cancelled", cancellation)
            if waited and self._approvals is not None:
                await self._approvals.withdraw(self._gate_run(ctx), cancellation, ctx.now)
            return
        for _ in range(MAX_HOPS):
            before = ctx.state
            if before is RunState.PENDING:
                await self._pending(ctx, peers)
                if not (ctx.run.shadow and ctx.state is RunState.RUNNING):
                    # A started Run acts on the next pass, once startedAt is stored. A Shadow
                    # Run only dry-runs, which changes nothing: it goes on in this pass (one
                    # status write instead of three in an alert storm).
                    return
                continue
            if before is RunState.WAITING_APPROVAL:
                await self._waiting_approval(ctx)
                return
            if before is RunState.RUNNING:
                await self._running(ctx)
            elif before is RunState.VERIFYING:
                await self._verifying(ctx)
            if ctx.state == before or ctx.state in TERMINAL_STATES:
                return

    async def _cancellation(self, run: RunObject, incident: IncidentView | None) -> str | None:
        """Why the Run must be cancelled (its Run or Incident is going away, or remediation is Off)."""
        if run.deleting:
            return "the Run is being deleted"
        ref = run.spec.incident_ref
        if incident is None:
            # Not in the index (yet?): ask the API server before cancelling anything.
            body = await self._incidents.get(run.namespace, ref.name)
            incident = IncidentView.from_body(body) if body is not None else None
        if incident is None:
            return f"Incident {ref.name} no longer exists"
        if incident.uid != ref.uid:
            return f"Incident {ref.name} was deleted (a new Incident with that name has another uid)"
        if incident.deleting:
            return f"Incident {ref.name} is being deleted"
        if incident.remediation_mode is RemediationMode.OFF:
            return f"Incident {ref.name} turned remediation Off"
        return None

    def _deadline(self, ctx: _Pass) -> datetime:
        return run_deadline(ctx.run.created_at, ctx.status.started_at, ctx.run.spec.timeout_seconds)

    def _last_sign_of_life(self, ctx: _Pass) -> datetime:
        moments = [
            ctx.run.created_at,
            ctx.status.started_at,
            ctx.status.heartbeat_at,
            ctx.status.steps[-1].at if ctx.status.steps else None,
        ]
        return max(moment for moment in moments if moment is not None)

    def _expire(self, ctx: _Pass) -> bool:
        """Time the Run out if it is past its deadline (reaped as stale if it was abandoned)."""
        deadline = self._deadline(ctx)
        code = overdue(
            ctx.status.state,
            now=ctx.now,
            deadline=deadline,
            last_sign_of_life=self._last_sign_of_life(ctx),
            stale_after=STALE_AFTER,
        )
        if code is None:
            return False
        if code is RunErrorCode.RUN_STALE:
            message = (
                f"reaped: no sign of life since {self._last_sign_of_life(ctx).isoformat()}, "
                f"deadline {deadline.isoformat()} passed while nobody drove the Run"
            )
            ctx.move(RunState.TIMED_OUT, STEP_REAP, "TimedOut", message, code=code)
        else:
            waited = "to start" if ctx.state is RunState.PENDING else "to finish"
            message = f"the Run did not manage {waited} within {ctx.run.spec.timeout_seconds}s"
            ctx.move(RunState.TIMED_OUT, STEP_TIMEOUT, "TimedOut", message, code=code)
        ctx.event("Warning", "TimedOut", message)
        return True

    async def _pending(self, ctx: _Pass, peers: Iterable[ObservedRun]) -> None:
        run = ctx.run
        if self._expire(ctx):
            return
        if run.spec.requires_approval:
            self._await_approval(
                ctx,
                "ApprovalRequired",
                f"the decision requires approval before acting (risk {run.spec.risk_level.value})",
            )
            return
        admission = admit(run.observed(), peers, self._limits, ctx.now)
        if admission.kind is AdmissionKind.REQUIRE_APPROVAL:
            self._await_approval(ctx, admission.reason, admission.message)
            ctx.event("Warning", admission.reason, admission.message)
            return
        if admission.kind is AdmissionKind.THROTTLE:
            throttled = find_condition(ctx.status.conditions, THROTTLED)
            if throttled is None or throttled.status is not ConditionStatus.TRUE:
                ctx.step(STEP_THROTTLE, "Waiting", admission.message)
                ctx.event("Normal", "Throttled", admission.message)
            ctx.condition(THROTTLED, ConditionStatus.TRUE, admission.reason, admission.message)
            ctx.condition(SUCCEEDED, ConditionStatus.UNKNOWN, "Throttled", "waiting for a free slot")
            ctx.status.timeout_at = self._deadline(ctx)
            return
        if ctx.move(RunState.RUNNING, STEP_ADMIT, "Succeeded", admission.message):
            ctx.clear_condition(THROTTLED, "Admitted", admission.message)
            self._start_attempt(ctx)
            ctx.event("Normal", "Started", f"{run.action.describe()} (attempt {ctx.status.attempt})")

    def _await_approval(self, ctx: _Pass, reason: str, message: str) -> None:
        if ctx.move(RunState.WAITING_APPROVAL, STEP_AWAIT_APPROVAL, "Waiting", message):
            ctx.clear_condition(THROTTLED, "WaitingForApproval", "the Run waits for approval instead")
            ctx.status.timeout_at = None
            ctx.condition(AWAITING_APPROVAL, ConditionStatus.TRUE, reason, message)
            ctx.condition(SUCCEEDED, ConditionStatus.UNKNOWN, "AwaitingApproval", "waiting for an Approval")

    async def _waiting_approval(self, ctx: _Pass) -> None:
        """Ask for the Approval, and move on once it is decided or expired."""
        if self._approvals is None:
            existing = find_condition(ctx.status.conditions, AWAITING_APPROVAL)
            if existing is None or existing.status is not ConditionStatus.TRUE:
                ctx.condition(
                    AWAITING_APPROVAL,
                    ConditionStatus.TRUE,
                    "ApprovalRequired",
                    "the Run waits for an Approval before acting",
                )
            return
        verdict = await self._approvals.review(self._gate_run(ctx), ctx.approval, ctx.now)
        for event_type, reason, message in verdict.events:
            ctx.event(event_type, reason, message)
        if verdict.approval_ref is not None:
            ctx.status.approval_ref = verdict.approval_ref
        if verdict.state is GateState.APPROVED:
            ctx.status.approval_token = verdict.token
            ctx.move(RunState.RUNNING, STEP_APPROVE, "Approved", verdict.message)
        elif verdict.state is GateState.REJECTED:
            ctx.move(
                RunState.CANCELLED, STEP_REJECT, "Rejected", verdict.message, code=RunErrorCode.APPROVAL_REJECTED
            )
        elif verdict.state is GateState.EXPIRED:
            ctx.move(
                RunState.TIMED_OUT,
                STEP_APPROVAL_EXPIRED,
                "TimedOut",
                verdict.message,
                code=RunErrorCode.APPROVAL_EXPIRED,
            )
        else:
            ctx.condition(AWAITING_APPROVAL, ConditionStatus.TRUE, "ApprovalRequired", verdict.message)

    def _gate_run(self, ctx: _Pass) -> GateRun:
        run = ctx.run
        return GateRun(
            name=run.name,
            namespace=run.namespace,
            uid=run.uid,
            labels=run.labels,
            incident_name=run.spec.incident_ref.name,
            action=run.spec.action,
            risk_level=run.spec.risk_level.value,
            approval_ref=ctx.status.approval_ref,
            approval_token=ctx.status.approval_token,
            tenant=self.tenant(run.namespace),
        )

    def _needs_approval(self, ctx: _Pass) -> bool:
        """Whether the Run may only act with an approval token: it asked for one at some point."""
        return (
            ctx.run.spec.requires_approval
            or ctx.status.approval_ref is not None
            or find_condition(ctx.status.conditions, AWAITING_APPROVAL) is not None
        )

    async def _authorised(self, ctx: _Pass) -> bool:
        """Verify and spend the approval token before the first attempt starts; False if refused.

        Later attempts of the same Run act under the approval the first one spent. A pass
        killed after spending it spends it again: the same Run is not a replay.
        """
        if self._approvals is None or not self._needs_approval(ctx):
            return True
        try:
            await self._approvals.authorise(self._gate_run(ctx), ctx.now)
        except TokenRefused as refused:
            message = f"not executed: {refused}"
            ctx.move(RunState.FAILED, STEP_AUTHORISE, "Refused", message, code=refused.code)
            ctx.event("Warning", "ApprovalTokenRefused", message)
            return False
        return True

    def _start_attempt(self, ctx: _Pass) -> None:
        """Begin the next attempt: count it, start the clock, set its verification deadline."""
        status = ctx.status
        status.started_at = status.started_at or ctx.now
        status.attempt += 1
        status.timeout_at = attempt_deadline(
            ctx.now, self._deadline(ctx), ctx.run.spec.timeout_seconds, ctx.run.spec.max_attempts
        )
        status.heartbeat_at = ctx.now
        ctx.clear_condition(AWAITING_APPROVAL, "Approved", "the Run is executing")
        ctx.condition(
            SUCCEEDED,
            ConditionStatus.UNKNOWN,
            "Running",
            f"attempt {status.attempt} of {ctx.run.spec.max_attempts}",
        )

    async def _running(self, ctx: _Pass) -> None:
        run = ctx.run
        if ctx.status.attempt == 0 or ctx.status.started_at is None:
            # Moved to Running by an approval: check its token, then the first attempt starts.
            try:
                if not await self._authorised(ctx):
                    return
            except StoreUnavailableError as exc:
                log.warning("run_authorise_unavailable", run=run.name, namespace=run.namespace, error=str(exc))
                ctx.condition(SUCCEEDED, ConditionStatus.UNKNOWN, "ActionRetrying", str(exc))
                return
            self._start_attempt(ctx)
        if self._expire(ctx):
            return
        stamp = ActionStamp(run_uid=run.uid, attempt=ctx.status.attempt, at=ctx.now)
        failure: FailureClass | None = None
        try:
            result = await self._workloads.apply(
                run.namespace,
                run.action,
                stamp,
                dry_run=run.shadow,
                max_replicas=self._settings.max_scale_replicas,
            )
        except StoreUnavailableError as exc:
            failure, error = FailureClass(RunErrorCode.API_UNAVAILABLE, retryable=True), str(exc)
        except KubernetesApiError as exc:
            failure, error = classify_api_status(exc.status), str(exc)
        except ActionNotApplicableError as exc:
            failure, error = FailureClass(RunErrorCode.ACTION_NOT_APPLICABLE, retryable=False), str(exc)
        if failure is not None:
            if failure.retryable:
                log.warning(
                    "run_action_retry",
                    run=run.name,
                    namespace=run.namespace,
                    trace_id=run.spec.trace_id,
                    error_code=failure.code.value,
                    error=error,
                )
                ctx.condition(SUCCEEDED, ConditionStatus.UNKNOWN, "ActionRetrying", error)
                return
            message = f"{run.action.describe()} failed: {error}"
            ctx.move(RunState.FAILED, STEP_EXECUTE, "Failed", message, code=failure.code, detail=error)
            ctx.event("Warning", "Failed", message)
            return
        if result.dry_run:
            step, outcome = STEP_DRY_RUN, "WouldChange" if result.changed else "NoChange"
        elif result.already_applied:
            step, outcome = STEP_EXECUTE, "AlreadyApplied"
        else:
            step, outcome = STEP_EXECUTE, "Succeeded"
        # An already-applied summary names its attempt itself.
        plain = result.dry_run or result.already_applied
        message = result.summary if plain else f"{result.summary} (attempt {ctx.status.attempt})"
        if ctx.move(RunState.VERIFYING, step, outcome, message):
            ctx.condition(SUCCEEDED, ConditionStatus.UNKNOWN, "Verifying", message)
            if not result.already_applied:
                ctx.event("Normal", "DryRun" if result.dry_run else "ActionApplied", message)

    async def _verifying(self, ctx: _Pass) -> None:
        run = ctx.run
        deadline = self._deadline(ctx)
        code = overdue(
            ctx.status.state,
            now=ctx.now,
            deadline=deadline,
            last_sign_of_life=self._last_sign_of_life(ctx),
            stale_after=STALE_AFTER,
        )
        if code is RunErrorCode.RUN_STALE:
            self._expire(ctx)
            return
        if run.shadow:
            ctx.move(
                RunState.SUCCEEDED,
                STEP_VERIFY,
                "Skipped",
                "shadow mode: nothing was changed, nothing to verify",
            )
            ctx.event("Normal", "Succeeded", "shadow run finished (dry run only)")
            return
        target = run.action
        try:
            facts = await self._workloads.rollout(run.namespace, target.target_kind, target.target_name)
        except StoreUnavailableError as exc:
            log.warning("run_verify_unavailable", run=run.name, namespace=run.namespace, error=str(exc))
            if ctx.now >= deadline:
                message = f"could not verify the rollout before the deadline: {exc}"
                ctx.move(RunState.FAILED, STEP_VERIFY, "Failed", message, code=RunErrorCode.VERIFY_TIMEOUT)
                ctx.event("Warning", "Failed", message)
            return
        except KubernetesApiError as exc:
            failure = classify_api_status(exc.status)
            if failure.retryable:
                return
            message = f"verification of {target.target_kind.value}/{target.target_name} failed: {exc}"
            ctx.move(RunState.FAILED, STEP_VERIFY, "Failed", message, code=failure.code, detail=str(exc))
            ctx.event("Warning", "Failed", message)
            return
        rollout = classify_rollout(facts)
        verdict = verification_outcome(
            rollout,
            now=ctx.now,
            attempt_deadline=ctx.status.timeout_at or deadline,
            run_deadline=deadline,
            attempt=ctx.status.attempt,
            max_attempts=run.spec.max_attempts,
        )
        if verdict.step is NextStep.SUCCEED:
            ctx.move(RunState.SUCCEEDED, STEP_VERIFY, "Succeeded", rollout.message)
            ctx.event("Normal", "Succeeded", f"{target.describe()}: {rollout.message}")
        elif verdict.step is NextStep.WAIT:
            ctx.condition(SUCCEEDED, ConditionStatus.UNKNOWN, "Verifying", rollout.message)
        elif verdict.step is NextStep.RETRY:
            assert verdict.code is not None
            message = (
                f"attempt {ctx.status.attempt} not verified ({verdict.code.value}: {rollout.message}); "
                f"starting attempt {ctx.status.attempt + 1}"
            )
            if ctx.move(RunState.RUNNING, STEP_RETRY, "Failed", message, code=verdict.code):
                self._start_attempt(ctx)
                ctx.event("Warning", "Retrying", message)
        else:
            assert verdict.code is not None
            message = (
                f"attempt {ctx.status.attempt} of {run.spec.max_attempts} not verified: {rollout.message}"
            )
            ctx.move(RunState.FAILED, STEP_VERIFY, "Failed", message, code=verdict.code)
            ctx.event("Warning", "Failed", message)

    # -- after the end -------------------------------------------------------------------

    async def _finish(self, ctx: _Pass, incident: IncidentView | None) -> None:
        """Record the outcome: the repair attempt, and the Incident's resolution or why it has none.

        Each part is idempotent; the condition OutcomeRecorded stays False (and the timer
        keeps coming back) until all of them are stored.
        """
        recorded = find_condition(ctx.status.conditions, OUTCOME_RECORDED)
        if recorded is not None and recorded.status is ConditionStatus.TRUE:
            return
        run, status = ctx.run, ctx.status
        state = ctx.state
        missing: list[str] = []
        notes: list[str] = []
        if not run.shadow and state in UNREMEDIATED_STATES:
            await self._report_unremediated(ctx, missing, notes)
        acted = not run.shadow and status.started_at is not None and status.attempt >= 1
        if not acted or state is RunState.CANCELLED:
            if missing:
                ctx.condition(
                    OUTCOME_RECORDED, ConditionStatus.FALSE, "Retrying", "still to record: " + "; ".join(missing)
                )
                return
            nothing = "cancelled" if state is RunState.CANCELLED else "no action was executed on the target"
            ctx.condition(
                OUTCOME_RECORDED,
                ConditionStatus.TRUE,
                "NothingToRecord",
                "; ".join([f"not a repair attempt: {nothing}", *notes]),
            )
            return
        key = run.labels.get(LABEL_ANOMALY_KEY) or (incident.anomaly_key if incident is not None else None)
        tenant = self.tenant(run.namespace)
        success = state is RunState.SUCCEEDED
        at = status.completed_at or ctx.now
        if key is None:
            notes.append("no anomaly key: repair attempt not counted")
        else:
            try:
                await self._repairs.record_repair_attempt(
                    tenant, key, run.action.type.value, success, f"{run.uid}:{status.attempt}", at
                )
                notes.append(f"repair attempt {'succeeded' if success else 'failed'} recorded")
            except RedisUnavailableError as exc:
                log.warning(
                    "run_repair_attempt_pending", run=run.name, namespace=run.namespace, error=str(exc)
                )
                missing.append("repair attempt (Redis unavailable)")
        if success:
            await self._resolve_incident(ctx, key, tenant, missing, notes)
        if missing:
            ctx.condition(
                OUTCOME_RECORDED, ConditionStatus.FALSE, "Retrying", "still to record: " + "; ".join(missing)
            )
        else:
            ctx.condition(OUTCOME_RECORDED, ConditionStatus.TRUE, "Recorded", "; ".join(notes) or "recorded")

    async def _resolve_incident(
        self, ctx: _Pass, key: str | None, tenant: str, missing: list[str], notes: list[str]
    ) -> None:
        run, status = ctx.run, ctx.status
        ref = run.spec.incident_ref
        disposition = (
            Disposition.HUMAN_APPROVED if status.approval_ref is not None else Disposition.AUTO_REPAIR
        )
        summary = status.steps[-1].message if status.steps else "verified"
        message = f"Run {run.name} succeeded: {run.action.describe()}; {summary}"

        def mutation(body: Mapping[str, Any]) -> dict[str, Any] | None:
            return resolution_patch(
                body,
                run_ref=ObjectRef(name=run.name, uid=run.uid),
                disposition=disposition,
                message=message,
                now=ctx.now,
            )

        update = await self._update_incident(ctx, mutation, "resolution", missing)
        if update is None:
            return
        if update.result is UpdateResult.GONE:
            notes.append(f"Incident {ref.name} is gone; nothing to resolve")
            return
        current = IncidentStatus.model_validate(
            _own_status((update.incident or {}).get("status") or {}, IncidentStatus)
        )
        ours = (
            current.disposition == disposition
            and current.run_ref is not None
            and current.run_ref.uid == run.uid
        )
        if update.result is UpdateResult.UPDATED:
            notes.append(f"Incident {ref.name} resolved ({disposition.value})")
            ctx.event("Normal", "IncidentResolved", f"Incident {ref.name} resolved ({disposition.value})")
        elif not ours:
            notes.append(
                f"Incident {ref.name} was already {current.phase.value if current.phase else 'final'}"
            )
            return
        if key is None:
            return
        try:
            await self._repairs.record_disposition(
                tenant,
                key,
                disposition.value,
                f"{ref.uid}:{disposition.value}",
                status.completed_at or ctx.now,
            )
        except RedisUnavailableError:
            missing.append(f"disposition {disposition.value} (Redis unavailable)")

    async def _report_unremediated(self, ctx: _Pass, missing: list[str], notes: list[str]) -> None:
        """Say on the Incident that its Run ended without remediating it, and that a person must."""
        run, status = ctx.run, ctx.status
        ref = run.spec.incident_ref
        outcome = "failed" if ctx.state is RunState.FAILED else "timed out"
        cause = status.steps[-1].message if status.steps else ""
        code = f"{status.error_code}: " if status.error_code else ""
        message = (
            f"Run {run.name} {outcome}: {code}{cause}; the Incident stays open until a person resolves it "
            "(spec.resolution)"
        )

        def mutation(body: Mapping[str, Any]) -> dict[str, Any] | None:
            return unremediated_patch(body, run_ref=ObjectRef(name=run.name, uid=run.uid), message=message, now=ctx.now)

        update = await self._update_incident(ctx, mutation, "condition", missing)
        if update is not None and update.result is UpdateResult.UPDATED:
            notes.append(f"Incident {ref.name} marked not remediated")
            ctx.event("Warning", "IncidentNotRemediated", f"Incident {ref.name}: {message}")

    async def _update_incident(
        self, ctx: _Pass, mutation: StatusMutation, what: str, missing: list[str]
    ) -> StatusUpdate | None:
        """Update the Run's Incident; None (and ``what`` still missing) if the API is unavailable."""
        run = ctx.run
        ref = run.spec.incident_ref
        try:
            return await self._incidents.update_status(run.namespace, ref.name, ref.uid, mutation)
        except (StoreUnavailableError, KubernetesApiError) as exc:
            log.warning("run_incident_update_pending", run=run.name, incident=ref.name, update=what, error=str(exc))
            missing.append(f"Incident {what} ({exc})")
            return None

    def _heartbeat(self, ctx: _Pass) -> None:
        status = ctx.status
        if ctx.state not in ACTIVE_STATES:
            return
        if status.heartbeat_at is None or ctx.now - status.heartbeat_at >= HEARTBEAT_INTERVAL:
            status.heartbeat_at = ctx.now

    def _hand_over_attempts(self, ctx: _Pass, incident: IncidentView | None) -> None:
        """Give the attempts decided in this pass to the history, if one is configured."""
        if self._attempts is None or not ctx.attempts:
            return
        run = ctx.run
        key = run.labels.get(LABEL_ANOMALY_KEY) or (incident.anomaly_key if incident is not None else None)
        for attempt, started_at, succeeded, code in ctx.attempts:
            record = AttemptRecord(
                run_uid=run.uid,
                attempt=attempt,
                namespace=run.namespace,
                incident_uid=run.spec.incident_ref.uid,
                anomaly_key=key,
                action=run.action.type,
                target_kind=run.action.target_kind,
                target_name=run.action.target_name,
                succeeded=succeeded,
                started_at=started_at,
                finished_at=ctx.now,
                error_code=code.value if code else None,
                shadow=run.shadow,
            )
            try:
                self._attempts.record_attempt(record)
            except FlywheelError as exc:
                # The Run is the source of truth; a lost history record never stops it.
                log.warning(
                    "run_attempt_not_recorded",
                    run=run.name,
                    namespace=run.namespace,
                    attempt=attempt,
                    error=str(exc),
                )


def unremediated_patch(
    incident: Mapping[str, Any], *, run_ref: ObjectRef, message: str, now: datetime
) -> dict[str, Any] | None:
    """The Incident status merge patch saying its Run ended without remediating it.

    Condition Resolved turns False (reason NotRemediated) and the phase stays as it is. None when
    the Incident is final already, its Run is another one, or the condition says so already.
    """
    status = IncidentStatus.model_validate(_own_status(incident.get("status") or {}, IncidentStatus))
    if status.phase in FINAL_PHASES or status.phase is IncidentPhase.DUPLICATE:
        return None
    if status.run_ref is not None and status.run_ref.uid != run_ref.uid:
        return None
    existing = find_condition(status.conditions, RESOLVED)
    if existing is not None and existing.reason == NOT_REMEDIATED and existing.message == message:
        return None
    conditions = _with_resolved(incident, status, ConditionStatus.FALSE, NOT_REMEDIATED, message, now)
    return {"status": {"conditions": conditions}}


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
    status = IncidentStatus.model_validate(_own_status(incident.get("status") or {}, IncidentStatus))
    if status.phase in FINAL_PHASES:
        return None
    reason = "HumanApproved" if disposition is Disposition.HUMAN_APPROVED else "AutoRepaired"
    patch: dict[str, Any] = {
        "phase": IncidentPhase.RESOLVED.value,
        "disposition": disposition.value,
        "resolvedAt": now.isoformat().replace("+00:00", "Z"),
        "conditions": _with_resolved(incident, status, ConditionStatus.TRUE, reason, message, now),
    }
    if status.run_ref is None:
        patch["runRef"] = run_ref.model_dump(mode="json", by_alias=True)
    if status.decision is not None:
        patch["decision"] = {"state": DecisionState.COMPLETED.value}
    return {"status": patch}


__all__ = [
    "APPROVAL_EVENT_REASONS",
    "AWAITING_APPROVAL",
    "OUTCOME_RECORDED",
    "SUCCEEDED",
    "THROTTLED",
    "AdmittedRuns",
    "AttemptRecord",
    "AttemptSink",
    "IncidentStatusWriter",
    "IncidentView",
    "RepairRecorder",
    "RunController",
    "RunGuard",
    "RunObject",
    "RunOutcome",
    "RunStores",
    "WorkloadActions",
    "observed_run",
    "resolution_patch",
    "safety_limits",
    "unremediated_patch",
]
