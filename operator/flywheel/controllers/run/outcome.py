"""After the end: record a finished Run's outcome (repair attempt, disposition) and resolve its Incident."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flywheel.api.bodies import own_status
from flywheel.api.common import ObjectRef, find_condition
from flywheel.api.enums import ConditionStatus, Disposition, RunState
from flywheel.api.incident import IncidentStatus
from flywheel.api.names import LABEL_ANOMALY_KEY
from flywheel.controllers.run.incident_patches import resolution_patch, unremediated_patch
from flywheel.controllers.run.passes import OUTCOME_RECORDED, RunPass
from flywheel.controllers.run.ports import AttemptRecord, AttemptSink, IncidentStatusWriter, RepairRecorder
from flywheel.domain.incident import IncidentView
from flywheel.domain.notifications import Notification, NotificationKind, Notifier
from flywheel.domain.run_state import RunErrorCode
from flywheel.errors import (
    FlywheelError,
    InvalidWriteError,
    KubernetesApiError,
    RedisUnavailableError,
    StoreUnavailableError,
)
from flywheel.logs import get_logger
from flywheel.stores.incidents import StatusMutation, StatusUpdate, UpdateResult

log = get_logger(__name__)

# Final states of a Run that leave its Incident to a person.
UNREMEDIATED_STATES = frozenset({RunState.FAILED, RunState.TIMED_OUT})
# The Run's condition saying its Incident refused a write of the outcome as invalid (422).
INCIDENT_UPDATED = "IncidentUpdated"


class OutcomeRecorder:
    """Records what a final Run did, on the Incident, in Redis and in the history."""

    def __init__(
        self,
        repairs: RepairRecorder,
        incidents: IncidentStatusWriter,
        attempts: AttemptSink | None,
        tenant: Callable[[str], str],
        notifier: Notifier | None = None,
    ) -> None:
        self._notifier = notifier
        self._repairs = repairs
        self._incidents = incidents
        self._attempts = attempts
        self._tenant = tenant

    async def finish(self, ctx: RunPass, incident: IncidentView | None) -> None:
        """Record the outcome: the repair attempt, and the Incident's resolution or why it has none.

        Each part is idempotent; the condition OutcomeRecorded stays False (and the timer
        keeps coming back) until all of them are stored.
        """
        recorded = find_condition(ctx.status.conditions, OUTCOME_RECORDED)
        if recorded is not None and recorded.status is ConditionStatus.TRUE:
            return
        run, status = ctx.run, ctx.status
        state = ctx.state
        self._notify_finished(ctx)
        missing: list[str] = []
        notes: list[str] = []
        # Runs ended before acting because of a refusal did not remediate either: the namespace
        # did not opt in, or a write of the Run was refused as invalid.
        refused = status.error_code in (RunErrorCode.NAMESPACE_NOT_ENABLED.value, RunErrorCode.INVALID_WRITE.value)
        if not run.shadow and status.error_code == RunErrorCode.APPROVAL_EXPIRED.value:
            await self._count_timeout_ignored(ctx, incident, missing, notes)
        acted = not run.shadow and status.started_at is not None and status.attempt >= 1
        if not acted or state is RunState.CANCELLED:
            if not run.shadow and (state in UNREMEDIATED_STATES or refused):
                await self._report_unremediated(ctx, missing, notes)
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
        tenant = self._tenant(run.namespace)
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
        elif state in UNREMEDIATED_STATES and not missing:
            # Only once the failure is in the repair history: the Incident's next decision reads it.
            await self._report_unremediated(ctx, missing, notes)
        if missing:
            ctx.condition(
                OUTCOME_RECORDED, ConditionStatus.FALSE, "Retrying", "still to record: " + "; ".join(missing)
            )
        else:
            ctx.condition(OUTCOME_RECORDED, ConditionStatus.TRUE, "Recorded", "; ".join(notes) or "recorded")

    def _notify_finished(self, ctx: RunPass) -> None:
        """Run finished, with its state and error code (once per Run: the key is its uid)."""
        if self._notifier is None:
            return
        run, status, state = ctx.run, ctx.status, ctx.state
        error = f" ({status.error_code}: {status.error_detail or ''})" if status.error_code else ""
        self._notifier.submit(Notification(
            kind=NotificationKind.RUN_FINISHED.value, reason=f"Run{state.value}",
            title=f"Flywheel: Run {run.namespace}/{run.name} {state.value}",
            message=f"Run {run.name} ({run.spec.action.type.value} {run.spec.action.target.kind.value}/"
                    f"{run.spec.action.target.name}) ended {state.value}{error}",
            scope=run.namespace, occurred_at=status.completed_at or ctx.now,
            details={"namespace": run.namespace, "run": run.name, "runUid": run.uid, "state": state.value,
                     "errorCode": status.error_code, "errorDetail": status.error_detail,
                     "incident": run.spec.incident_ref.name, "incidentUid": run.spec.incident_ref.uid,
                     "attempt": status.attempt, "shadow": run.shadow},
            dedup_key=f"{NotificationKind.RUN_FINISHED.value}/{run.uid}",
        ))

    async def _resolve_incident(
        self, ctx: RunPass, key: str | None, tenant: str, missing: list[str], notes: list[str]
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
            own_status((update.incident or {}).get("status") or {}, IncidentStatus)
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

    async def _count_timeout_ignored(
        self, ctx: RunPass, incident: IncidentView | None, missing: list[str], notes: list[str]
    ) -> None:
        """Nobody decided before the Approval expired: the seeds' ``timeout_ignored`` disposition, once per Run."""
        run = ctx.run
        key = run.labels.get(LABEL_ANOMALY_KEY) or (incident.anomaly_key if incident is not None else None)
        if key is None:
            notes.append("no anomaly key: timeout_ignored not counted")
            return
        value = Disposition.TIMEOUT_IGNORED.value
        try:
            await self._repairs.record_disposition(self._tenant(run.namespace), key, value, f"{run.uid}:{value}",
                                                   ctx.status.completed_at or ctx.now)
        except RedisUnavailableError:
            missing.append(f"disposition {value} (Redis unavailable)")
            return
        notes.append(f"disposition {value} recorded")

    async def _report_unremediated(self, ctx: RunPass, missing: list[str], notes: list[str]) -> None:
        """Say on the Incident that its Run ended without remediating it, and that a person must."""
        run, status = ctx.run, ctx.status
        ref = run.spec.incident_ref
        outcome = {RunState.FAILED: "failed", RunState.CANCELLED: "was refused"}.get(ctx.state, "timed out")
        cause = status.steps[-1].message if status.steps else ""
        code = f"{status.error_code}: " if status.error_code else ""
        message = (
            f"Run {run.name} {outcome}: {code}{cause}; its decision is completed (the Incident's next "
            "decision follows, unless its ladder is exhausted)"
        )

        def mutation(body: Mapping[str, Any]) -> dict[str, Any] | None:
            return unremediated_patch(body, run_ref=ObjectRef(name=run.name, uid=run.uid), message=message, now=ctx.now)

        update = await self._update_incident(ctx, mutation, "condition", missing)
        if update is not None and update.result is UpdateResult.UPDATED:
            notes.append(f"Incident {ref.name} marked not remediated")
            ctx.event("Warning", "IncidentNotRemediated", f"Incident {ref.name}: {message}")

    async def _update_incident(
        self, ctx: RunPass, mutation: StatusMutation, what: str, missing: list[str]
    ) -> StatusUpdate | None:
        """Update the Run's Incident; None (and ``what`` still missing) if the API is unavailable."""
        run = ctx.run
        ref = run.spec.incident_ref
        try:
            return await self._incidents.update_status(run.namespace, ref.name, ref.uid, mutation)
        except InvalidWriteError as exc:
            # Refused as invalid, it would be refused however often it is retried: said once, on
            # the Run (condition and Warning Event), and the outcome is recorded without it.
            message = f"the {what} of Incident {ref.name} was refused as invalid and is not retried: {exc.describe()}"
            log.error("run_incident_update_refused", run=run.name, incident=ref.name, update=what, error=str(exc))
            ctx.condition(INCIDENT_UPDATED, ConditionStatus.FALSE, "InvalidWrite", message)
            ctx.event("Warning", "InvalidWrite", message)
            return None
        except (StoreUnavailableError, KubernetesApiError) as exc:
            log.warning("run_incident_update_pending", run=run.name, incident=ref.name, update=what, error=str(exc))
            missing.append(f"Incident {what} ({exc})")
            return None

    def hand_over_attempts(self, ctx: RunPass, incident: IncidentView | None) -> None:
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

