"""The WaitingApproval step: ask for the Approval, and move on once it is decided or expired."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta

from flywheel.api.common import find_condition
from flywheel.api.enums import ConditionStatus, RunState
from flywheel.api.times import format_time
from flywheel.controllers.approval import ApprovalGate, GateRun, GateState
from flywheel.controllers.run.passes import (
    AWAITING_APPROVAL,
    STEP_APPROVAL_EXPIRED,
    STEP_APPROVE,
    STEP_REJECT,
    STEP_THROTTLE,
    SUCCEEDED,
    THROTTLED,
    RunPass,
)
from flywheel.domain.run_state import AdmissionKind, ObservedRun, RunErrorCode, SafetyLimits, admit
from flywheel.errors import StoreUnavailableError
from flywheel.logs import get_logger

log = get_logger(__name__)

# The AwaitingApproval reason of a Run that waits because its target's circuit breaker is
# open (``domain.run_state.admit``): its approval is the person the breaker asks for.
BREAKER_OPEN = "CircuitBreakerOpen"

# How soon a Run whose gate could not reach its store (Redis) tries again.
GATE_RETRY_SECONDS = 5.0


def gate_run(ctx: RunPass, tenant: str) -> GateRun:
    """The Run as the approval gate sees it."""
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
        approval_token_id=ctx.status.approval_token_id,
        tenant=tenant,
        deadline=ctx.status.timeout_at if ctx.state is RunState.WAITING_APPROVAL else None,
    )


class ApprovalWait:
    """WaitingApproval → Running, Cancelled (rejected) or TimedOut (expired)."""

    def __init__(
        self,
        approvals: ApprovalGate | None,
        tenant: Callable[[str], str],
        limits: SafetyLimits,
        approval_timeout: timedelta = timedelta(hours=1),
    ) -> None:
        self._approvals = approvals
        self._tenant = tenant
        self._limits = limits
        self._approval_timeout = approval_timeout

    async def _timed_out(self, ctx: RunPass) -> bool:
        """The Run's own deadline for a decision passed: TimedOut, whatever its Approval says.

        The deadline (``status.timeoutAt``) is set when the Run enters WaitingApproval (a Run
        that entered it before it was kept gets one now); an Approval deleted, recreated with a
        later ``expiresAt`` or stripped of its owner cannot move it.
        """
        if ctx.status.timeout_at is None:
            ctx.status.timeout_at = ctx.now + self._approval_timeout
        deadline = ctx.status.timeout_at
        if ctx.now < deadline:
            return False
        message = (
            f"no valid decision before the Run's approval deadline {format_time(deadline)}; "
            "the Run is not executed"
        )
        if self._approvals is not None:
            # Its own Approval (which never expires later) says Expired itself; nothing else counts now.
            verdict = await self._approvals.review(
                gate_run(ctx, self._tenant(ctx.run.namespace)), ctx.approval, ctx.now
            )
            if verdict.state is GateState.EXPIRED:
                for event_type, reason, text in verdict.events:
                    ctx.event(event_type, reason, text)
                ctx.move(RunState.TIMED_OUT, STEP_APPROVAL_EXPIRED, "TimedOut", verdict.message,
                         code=RunErrorCode.APPROVAL_EXPIRED)
                return True
        if ctx.move(RunState.TIMED_OUT, STEP_APPROVAL_EXPIRED, "TimedOut", message, code=RunErrorCode.APPROVAL_EXPIRED):
            ctx.event("Warning", "ApprovalExpired", message)
            if self._approvals is not None:
                await self._approvals.withdraw(gate_run(ctx, self._tenant(ctx.run.namespace)), message, ctx.now)
        return True

    async def waiting_approval(self, ctx: RunPass, peers: Iterable[ObservedRun] = ()) -> None:
        """Ask for the Approval, and move on once it is decided or expired."""
        if await self._timed_out(ctx):
            return
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
        try:
            verdict = await self._approvals.review(
                gate_run(ctx, self._tenant(ctx.run.namespace)), ctx.approval, ctx.now
            )
        except StoreUnavailableError as exc:
            self._gate_unavailable(ctx, exc)
            return
        for event_type, reason, message in verdict.events:
            ctx.event(event_type, reason, message)
        if verdict.approval_ref is not None:
            ctx.status.approval_ref = verdict.approval_ref
        if verdict.state is GateState.APPROVED:
            if not self._admitted(ctx, peers, verdict.message):
                return
            ctx.status.approval_token_id = verdict.token_id
            if ctx.move(RunState.RUNNING, STEP_APPROVE, "Approved", verdict.message):
                ctx.clear_condition(THROTTLED, "Admitted", "approved and within the safety limits")
                ctx.clear_condition(AWAITING_APPROVAL, "Approved", verdict.message)
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
            # Keep the reason the Run was sent here for (the breaker's consent depends on it).
            waiting = find_condition(ctx.status.conditions, AWAITING_APPROVAL)
            reason = waiting.reason if waiting is not None and waiting.reason else "ApprovalRequired"
            ctx.condition(AWAITING_APPROVAL, ConditionStatus.TRUE, reason, verdict.message)

    @staticmethod
    def _gate_unavailable(ctx: RunPass, exc: StoreUnavailableError) -> None:
        """The decision cannot be honoured now (its token cannot be kept): wait, say why, retry soon.

        Nothing acts without a kept token, so the Run stays WaitingApproval; its own deadline
        still holds. The Approval watch would not bring it back (nothing changes there), hence
        the requeue.
        """
        log.warning("run_approval_gate_unavailable", run=ctx.run.name, namespace=ctx.run.namespace, error=str(exc))
        waiting = find_condition(ctx.status.conditions, AWAITING_APPROVAL)
        reason = waiting.reason if waiting is not None and waiting.reason else "ApprovalRequired"
        message = f"the decision cannot be honoured while a store is unavailable (retrying): {exc}"
        if waiting is None or waiting.message != message:
            ctx.event("Warning", "ApprovalGateUnavailable", message)
        ctx.condition(AWAITING_APPROVAL, ConditionStatus.TRUE, reason, message)
        ctx.requeue_after = GATE_RETRY_SECONDS

    def _admitted(self, ctx: RunPass, peers: Iterable[ObservedRun], approved: str) -> bool:
        """May the approved Run start now? An approval is no way around the safety limits.

        The concurrency limits hold for every Run that acts. The circuit breaker holds too,
        unless the breaker is what sent the Run to approval: then the approver is the person
        it asked for. A held Run stays WaitingApproval with condition Throttled (its Approval
        stays Approved) until a slot frees or its deadline passes.
        """
        admission = admit(ctx.run.observed(), peers, self._limits, ctx.now)
        if admission.kind is AdmissionKind.ADMIT:
            return True
        if admission.kind is AdmissionKind.REQUIRE_APPROVAL:
            waiting = find_condition(ctx.status.conditions, AWAITING_APPROVAL)
            if waiting is not None and waiting.reason == BREAKER_OPEN:
                consented = admit(
                    ctx.run.observed(), peers, _without_breaker(self._limits), ctx.now
                )
                if consented.kind is AdmissionKind.ADMIT:
                    return True
                admission = consented
        message = f"{approved}, but {admission.message}"
        throttled = find_condition(ctx.status.conditions, THROTTLED)
        if throttled is None or throttled.status is not ConditionStatus.TRUE or throttled.reason != admission.reason:
            ctx.step(STEP_THROTTLE, "Waiting", message)
            ctx.event(
                "Warning" if admission.kind is AdmissionKind.REQUIRE_APPROVAL else "Normal", "Throttled", message
            )
        ctx.condition(THROTTLED, ConditionStatus.TRUE, admission.reason, message)
        ctx.condition(SUCCEEDED, ConditionStatus.UNKNOWN, "Throttled", "approved, waiting for the safety limits")
        return False


def _without_breaker(limits: SafetyLimits) -> SafetyLimits:
    """The limits with the circuit breaker consented to (only the concurrency limits left)."""
    return SafetyLimits(
        max_running_per_namespace=limits.max_running_per_namespace,
        max_running_per_target=limits.max_running_per_target,
        breaker_max_remediations=1 << 30,
        breaker_window=limits.breaker_window,
    )

