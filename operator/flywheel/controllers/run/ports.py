"""The stores the Run controller acts through, as Protocols (in-memory stand-ins in the unit tests)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from flywheel.api.enums import ActionType, TargetKind
from flywheel.controllers.approval import ApprovalGate
from flywheel.controllers.run.recheck import WorkloadReader
from flywheel.controllers.run.symptom_check import FiringAlerts, PodHealth
from flywheel.controllers.run_binding import RunBinder
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


class NamespaceGate(Protocol):
    """Whether Flywheel may act in a namespace (``flywheel.stores.namespaces.NamespaceLabels``)."""

    async def refusal(self, namespace: str) -> str | None: ...


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
    # The namespace opt-in; None (unit tests of the state machine): every namespace may be acted in.
    namespaces: NamespaceGate | None = None
    # The symptom check after the rollout (off: a complete rollout succeeds at once, as before).
    symptom_checks: bool = False
    pods: PodHealth | None = None
    prometheus: FiringAlerts | None = None
    # Reads the workload's stamp before a Run is cancelled as already resolved.
    reader: WorkloadReader | None = None
    # Verifies each Run's binding to a Flywheel decision before it may act; None: not checked.
    binder: RunBinder | None = None
    # Run finished: handed over without waiting (delivery is elsewhere).
    notifier: Notifier | None = None

