"""The Verifying step: watch the rollout until it is verified, retried, or failed."""

from __future__ import annotations

from collections.abc import Callable

from flywheel.api.enums import ConditionStatus, RunState
from flywheel.controllers.approval import ApprovalGate
from flywheel.controllers.run.approval_wait import gate_run
from flywheel.controllers.run.clocks import STALE_AFTER, deadline_of, expire, last_sign_of_life, start_attempt
from flywheel.controllers.run.execution import Execution
from flywheel.controllers.run.passes import STEP_AUTHORISE, STEP_RETRY, STEP_VERIFY, SUCCEEDED, RunPass
from flywheel.controllers.run.ports import WorkloadActions
from flywheel.domain.approval import TokenRefused
from flywheel.domain.run_state import (
    NextStep,
    RunErrorCode,
    classify_api_status,
    classify_rollout,
    overdue,
    verification_outcome,
)
from flywheel.errors import KubernetesApiError, StoreUnavailableError
from flywheel.logs import get_logger

log = get_logger(__name__)


class Verification:
    """Verifying → Succeeded, Running (the next attempt), Failed or TimedOut."""

    def __init__(
        self,
        workloads: WorkloadActions,
        approvals: ApprovalGate | None = None,
        tenant: Callable[[str], str] = str,
    ) -> None:
        self._workloads = workloads
        self._approvals = approvals
        self._tenant = tenant

    async def _renewed(self, ctx: RunPass) -> bool:
        """For a Run that acts under an approval: the next attempt's token, issued now; False if refused.

        Only this executor, deciding a retry, issues the token of an attempt after the first.
        """
        if self._approvals is None or not Execution.needs_approval(ctx):
            return True
        try:
            token_id = await self._approvals.renew(
                gate_run(ctx, self._tenant(ctx.run.namespace)), ctx.status.attempt, ctx.now
            )
        except TokenRefused as refused:
            message = f"attempt {ctx.status.attempt + 1} not started: {refused}"
            ctx.move(RunState.FAILED, STEP_AUTHORISE, "Refused", message, code=refused.code)
            ctx.event("Warning", "ApprovalTokenRefused", message)
            return False
        ctx.status.approval_token_id = token_id
        return True

    async def verifying(self, ctx: RunPass) -> None:
        run = ctx.run
        deadline = deadline_of(ctx)
        code = overdue(
            ctx.status.state,
            now=ctx.now,
            deadline=deadline,
            last_sign_of_life=last_sign_of_life(ctx),
            stale_after=STALE_AFTER,
        )
        if code is RunErrorCode.RUN_STALE:
            expire(ctx)
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
            try:
                renewed = await self._renewed(ctx)
            except StoreUnavailableError as exc:
                log.warning("run_renew_unavailable", run=run.name, namespace=run.namespace, error=str(exc))
                return
            if renewed and ctx.move(RunState.RUNNING, STEP_RETRY, "Failed", message, code=verdict.code):
                start_attempt(ctx)
                ctx.event("Warning", "Retrying", message)
        else:
            assert verdict.code is not None
            message = (
                f"attempt {ctx.status.attempt} of {run.spec.max_attempts} not verified: {rollout.message}"
            )
            ctx.move(RunState.FAILED, STEP_VERIFY, "Failed", message, code=verdict.code)
            ctx.event("Warning", "Failed", message)

    # -- after the end -------------------------------------------------------------------
