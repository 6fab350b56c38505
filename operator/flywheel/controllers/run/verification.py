"""The Verifying step: watch the rollout, then the symptom for the verification window; succeed, retry or fail.

The window waits without polling: the pass that sees the rollout complete asks to come back
when the window ends (``RunPass.requeue_after``), and that one pass reads the evidence.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from flywheel.api.common import find_condition
from flywheel.api.enums import ConditionStatus, RunState
from flywheel.controllers.approval import ApprovalGate
from flywheel.controllers.run.approval_wait import gate_run
from flywheel.controllers.run.clocks import STALE_AFTER, deadline_of, expire, last_sign_of_life, start_attempt
from flywheel.controllers.run.execution import Execution
from flywheel.controllers.run.passes import (
    STEP_AUTHORISE,
    STEP_RETRY,
    STEP_VERIFY,
    SUCCEEDED,
    SYMPTOM_GONE,
    RunPass,
)
from flywheel.controllers.run.ports import WorkloadActions
from flywheel.controllers.run.symptom_check import SymptomCheck
from flywheel.domain.approval import TokenRefused
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import (
    NextStep,
    RunErrorCode,
    classify_api_status,
    classify_rollout,
    overdue,
    verification_outcome,
)
from flywheel.domain.symptom import window_end
from flywheel.errors import KubernetesApiError, StoreUnavailableError
from flywheel.logs import get_logger

log = get_logger(__name__)

# How soon a window whose evidence could not be read (API or Prometheus down) is looked at again.
EVIDENCE_RETRY_SECONDS = 5.0


class Verification:
    """Verifying → Succeeded, Running (the next attempt), Failed or TimedOut."""

    def __init__(
        self,
        workloads: WorkloadActions,
        symptoms: SymptomCheck | None = None,
        approvals: ApprovalGate | None = None,
        tenant: Callable[[str], str] = str,
    ) -> None:
        self._workloads = workloads
        self._symptoms = symptoms
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

    @property
    def checks_symptom(self) -> bool:
        return self._symptoms is not None

    async def verifying(self, ctx: RunPass, incident: IncidentView | None = None) -> None:
        run = ctx.run
        deadline = deadline_of(ctx)
        watching = find_condition(ctx.status.conditions, SYMPTOM_GONE)
        if watching is not None and watching.status is ConditionStatus.UNKNOWN and not run.shadow:
            # In the window (checked before the deadline: the pass that ends it is the sign of life).
            await self._watch_symptom(ctx, incident, watching.last_transition_time)
            return
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
        if verdict.step is NextStep.SUCCEED and self._symptoms is None:
            ctx.move(RunState.SUCCEEDED, STEP_VERIFY, "Succeeded", rollout.message)
            ctx.event("Normal", "Succeeded", f"{target.describe()}: {rollout.message}")
        elif verdict.step is NextStep.SUCCEED:
            window = ctx.window_seconds
            ctx.step(STEP_VERIFY, "RolloutComplete", f"{rollout.message}; symptom checked in {window}s")
            ctx.condition(
                SYMPTOM_GONE, ConditionStatus.UNKNOWN, "Watching",
                f"rollout complete; the symptom must be gone {window}s later",
            )
            ctx.condition(SUCCEEDED, ConditionStatus.UNKNOWN, "VerifyingSymptom", rollout.message)
            await self._watch_symptom(ctx, incident, ctx.now)
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

    async def _watch_symptom(self, ctx: RunPass, incident: IncidentView | None, start: datetime) -> None:
        """Wait for the window's end without polling; then the evidence decides Succeeded or Failed."""
        assert self._symptoms is not None
        run = ctx.run
        end = window_end(start, ctx.window_seconds)
        if ctx.now < end:
            ctx.requeue_after = (end - ctx.now).total_seconds()
            return
        target = run.action
        try:
            verdict = await self._symptoms.verdict(run, incident, start)
        except KubernetesApiError as exc:
            failure = classify_api_status(exc.status)
            if failure.retryable:
                ctx.requeue_after = EVIDENCE_RETRY_SECONDS
                return
            message = f"symptom of {target.target_kind.value}/{target.target_name} not checkable: {exc}"
            ctx.move(RunState.FAILED, STEP_VERIFY, "Failed", message, code=failure.code, detail=str(exc))
            ctx.event("Warning", "Failed", message)
            return
        if verdict is None:
            if ctx.now >= deadline_of(ctx):
                message = "could not read the symptom's evidence before the deadline"
                ctx.move(RunState.FAILED, STEP_VERIFY, "Failed", message, code=RunErrorCode.VERIFY_TIMEOUT)
                ctx.event("Warning", "Failed", message)
            ctx.requeue_after = EVIDENCE_RETRY_SECONDS
            return
        message = f"evidence {verdict.evidence.value}: {verdict.message}"
        if verdict.gone:
            ctx.condition(SYMPTOM_GONE, ConditionStatus.TRUE, "Gone", message)
            ctx.move(RunState.SUCCEEDED, STEP_VERIFY, "Succeeded", message)
            ctx.event("Normal", "Succeeded", f"{target.describe()}: {message}")
            return
        ctx.condition(SYMPTOM_GONE, ConditionStatus.FALSE, "Persists", message)
        persists = f"{ctx.window_seconds}s after the rollout the symptom persists ({message})"
        ctx.move(RunState.FAILED, STEP_VERIFY, "Failed", persists, code=RunErrorCode.SYMPTOM_PERSISTS)
        ctx.event("Warning", "SymptomPersists", persists)

    # -- after the end -------------------------------------------------------------------
