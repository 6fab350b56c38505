"""The stores the Run controller acts through, as Protocols (in-memory stand-ins in the unit tests)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from flywheel.api.enums import ActionType, TargetKind
from flywheel.controllers.approval import ApprovalGate
from flywheel.domain.actions import ProposedAction
from flywheel.domain.notifications import Notifier
from flywheel.domain.run_state import RolloutFacts
from flywheel.stores.incidents import StatusMutation, StatusUpdate
from flywheel.stores.workloads import ActionResult, ActionStamp


class RepairRecorder(Protocol):
    """Where outcomes are counted (``flywheel.stores.anomaly_redis.AnomalyStore``)."""

    async def record_repair_attempt(
        self, tenant: str, key: str, action: str, success: bool, attempt_id: str, at: datetime
    ) -> bool: ...

    async def record_disposition(
        self, tenant: str, key: str, disposition: str, disposition_id: str, at: datetime | None = None
    ) -> bool: ...


@dataclass(frozen=True)
class AttemptRecord:
    """The outcome of one attempt of a Run's action, for the history database (repair executions).

    Handed over once the attempt is decided (verified, failed, timed out, or retried). A pass
    may run twice, so the same record can be handed over twice: the database stores it once
    per (``run_uid``, ``attempt``).
    """

    run_uid: str
    attempt: int
    namespace: str
    incident_uid: str
    anomaly_key: str | None
    action: ActionType
    target_kind: TargetKind
    target_name: str
    succeeded: bool
    started_at: datetime
    finished_at: datetime
    error_code: str | None
    shadow: bool

    @property
    def latency_ms(self) -> int:
        return max(int((self.finished_at - self.started_at).total_seconds() * 1000), 0)


class AttemptSink(Protocol):
    """Where finished attempts go (the durable history, SPEC §5). Must not block.

    Raise a :class:`FlywheelError` when the record cannot even be queued; the Run goes on.
    """

    def record_attempt(self, record: AttemptRecord) -> None: ...


class WorkloadActions(Protocol):
    """Acting on and reading workloads (``flywheel.stores.workloads.WorkloadStore``)."""

    async def apply(
        self, namespace: str, action: ProposedAction, stamp: ActionStamp, *, dry_run: bool, max_replicas: int
    ) -> ActionResult: ...

    async def rollout(self, namespace: str, kind: TargetKind, name: str) -> RolloutFacts: ...


class IncidentStatusWriter(Protocol):
    """Reading Incidents and updating their status (``flywheel.stores.incidents.IncidentStatusStore``)."""

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def update_status(
        self, namespace: str, name: str, uid: str, mutation: StatusMutation
    ) -> StatusUpdate: ...


@dataclass(frozen=True)
class RunStores:
    """The stores the Run controller acts through, built once per operator.

    Without an approval gate (unit tests of the state machine) a Run that needs approval
    simply keeps waiting.
    """

    workloads: WorkloadActions
    incidents: IncidentStatusWriter
    attempts: AttemptSink | None = None
    approvals: ApprovalGate | None = None
    notifier: Notifier | None = None

