"""The Pending step: admit the Run under the safety limits, throttle it, or make it wait for approval."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from flywheel.api.common import find_condition
from flywheel.api.enums import ConditionStatus, RunState
from flywheel.api.names import APPROVAL_REASONS
from flywheel.controllers.run.clocks import deadline_of, expire, start_attempt
from flywheel.controllers.run.passes import (
    AWAITING_APPROVAL,
    STEP_ADMIT,
    STEP_AWAIT_APPROVAL,
    STEP_THROTTLE,
    SUCCEEDED,
    THROTTLED,
    RunPass,
)
from flywheel.domain.run_state import AdmissionKind, ObservedRun, SafetyLimits, admit


class Admission:
    """Pending → Running, or WaitingApproval, or throttled in Pending."""

    def __init__(self, limits: SafetyLimits, approval_timeout: timedelta = timedelta(hours=1)) -> None:
        self._limits = limits
        self._approval_timeout = approval_timeout

    async def pending(self, ctx: RunPass, peers: Iterable[ObservedRun]) -> None:
        run = ctx.run
        if expire(ctx):
            return
        if run.spec.requires_approval:
            reasons = run.annotations.get(APPROVAL_REASONS)
            self.await_approval(
                ctx,
                "ApprovalRequired",
                f"the decision requires approval before acting (risk {run.spec.risk_level.value})"
                + (f": {reasons}" if reasons else ""),
            )
            return
        admission = admit(run.observed(), peers, self._limits, ctx.now)
        if admission.kind is AdmissionKind.REQUIRE_APPROVAL:
            self.await_approval(ctx, admission.reason, admission.message)
            ctx.event("Warning", admission.reason, admission.message)
            return
        if admission.kind is AdmissionKind.THROTTLE:
            throttled = find_condition(ctx.status.conditions, THROTTLED)
            if throttled is None or throttled.status is not ConditionStatus.TRUE:
                ctx.step(STEP_THROTTLE, "Waiting", admission.message)
                ctx.event("Normal", "Throttled", admission.message)
            ctx.condition(THROTTLED, ConditionStatus.TRUE, admission.reason, admission.message)
            ctx.condition(SUCCEEDED, ConditionStatus.UNKNOWN, "Throttled", "waiting for a free slot")
            ctx.status.timeout_at = deadline_of(ctx)
            return
        if ctx.move(RunState.RUNNING, STEP_ADMIT, "Succeeded", admission.message):
            ctx.clear_condition(THROTTLED, "Admitted", admission.message)
            start_attempt(ctx)
            ctx.event("Normal", "Started", f"{run.action.describe()} (attempt {ctx.status.attempt})")

    def await_approval(self, ctx: RunPass, reason: str, message: str) -> None:
        if ctx.move(RunState.WAITING_APPROVAL, STEP_AWAIT_APPROVAL, "Waiting", message):
            ctx.clear_condition(THROTTLED, "WaitingForApproval", "the Run waits for approval instead")
            # The Run's own deadline for a decision, held by the Run: whatever becomes of its
            # Approval (deleted, recreated, stripped of its owner), the wait ends then.
            ctx.status.timeout_at = ctx.now + self._approval_timeout
            ctx.condition(AWAITING_APPROVAL, ConditionStatus.TRUE, reason, message)
            ctx.condition(SUCCEEDED, ConditionStatus.UNKNOWN, "AwaitingApproval", "waiting for an Approval")

