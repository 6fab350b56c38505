"""Value objects of the history: what producers hand in, and what the reviewer's queries return."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from flywheel.api.enums import ActionType, RunState
from flywheel.api.times import format_precise_time
from flywheel.errors import InvalidInputError
from flywheel.stores.history.tables import EVENT_ID_LENGTH, SHORT_TEXT_LENGTH, RunRow

NOTIFICATION_KIND: Final = "notification"
"""Audit event kind of a notification sent about a Run; the timeline shows these."""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Something to keep on record about a Run, an Incident or an Approval.

    ``event_id`` must be stable across retries of the same event (derive it from the object's
    uid and what happened, e.g. ``f"{run_uid}:notification:run-finished"``): the event is stored
    once however often it is submitted. ``kind`` is a dotted verb such as ``approval.decided``;
    kind ``notification`` appears in the Run's timeline. ``payload`` is redacted before storage.
    """

    event_id: str
    kind: str
    occurred_at: datetime
    summary: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    namespace: str | None = None
    run_uid: str | None = None
    incident_uid: str | None = None
    actor: str | None = None
    outcome: str | None = None

    def __post_init__(self) -> None:
        if not 0 < len(self.event_id) <= EVENT_ID_LENGTH:
            raise InvalidInputError("event_id", f"must be 1 to {EVENT_ID_LENGTH} characters")
        if not 0 < len(self.kind) <= SHORT_TEXT_LENGTH:
            raise InvalidInputError("kind", f"must be 1 to {SHORT_TEXT_LENGTH} characters")
        if self.outcome is not None and len(self.outcome) > SHORT_TEXT_LENGTH:
            raise InvalidInputError("outcome", f"must be at most {SHORT_TEXT_LENGTH} characters")
        _require_aware("occurred_at", self.occurred_at)


class DeliveryOutcome(StrEnum):
    """How a notification's delivery ended."""

    DELIVERED = "Delivered"  # the receiver accepted it (2xx)
    FAILED = "Failed"  # refused for good, or still failing after the retries


@dataclass(frozen=True, slots=True)
class NotificationDelivery:
    """One notification's delivery to the webhook, or its final failure; stored once per ``delivery_id``.

    ``delivery_id`` is the notification's de-duplication key, so a step notified twice (two
    replicas, a pass run again after a restart) is on record once.
    """

    delivery_id: str
    kind: str
    reason: str
    title: str
    message: str
    occurred_at: datetime
    finished_at: datetime
    outcome: DeliveryOutcome
    attempts: int
    channel: str
    namespace: str | None = None
    run_uid: str | None = None
    incident_uid: str | None = None
    error: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < len(self.delivery_id) <= EVENT_ID_LENGTH:
            raise InvalidInputError("delivery_id", f"must be 1 to {EVENT_ID_LENGTH} characters")
        if self.attempts < 0:
            raise InvalidInputError("attempts", f"must be >= 0, got {self.attempts}")
        _require_aware("occurred_at", self.occurred_at)
        _require_aware("finished_at", self.finished_at)


@dataclass(frozen=True, slots=True)
class RepairExecution:
    """The outcome of one attempt of a Run's action on its target; stored once per (run, attempt)."""

    run_uid: str
    attempt: int
    namespace: str
    incident_uid: str
    anomaly_key: str
    action: ActionType
    target_kind: str
    target_name: str
    succeeded: bool
    started_at: datetime
    finished_at: datetime
    error_code: str | None = None
    shadow: bool = False
    latency_ms: int | None = None

    def __post_init__(self) -> None:
        if self.attempt < 1:
            raise InvalidInputError("attempt", f"must be >= 1, got {self.attempt}")
        _require_aware("started_at", self.started_at)
        _require_aware("finished_at", self.finished_at)


@dataclass(frozen=True, slots=True)
class KnowledgeEntry:
    """What was learned when an Incident was resolved; one per Incident, the latest one wins."""

    incident_uid: str
    namespace: str
    incident_name: str
    outcome: str
    resolved_at: datetime
    anomaly_key: str | None = None
    action: ActionType | None = None
    disposition: str | None = None
    root_cause: str | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        _require_aware("resolved_at", self.resolved_at)


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None:
        raise InvalidInputError(name, "must be timezone-aware")


# --------------------------------------------------------------------------- query results


class RunOutcome(StrEnum):
    """How a finished Run ended: the ``--outcome`` filter of ``flywheel history``."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEDOUT = "timedout"

    @property
    def state(self) -> RunState:
        return _OUTCOME_STATES[self]

    @classmethod
    def of(cls, state: str | None) -> RunOutcome | None:
        """The outcome of a Run in ``state``; ``None`` while it is not finished."""
        return next((outcome for outcome, final in _OUTCOME_STATES.items() if final == state), None)


_OUTCOME_STATES: Final = {
    RunOutcome.SUCCEEDED: RunState.SUCCEEDED,
    RunOutcome.FAILED: RunState.FAILED,
    RunOutcome.CANCELLED: RunState.CANCELLED,
    RunOutcome.TIMEDOUT: RunState.TIMED_OUT,
}


def iso_timestamp(value: datetime | None) -> str | None:
    return format_precise_time(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One Run as the reviewer sees it in ``flywheel history``."""

    uid: str
    namespace: str
    name: str
    incident_name: str
    incident_uid: str
    action_type: str
    target_kind: str
    target_name: str
    risk_level: str
    mode: str
    trace_id: str
    state: str | None
    attempt: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error_code: str | None
    error_detail: str | None

    @property
    def outcome(self) -> RunOutcome | None:
        return RunOutcome.of(self.state)

    @property
    def duration(self) -> timedelta | None:
        """From start to completion; ``None`` until both are known."""
        if self.started_at is None or self.completed_at is None:
            return None
        return self.completed_at - self.started_at

    @classmethod
    def from_row(cls, row: RunRow) -> RunSummary:
        return cls(
            uid=row.uid,
            namespace=row.namespace,
            name=row.name,
            incident_name=row.incident_name,
            incident_uid=row.incident_uid,
            action_type=row.action_type,
            target_kind=row.target_kind,
            target_name=row.target_name,
            risk_level=row.risk_level,
            mode=row.mode,
            trace_id=row.trace_id,
            state=row.state,
            attempt=row.attempt,
            created_at=row.created_at,
            started_at=row.started_at,
            completed_at=row.completed_at,
            error_code=row.error_code,
            error_detail=row.error_detail,
        )

    def to_json(self) -> dict[str, Any]:
        duration = self.duration
        return {
            "uid": self.uid,
            "namespace": self.namespace,
            "name": self.name,
            "incident": {"name": self.incident_name, "uid": self.incident_uid},
            "action": {
                "type": self.action_type,
                "target": {"kind": self.target_kind, "name": self.target_name},
            },
            "riskLevel": self.risk_level,
            "mode": self.mode,
            "traceId": self.trace_id,
            "state": self.state,
            "outcome": self.outcome.value if self.outcome else None,
            "attempt": self.attempt,
            "createdAt": iso_timestamp(self.created_at),
            "startedAt": iso_timestamp(self.started_at),
            "completedAt": iso_timestamp(self.completed_at),
            "durationSeconds": duration.total_seconds() if duration is not None else None,
            "errorCode": self.error_code,
            "errorDetail": self.error_detail,
        }


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of ``list_runs``: the items and how many match in total."""

    items: list[RunSummary]
    total: int
    limit: int
    offset: int

    @property
    def next_offset(self) -> int | None:
        following = self.offset + len(self.items)
        return following if following < self.total else None

    def to_json(self) -> dict[str, Any]:
        return {
            "items": [item.to_json() for item in self.items],
            "total": self.total,
            "limit": self.limit,
            "offset": self.offset,
            "nextOffset": self.next_offset,
        }


class TimelineKind(StrEnum):
    """What a timeline entry is; also the tie-break order of entries at the same instant."""

    CREATED = "created"
    STARTED = "started"
    APPROVAL = "approval"
    STEP = "step"
    NOTIFICATION = "notification"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    at: datetime
    kind: TimelineKind
    title: str
    result: str | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": iso_timestamp(self.at),
            "kind": self.kind.value,
            "title": self.title,
            "result": self.result,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class RunTimeline:
    """A Run and everything that happened to it, oldest first."""

    run: RunSummary
    entries: list[TimelineEntry]

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run.to_json(), "timeline": [entry.to_json() for entry in self.entries]}


__all__ = [
    "NOTIFICATION_KIND",
    "AuditEvent",
    "DeliveryOutcome",
    "KnowledgeEntry",
    "NotificationDelivery",
    "RepairExecution",
    "RunOutcome",
    "RunPage",
    "RunSummary",
    "RunTimeline",
    "TimelineEntry",
    "TimelineKind",
    "iso_timestamp",
]
