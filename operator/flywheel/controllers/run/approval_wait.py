"""The WaitingApproval step: ask for the Approval, and move on once it is decided or expired."""

from __future__ import annotations

from collections.abc import Callable

from flywheel.api.common import find_condition
from flywheel.api.enums import ConditionStatus, RunState
from flywheel.controllers.approval import ApprovalGate, GateRun, GateState
from flywheel.controllers.run.passes import (
    AWAITING_APPROVAL,
    STEP_APPROVAL_EXPIRED,
    STEP_APPROVE,
    STEP_REJECT,
    RunPass,
)
from flywheel.domain.run_state import RunErrorCode


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
        approval_token=ctx.status.approval_token,
        tenant=tenant,
    )


class ApprovalWait:
    """WaitingApproval → Running, Cancelled (rejected) or TimedOut (expired)."""

    def __init__(self, approvals: ApprovalGate | None, tenant: Callable[[str], str]) -> None:
        self._approvals = approvals
        self._tenant = tenant

    async def waiting_approval(self, ctx: RunPass) -> None:
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
        verdict = await self._approvals.review(gate_run(ctx, self._tenant(ctx.run.namespace)), ctx.approval, ctx.now)
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

