"""One reconcile pass over a Run: the status it builds, its Events, its state changes.

Also the names a Run's status is written in: condition types, journal step names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flywheel.api.common import find_condition, new_condition, set_condition
from flywheel.api.enums import ConditionStatus, RunState
from flywheel.api.names import EVENT_MESSAGE_LIMIT, Event
from flywheel.api.run import RunStatus, append_step
from flywheel.controllers.run.views import RunObject
from flywheel.domain.run_state import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    RunErrorCode,
    check_transition,
    condition_reason,
    current_state,
)
from flywheel.logs import get_logger

# Transitions out of Running/Verifying that decide an attempt (Running again: the next attempt).
_ATTEMPT_ENDS = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.TIMED_OUT, RunState.RUNNING})

# Condition types on a Run.
SUCCEEDED = "Succeeded"  # Unknown while in flight, True / False once final
SYMPTOM_GONE = "SymptomGone"  # Unknown during the verification window (its lastTransitionTime starts it)
THROTTLED = "Throttled"
AWAITING_APPROVAL = "AwaitingApproval"
OUTCOME_RECORDED = "OutcomeRecorded"

# Journal step names.
STEP_ADMIT = "admit"
STEP_THROTTLE = "throttle"
STEP_AWAIT_APPROVAL = "await-approval"
STEP_EXECUTE = "execute"
STEP_DRY_RUN = "dry-run"
STEP_VERIFY = "verify"
STEP_RETRY = "retry"
STEP_CANCEL = "cancel"
STEP_REFUSE = "refuse"
STEP_TIMEOUT = "timeout"
STEP_REAP = "reap"
STEP_APPROVE = "approve"
STEP_REJECT = "reject"
STEP_APPROVAL_EXPIRED = "approval-expired"
STEP_AUTHORISE = "authorise"
STEP_WRITE_REFUSED = "write-refused"
STEP_VERIFY_BINDING = "verify-binding"

_STATE_NAMES = frozenset(state.value for state in RunState)
# Events about an Approval: posted on the Approval as well as on its Run, never merged.
APPROVAL_EVENT_REASONS = frozenset(
    {"ApprovalRequested", "Approved", "Rejected", "ApprovalRefused", "ApprovalExpired"}
)

log = get_logger(__name__)


@dataclass
class RunOutcome:
    """What one pass wants written and announced."""

    status: RunStatus
    events: list[Event] = field(default_factory=list)
    # When the Run wants its next pass (a verification window waits without polling); None: the usual poll.
    requeue_after: float | None = None

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


class RunPass:
    """The working state of one reconcile pass: the status being built and its events."""

    def __init__(self, run: RunObject, now: datetime) -> None:
        self.run = run
        self.now = now
        self.status = run.status.model_copy(deep=True)
        self.events: list[Event] = []
        self.approval: Mapping[str, Any] | None = None
        # Attempts decided in this pass: (attempt, started, succeeded, error code).
        self.attempts: list[tuple[int, datetime, bool, RunErrorCode | None]] = []
        self.requeue_after: float | None = None
        # The verification window after the rollout (spec.verificationWindowSeconds, else the default).
        self.window_seconds = run.spec.verification_window_seconds or 0

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
        return RunOutcome(status=self.status, events=self.events, requeue_after=self.requeue_after)

