"""The Run state machine, its failure classes, deadlines and safety limits.

Pure: no clock (``now`` is always an argument), no I/O, no Kopf. The Run controller
gathers observations (the Run, its peers, the workload's rollout) and asks this module
what comes next; the stores carry the answer out.

State machine (SPEC §3)::

    Pending ──► Running ──► Verifying ──► Succeeded
       │           ▲  │          │
       ▼           │  ▼          ▼
    WaitingApproval   Failed ◄───┘
       │
       ├──► Cancelled
       └──► TimedOut
    any non-terminal ──► Cancelled / TimedOut

``Verifying → Running`` starts the next attempt. Every other transition is refused
with a reason (:func:`check_transition`) or an :class:`IllegalTransitionError`
(:func:`transition`). The bounded journal itself is :func:`flywheel.api.run.append_step`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from flywheel.api.enums import RunMode, RunState, TargetKind
from flywheel.domain.funnel import ObjectSample
from flywheel.errors import FlywheelError, InvalidInputError

# --------------------------------------------------------------------------- states

TERMINAL_STATES: frozenset[RunState] = frozenset(
    {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT}
)
# States in which the Run touches (or is about to touch) its target and sends heartbeats.
ACTIVE_STATES: frozenset[RunState] = frozenset({RunState.RUNNING, RunState.VERIFYING})
# States in which the Run waits before acting.
WAITING_STATES: frozenset[RunState] = frozenset({RunState.PENDING, RunState.WAITING_APPROVAL})

TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    RunState.PENDING: frozenset(
        {RunState.RUNNING, RunState.WAITING_APPROVAL, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT}
    ),
    RunState.WAITING_APPROVAL: frozenset(
        {RunState.RUNNING, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT}
    ),
    RunState.RUNNING: frozenset(
        {RunState.VERIFYING, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT}
    ),
    RunState.VERIFYING: frozenset(
        {RunState.SUCCEEDED, RunState.FAILED, RunState.RUNNING, RunState.CANCELLED, RunState.TIMED_OUT}
    ),
    RunState.SUCCEEDED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.CANCELLED: frozenset(),
    RunState.TIMED_OUT: frozenset(),
}


class IllegalTransitionError(FlywheelError):
    """A state change the Run state machine does not allow; ``reason`` says why."""

    def __init__(self, current: RunState, target: RunState, reason: str) -> None:
        super().__init__(f"{current.value} → {target.value} refused: {reason}")
        self.current = current
        self.target = target
        self.reason = reason


class ActionNotApplicableError(FlywheelError):
    """The action cannot apply to this workload (e.g. a rollback with no earlier revision)."""


@dataclass(frozen=True, slots=True)
class TransitionVerdict:
    allowed: bool
    current: RunState
    target: RunState
    reason: str


def current_state(state: RunState | None) -> RunState:
    """The state of a Run whose status may not have been written yet (a new Run is Pending)."""
    return RunState.PENDING if state is None else state


def check_transition(current: RunState | None, target: RunState) -> TransitionVerdict:
    """Whether ``current → target`` is allowed, with the reason either way."""
    source = current_state(current)
    if source in TERMINAL_STATES:
        return TransitionVerdict(
            False, source, target, f"{source.value} is final; a finished Run never changes state"
        )
    if source == target:
        return TransitionVerdict(False, source, target, f"the Run is already {source.value}")
    if target in TRANSITIONS[source]:
        return TransitionVerdict(True, source, target, f"{source.value} may move to {target.value}")
    allowed = ", ".join(sorted(state.value for state in TRANSITIONS[source]))
    return TransitionVerdict(
        False, source, target, f"{source.value} can only move to {allowed}, not to {target.value}"
    )


def transition(current: RunState | None, target: RunState) -> RunState:
    """``target`` if the state machine allows ``current → target``, else :class:`IllegalTransitionError`."""
    verdict = check_transition(current, target)
    if not verdict.allowed:
        raise IllegalTransitionError(verdict.current, verdict.target, verdict.reason)
    return target


# --------------------------------------------------------------------------- failure classes


class RunErrorCode(StrEnum):
    """``status.errorCode`` values: the failure class of a finished Run."""

    VERIFY_TIMEOUT = "E-VERIFY-TIMEOUT"
    ROLLOUT_FAILED = "E-ROLLOUT-FAILED"
    TARGET_NOT_FOUND = "E-TARGET-NOT-FOUND"
    ACTION_FORBIDDEN = "E-ACTION-FORBIDDEN"
    ACTION_FAILED = "E-ACTION-FAILED"
    ACTION_NOT_APPLICABLE = "E-ACTION-NOT-APPLICABLE"
    # Transient classes: retried until the Run's deadline, never final on their own.
    API_UNAVAILABLE = "E-API-UNAVAILABLE"
    ACTION_CONFLICT = "E-ACTION-CONFLICT"
    RUN_TIMEOUT = "E-RUN-TIMEOUT"
    RUN_STALE = "E-RUN-STALE"
    CANCELLED = "E-CANCELLED"
    # The Run's namespace has not opted in (domain.namespaces): refused before acting.
    NAMESPACE_NOT_ENABLED = "E-NAMESPACE-NOT-ENABLED"
    APPROVAL_REJECTED = "E-APPR-REJECTED"
    APPROVAL_EXPIRED = "E-APPR-EXPIRED"
    APPROVAL_TOKEN_INVALID = "E-APPR-TOKEN-INVALID"
    APPROVAL_TOKEN_EXPIRED = "E-APPR-TOKEN-EXPIRED"
    APPROVAL_ACTION_CHANGED = "E-APPR-ACTION-CHANGED"
    APPROVAL_REPLAYED = "E-APPR-REPLAYED"
    # A write of the Run's pass was refused as invalid (422): retrying is refused again.
    INVALID_WRITE = "E-INVALID-WRITE"
    # The rollout completed but the symptom (alert, Pods) was still there at the end of the window.
    SYMPTOM_PERSISTS = "E-SYMPTOM-PERSISTS"
    # The Incident's alerts all resolved before the action was applied: nothing was done.
    ALREADY_RESOLVED = "E-ALREADY-RESOLVED"
    # Not bound to a decision of Flywheel's (created or edited by someone else): never acts.
    RUN_UNTRUSTED = "E-RUN-UNTRUSTED"


@dataclass(frozen=True, slots=True)
class FailureClass:
    code: RunErrorCode
    retryable: bool


_UNAVAILABLE_STATUSES = frozenset({0, 408, 429, 500, 502, 503, 504})


def classify_api_status(status: int | None) -> FailureClass:
    """The failure class of a Kubernetes API error, by HTTP status.

    Unavailability (no answer, 408, 429, 5xx) and conflicts (409: someone else changed the
    workload in between) are retryable; everything else ends the Run.
    """
    if status is None or status in _UNAVAILABLE_STATUSES:
        return FailureClass(RunErrorCode.API_UNAVAILABLE, retryable=True)
    if status == 409:
        return FailureClass(RunErrorCode.ACTION_CONFLICT, retryable=True)
    if status in (401, 403):
        return FailureClass(RunErrorCode.ACTION_FORBIDDEN, retryable=False)
    if status in (404, 410):
        return FailureClass(RunErrorCode.TARGET_NOT_FOUND, retryable=False)
    return FailureClass(RunErrorCode.ACTION_FAILED, retryable=False)


def condition_reason(code: RunErrorCode) -> str:
    """A condition reason (CamelCase) for an error code: ``E-VERIFY-TIMEOUT`` → ``VerifyTimeout``."""
    parts = code.value.split("-")[1:]
    return "".join(part.capitalize() for part in parts)


# --------------------------------------------------------------------------- verification


class RolloutState(StrEnum):
    COMPLETE = "Complete"
    PROGRESSING = "Progressing"
    FAILED = "Failed"


@dataclass(frozen=True, slots=True)
class RolloutFacts:
    """What the workload's status says about its rollout (Deployment, StatefulSet or DaemonSet)."""

    generation: int
    observed_generation: int
    desired: int  # spec.replicas
    total: int  # status.replicas: pods of every revision
    updated: int
    ready: int
    available: int
    # StatefulSet: the update revision is not the current one yet.
    revision_pending: bool = False
    # Deployment: the Progressing condition's reason when the controller gave up (ProgressDeadlineExceeded).
    failure_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RolloutVerdict:
    state: RolloutState
    message: str


def classify_rollout(facts: RolloutFacts) -> RolloutVerdict:
    """Whether the current generation is fully rolled out, judged as ``kubectl rollout status`` does."""
    if facts.observed_generation < facts.generation:
        return RolloutVerdict(
            RolloutState.PROGRESSING,
            f"waiting for the controller to observe generation {facts.generation} "
            f"(observed {facts.observed_generation})",
        )
    if facts.failure_reason:
        return RolloutVerdict(RolloutState.FAILED, f"rollout failed: {facts.failure_reason}")
    if facts.updated < facts.desired:
        return RolloutVerdict(
            RolloutState.PROGRESSING, f"{facts.updated} of {facts.desired} replicas updated"
        )
    if facts.total > facts.updated:
        return RolloutVerdict(
            RolloutState.PROGRESSING, f"{facts.total - facts.updated} old replicas pending termination"
        )
    if facts.ready < facts.desired:
        return RolloutVerdict(RolloutState.PROGRESSING, f"{facts.ready} of {facts.desired} replicas ready")
    if facts.available < facts.desired:
        return RolloutVerdict(
            RolloutState.PROGRESSING, f"{facts.available} of {facts.desired} updated replicas available"
        )
    if facts.revision_pending:
        return RolloutVerdict(RolloutState.PROGRESSING, "waiting for the update revision to become current")
    return RolloutVerdict(
        RolloutState.COMPLETE,
        f"rollout complete: {facts.updated}/{facts.desired} updated, {facts.available} available "
        f"(generation {facts.generation})",
    )


class NextStep(StrEnum):
    SUCCEED = "Succeed"
    WAIT = "Wait"
    RETRY = "Retry"
    FAIL = "Fail"


@dataclass(frozen=True, slots=True)
class VerificationOutcome:
    step: NextStep
    code: RunErrorCode | None = None


def verification_outcome(
    rollout: RolloutVerdict,
    *,
    now: datetime,
    attempt_deadline: datetime,
    run_deadline: datetime,
    attempt: int,
    max_attempts: int,
) -> VerificationOutcome:
    """What a Verifying Run does next, given its rollout and its deadlines.

    A complete rollout succeeds even at the deadline. A failed rollout, or one still in
    progress when the attempt's deadline passes, starts the next attempt while attempts
    and time are left, and otherwise fails the Run.
    """
    if rollout.state is RolloutState.COMPLETE:
        return VerificationOutcome(NextStep.SUCCEED)
    if rollout.state is RolloutState.FAILED:
        code = RunErrorCode.ROLLOUT_FAILED
    elif now >= attempt_deadline or now >= run_deadline:
        code = RunErrorCode.VERIFY_TIMEOUT
    else:
        return VerificationOutcome(NextStep.WAIT)
    if attempt < max_attempts and now < run_deadline:
        return VerificationOutcome(NextStep.RETRY, code)
    return VerificationOutcome(NextStep.FAIL, code)


# --------------------------------------------------------------------------- deadlines


def run_deadline(created_at: datetime, started_at: datetime | None, timeout_seconds: int) -> datetime:
    """When the Run times out: ``timeoutSeconds`` after it started (after creation while it waits)."""
    return (started_at or created_at) + timedelta(seconds=timeout_seconds)


def attempt_deadline(now: datetime, deadline: datetime, timeout_seconds: int, max_attempts: int) -> datetime:
    """Verification deadline of an attempt starting ``now``: an equal share of the Run's time, capped."""
    if max_attempts < 1:
        raise InvalidInputError("spec.maxAttempts", f"must be >= 1, got {max_attempts}")
    share = timedelta(seconds=timeout_seconds / max_attempts)
    return min(now + share, deadline)


def overdue(
    state: RunState | None,
    *,
    now: datetime,
    deadline: datetime,
    last_sign_of_life: datetime,
    stale_after: timedelta,
) -> RunErrorCode | None:
    """E-RUN-STALE or E-RUN-TIMEOUT when the Run is past its deadline, else None.

    A Run that was executing (Running, Verifying) but showed no sign of life during the
    ``stale_after`` before its deadline was abandoned (the operator was down): it is
    reaped as stale. Otherwise it simply ran out of time. Runs waiting for approval are
    governed by their Approval's expiry, not by this deadline.
    """
    source = current_state(state)
    if source in TERMINAL_STATES or source is RunState.WAITING_APPROVAL or now < deadline:
        return None
    if source in ACTIVE_STATES and last_sign_of_life < deadline - stale_after:
        return RunErrorCode.RUN_STALE
    return RunErrorCode.RUN_TIMEOUT


# --------------------------------------------------------------------------- safety limits


@dataclass(frozen=True, slots=True)
class SafetyLimits:
    """How much automatic remediation Flywheel allows at once and per target."""

    max_running_per_namespace: int
    max_running_per_target: int
    # Circuit breaker: this many remediations of one target within the window open it.
    breaker_max_remediations: int
    breaker_window: timedelta

    def __post_init__(self) -> None:
        for name in ("max_running_per_namespace", "max_running_per_target", "breaker_max_remediations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(name, f"must be an integer >= 1, got {value!r}")
        if self.breaker_window <= timedelta(0):
            raise InvalidInputError("breaker_window", "must be positive")


@dataclass(frozen=True, slots=True)
class ObservedRun:
    """What the safety limits need to know about one Run (from the operator's index)."""

    namespace: str
    name: str
    uid: str
    created_at: datetime
    target_kind: TargetKind
    target_name: str
    mode: RunMode
    requires_approval: bool
    state: RunState | None
    started_at: datetime | None

    @property
    def target(self) -> tuple[str, TargetKind, str]:
        return (self.namespace, self.target_kind, self.target_name)

    @property
    def queue_position(self) -> tuple[datetime, str]:
        return (self.created_at, self.name)

    @property
    def acts(self) -> bool:
        """Whether the Run changes its target (Shadow Runs only dry-run)."""
        return self.mode is RunMode.AUTO

    @property
    def active(self) -> bool:
        return self.acts and current_state(self.state) in ACTIVE_STATES

    @property
    def waiting_to_execute(self) -> bool:
        """An Auto Run that exists but has not started executing its action (the health figures)."""
        return self.acts and self.state in (None, RunState.PENDING, RunState.WAITING_APPROVAL)

    @property
    def executing(self) -> bool:
        """An Auto Run that is applying or verifying its action (the health figures)."""
        return self.acts and self.state in (RunState.RUNNING, RunState.VERIFYING)

    def sample(self) -> ObjectSample:
        return ObjectSample("Run", self.namespace, self.name, self.uid)

    @property
    def queued(self) -> bool:
        """Pending and free to start as soon as the limits allow."""
        return self.acts and current_state(self.state) is RunState.PENDING and not self.requires_approval


class AdmissionKind(StrEnum):
    ADMIT = "Admit"
    THROTTLE = "Throttle"
    REQUIRE_APPROVAL = "RequireApproval"


@dataclass(frozen=True, slots=True)
class Admission:
    kind: AdmissionKind
    reason: str  # CamelCase, for the condition
    message: str


def admit(
    candidate: ObservedRun, runs: Iterable[ObservedRun], limits: SafetyLimits, now: datetime
) -> Admission:
    """May a Pending Run start now?

    Runs of the namespace that are Running or Verifying occupy a slot, and so do older
    Runs queued before this one: two Runs evaluated at the same time agree on who goes
    first (creation time, then name). The circuit breaker counts the target's
    remediations that started within the window, plus the queued ones ahead; when they
    reach the limit, no automatic action is taken and a person must approve.
    Shadow Runs only dry-run, so the limits do not apply to them.
    """
    if not candidate.acts:
        return Admission(
            AdmissionKind.ADMIT, "ShadowMode", "Shadow Runs only dry-run; safety limits do not apply"
        )
    peers = [run for run in runs if run.uid != candidate.uid and run.namespace == candidate.namespace]
    ahead = [run for run in peers if run.queued and run.queue_position < candidate.queue_position]
    ahead_on_target = [run for run in ahead if run.target == candidate.target]
    active = [run for run in peers if run.active]
    active_on_target = [run for run in active if run.target == candidate.target]
    window_start = now - limits.breaker_window
    recent_on_target = [
        run
        for run in peers
        if run.acts
        and run.target == candidate.target
        and run.started_at is not None
        and run.started_at > window_start
    ]
    target = f"{candidate.target_kind.value}/{candidate.target_name}"

    remediations = len(recent_on_target) + len(ahead_on_target)
    if remediations >= limits.breaker_max_remediations:
        window = int(limits.breaker_window.total_seconds())
        return Admission(
            AdmissionKind.REQUIRE_APPROVAL,
            "CircuitBreakerOpen",
            f"{target} was remediated {remediations} times within {window}s "
            f"(limit {limits.breaker_max_remediations}): no automatic action, approval required",
        )
    namespace_load = len(active) + len(ahead)
    if namespace_load >= limits.max_running_per_namespace:
        return Admission(
            AdmissionKind.THROTTLE,
            "NamespaceLimitReached",
            f"{len(active)} Runs executing and {len(ahead)} queued ahead in namespace {candidate.namespace} "
            f"(limit {limits.max_running_per_namespace}); waiting for a slot",
        )
    target_load = len(active_on_target) + len(ahead_on_target)
    if target_load >= limits.max_running_per_target:
        return Admission(
            AdmissionKind.THROTTLE,
            "TargetLimitReached",
            f"{len(active_on_target)} Runs executing and {len(ahead_on_target)} queued ahead on {target} "
            f"(limit {limits.max_running_per_target}); waiting for a slot",
        )
    return Admission(
        AdmissionKind.ADMIT,
        "WithinLimits",
        f"{len(active)}/{limits.max_running_per_namespace} executing in the namespace, "
        f"{len(active_on_target)}/{limits.max_running_per_target} on {target}, "
        f"{remediations}/{limits.breaker_max_remediations} recent remediations",
    )


__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "WAITING_STATES",
    "ActionNotApplicableError",
    "Admission",
    "AdmissionKind",
    "FailureClass",
    "IllegalTransitionError",
    "NextStep",
    "ObservedRun",
    "RolloutFacts",
    "RolloutState",
    "RolloutVerdict",
    "RunErrorCode",
    "SafetyLimits",
    "TransitionVerdict",
    "VerificationOutcome",
    "admit",
    "attempt_deadline",
    "check_transition",
    "classify_api_status",
    "classify_rollout",
    "condition_reason",
    "current_state",
    "overdue",
    "run_deadline",
    "transition",
    "verification_outcome",
]
