"""The Running step: check the approval token before every attempt, then act on the workload once."""

from __future__ import annotations

from collections.abc import Callable

from flywheel.api.common import find_condition
from flywheel.api.enums import ConditionStatus, RunState
from flywheel.controllers.approval import ApprovalGate
from flywheel.controllers.run.approval_wait import gate_run
from flywheel.controllers.run.clocks import expire, start_attempt
from flywheel.controllers.run.passes import (
    AWAITING_APPROVAL,
    STEP_AUTHORISE,
    STEP_DRY_RUN,
    STEP_EXECUTE,
    SUCCEEDED,
    RunPass,
)
from flywheel.controllers.run.ports import WorkloadActions
from flywheel.controllers.run.recheck import WorkloadReader, cancel_if_resolved
from flywheel.domain.approval import TokenRefused
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import (
    ActionNotApplicableError,
    FailureClass,
    RunErrorCode,
    classify_api_status,
)
from flywheel.errors import KubernetesApiError, StoreUnavailableError
from flywheel.logs import get_logger
from flywheel.stores.workloads import ActionStamp

log = get_logger(__name__)


class Execution:
    """Running → Verifying, or Failed; still Running while the API is unavailable."""

    def __init__(
        self,
        workloads: WorkloadActions,
        approvals: ApprovalGate | None,
        tenant: Callable[[str], str],
        max_replicas: int,
        reader: WorkloadReader | None = None,
    ) -> None:
        self._workloads = workloads
        self._reader = reader
        self._approvals = approvals
        self._tenant = tenant
        self._max_replicas = max_replicas

    @staticmethod
    def needs_approval(ctx: RunPass) -> bool:
        """Whether the Run may only act with an approval token: it asked for one at some point."""
        return (
            ctx.run.spec.requires_approval
            or ctx.status.approval_ref is not None
            or find_condition(ctx.status.conditions, AWAITING_APPROVAL) is not None
        )

    async def _authorised(self, ctx: RunPass, attempt: int) -> bool:
        """Verify and spend the approval token of ``attempt`` before it acts; False if refused.

        Every attempt needs its own token: the first is issued on approval, each next one by
        this executor when it decides to retry (``Verification``). A status that claims an
        attempt (written by anyone but this executor) has no token for it and never acts. A
        pass killed after spending spends again: the same Run and attempt is not a replay.
        """
        if self._approvals is None or not self.needs_approval(ctx):
            return True
        try:
            await self._approvals.authorise(gate_run(ctx, self._tenant(ctx.run.namespace)), attempt, ctx.now)
        except TokenRefused as refused:
            message = f"not executed: {refused}"
            ctx.move(RunState.FAILED, STEP_AUTHORISE, "Refused", message, code=refused.code)
            ctx.event("Warning", "ApprovalTokenRefused", message)
            return False
        return True

    async def running(self, ctx: RunPass, incident: IncidentView | None = None) -> None:
        run = ctx.run
        # Moved to Running by an approval, the attempt starts in this pass.
        starting = ctx.status.attempt == 0 or ctx.status.started_at is None
        attempt = ctx.status.attempt + 1 if starting else ctx.status.attempt
        try:
            if not await self._authorised(ctx, attempt):
                return
        except StoreUnavailableError as exc:
            log.warning("run_authorise_unavailable", run=run.name, namespace=run.namespace, error=str(exc))
            ctx.condition(SUCCEEDED, ConditionStatus.UNKNOWN, "ActionRetrying", str(exc))
            return
        if starting:
            start_attempt(ctx)
        if expire(ctx):
            return
        stamp = ActionStamp(run_uid=run.uid, attempt=ctx.status.attempt, at=ctx.now)
        if not run.shadow and await cancel_if_resolved(ctx, incident, self._reader, stamp):
            return
        failure: FailureClass | None = None
        try:
            result = await self._workloads.apply(
                run.namespace,
                run.action,
                stamp,
                dry_run=run.shadow,
                max_replicas=self._max_replicas,
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

