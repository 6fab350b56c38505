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

The decisions themselves are pure, in :mod:`flywheel.domain.run_state`; each state's step is
in a sibling module (``admission``, ``approval_wait``, ``execution``, ``verification``), and
what happens after the end in ``outcome``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flywheel.api.bodies import incident_body
from flywheel.api.common import find_condition
from flywheel.api.enums import ConditionStatus, RemediationMode, RunState
from flywheel.controllers.run.admission import Admission
from flywheel.controllers.run.approval_wait import ApprovalWait, gate_run
from flywheel.controllers.run.clocks import heartbeat
from flywheel.controllers.run.decision_progress import follow_decision
from flywheel.controllers.run.execution import Execution
from flywheel.controllers.run.outcome import OutcomeRecorder
from flywheel.controllers.run.passes import (
    STEP_CANCEL,
    STEP_REFUSE,
    STEP_WRITE_REFUSED,
    SUCCEEDED,
    RunOutcome,
    RunPass,
)
from flywheel.controllers.run.ports import RepairRecorder, RunStores
from flywheel.controllers.run.symptom_check import SymptomCheck
from flywheel.controllers.run.trust import TrustCheck
from flywheel.controllers.run.verification import Verification
from flywheel.controllers.run.views import RunObject
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import (
    TERMINAL_STATES,
    ObservedRun,
    RunErrorCode,
    SafetyLimits,
    check_transition,
)
from flywheel.errors import InvalidWriteError

# Transitions chained within one pass (Verifying → Running → Verifying for a retry).
MAX_HOPS = 4
# States in which a Run has yet to act (or to act again): the namespace opt-in is checked there.
_BEFORE_ACTING = frozenset({RunState.PENDING, RunState.WAITING_APPROVAL, RunState.RUNNING})


@dataclass(frozen=True)
class RunPolicy:
    """The settings a Run pass reads (``flywheel.wiring`` takes them from the configuration)."""

    tenant: str | None
    max_scale_replicas: int
    limits: SafetyLimits
    # Runs without spec.verificationWindowSeconds wait this long after their rollout (0: check at once).
    verification_window_seconds: int = 0
    # How long a Run waits in WaitingApproval, from when it entered it (its own deadline).
    approval_timeout: timedelta = timedelta(hours=1)


class RunController:
    """Drives a Run through its state machine; the steps per state are in sibling modules."""

    def __init__(self, policy: RunPolicy, repairs: RepairRecorder, stores: RunStores) -> None:
        self._policy = policy
        self._incidents = stores.incidents
        self._approvals = stores.approvals
        self._namespaces = stores.namespaces
        self._trust = TrustCheck(stores.binder)
        self._admission = Admission(policy.limits, policy.approval_timeout)
        self._approval_wait = ApprovalWait(stores.approvals, self.tenant, policy.limits, policy.approval_timeout)
        self._execution = Execution(
            stores.workloads, stores.approvals, self.tenant, policy.max_scale_replicas, stores.reader
        )
        symptoms = SymptomCheck(stores.pods, stores.prometheus) if stores.symptom_checks else None
        self._verification = Verification(stores.workloads, symptoms, stores.approvals, self.tenant)
        self._outcome = OutcomeRecorder(repairs, stores.incidents, stores.attempts, self.tenant, stores.notifier)

    def tenant(self, namespace: str) -> str:
        return self._policy.tenant or namespace

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
        ctx = RunPass(run, now or datetime.now(UTC))
        ctx.approval = approval
        if self._verification.checks_symptom and run.spec.verification_window_seconds is None:
            ctx.window_seconds = self._policy.verification_window_seconds
        elif not self._verification.checks_symptom:
            ctx.window_seconds = 0  # no window: a complete rollout succeeds at once
        ctx.status.observed_generation = run.generation
        ctx.status.state = ctx.state  # a new Run is Pending
        if find_condition(ctx.status.conditions, SUCCEEDED) is None:
            ctx.condition(SUCCEEDED, ConditionStatus.UNKNOWN, "Pending", "the Run has not started yet")
        if ctx.state not in TERMINAL_STATES:
            await self._advance(ctx, incident, peers)
        if ctx.state in TERMINAL_STATES:
            await self._outcome.finish(ctx, incident)
        if not ctx.run.shadow:
            await follow_decision(ctx, incident, self._incidents)
        heartbeat(ctx)
        self._outcome.hand_over_attempts(ctx, incident)
        return ctx.outcome()

    def refused(self, run: RunObject, error: InvalidWriteError, now: datetime | None = None) -> RunOutcome:
        """End a Run whose pass had a write refused as invalid (422): it would be refused again.

        Without this the Run would wait forever, never passed again and past its deadline: it
        ends Failed (Cancelled from a state that has not acted, which cannot fail) with
        ``E-INVALID-WRITE``, the API server's causes in its journal and a Warning Event; its
        outcome is then recorded as for any failed Run. A Run already final is left as it is.
        """
        ctx = RunPass(run, now or datetime.now(UTC))
        ctx.status.observed_generation = run.generation
        if ctx.state in TERMINAL_STATES:
            return ctx.outcome()
        message = f"a write was refused as invalid and would be refused again: {error.describe()}"
        acted = ctx.status.started_at is not None and ctx.status.attempt >= 1
        allowed = check_transition(ctx.state, RunState.FAILED).allowed
        target = RunState.FAILED if acted and allowed else RunState.CANCELLED
        ctx.move(target, STEP_WRITE_REFUSED, "InvalidWrite", message, code=RunErrorCode.INVALID_WRITE, detail=str(error))
        ctx.event("Warning", "InvalidWrite", message)
        return ctx.outcome()

    # -- state by state ------------------------------------------------------------------

    async def _advance(self, ctx: RunPass, incident: IncidentView | None, peers: Iterable[ObservedRun]) -> None:
        cancellation = await self._cancellation(ctx.run, incident)
        if cancellation is not None:
            waited = ctx.state is RunState.WAITING_APPROVAL
            ctx.move(RunState.CANCELLED, STEP_CANCEL, "Cancelled", cancellation, code=RunErrorCode.CANCELLED)
            ctx.event("Normal", "Cancelled", cancellation)
            if waited and self._approvals is not None:
                await self._approvals.withdraw(gate_run(ctx, self.tenant(ctx.run.namespace)), cancellation, ctx.now)
            return
        waited = ctx.state is RunState.WAITING_APPROVAL
        if await self._trust.refused(ctx):
            if waited and self._approvals is not None:
                await self._approvals.withdraw(
                    gate_run(ctx, self.tenant(ctx.run.namespace)), "the Run is not Flywheel's", ctx.now
                )
            return
        if ctx.state in _BEFORE_ACTING and self._namespaces is not None:
            refusal = await self._namespaces.refusal(ctx.run.namespace)
            if refusal is not None:
                # Checked before every attempt, not once: a namespace that opts out stops the next one.
                waited = ctx.state is RunState.WAITING_APPROVAL
                message = f"refused: {refusal}"
                ctx.move(
                    RunState.CANCELLED, STEP_REFUSE, "NamespaceNotEnabled", message,
                    code=RunErrorCode.NAMESPACE_NOT_ENABLED,
                )
                ctx.event("Warning", "NamespaceNotEnabled", message)
                if waited and self._approvals is not None:
                    await self._approvals.withdraw(gate_run(ctx, self.tenant(ctx.run.namespace)), message, ctx.now)
                return
        for _ in range(MAX_HOPS):
            before = ctx.state
            if before is RunState.PENDING:
                await self._admission.pending(ctx, peers)
                if not (ctx.run.shadow and ctx.state is RunState.RUNNING):
                    # A started Run acts on the next pass, once startedAt is stored. A Shadow
                    # Run only dry-runs, which changes nothing: it goes on in this pass (one
                    # status write instead of three in an alert storm).
                    return
                continue
            if before is RunState.WAITING_APPROVAL:
                await self._approval_wait.waiting_approval(ctx, peers)
                return
            if before is RunState.RUNNING:
                await self._execution.running(ctx, incident)
            elif before is RunState.VERIFYING:
                await self._verification.verifying(ctx, incident)
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
            incident = IncidentView.from_body(incident_body(body)) if body is not None else None
        if incident is None:
            return f"Incident {ref.name} no longer exists"
        if incident.uid != ref.uid:
            return f"Incident {ref.name} was deleted (a new Incident with that name has another uid)"
        if incident.deleting:
            return f"Incident {ref.name} is being deleted"
        if incident.remediation_mode is RemediationMode.OFF:
            return f"Incident {ref.name} turned remediation Off"
        return None

