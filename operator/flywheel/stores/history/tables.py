"""Tables of the history database: a projection of Flywheel's custom resources.

Every row is keyed by what identifies it in Kubernetes (an object's uid, a journal step's
``(run uid, seq)``) or by an id its producer chose (audit events, repair attempts), so that
projecting the same thing twice writes it once. Nothing here references another table with a
foreign key: the projection arrives in any order (a Run's steps before its Run row after a
database outage, an Approval before its Run), and the custom resources stay the source of truth.

The Alembic migrations in ``flywheel/migrations`` create exactly these tables; a test compares
the two.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flywheel.api.common import DNS1123_LABEL_MAX_LENGTH, DNS1123_SUBDOMAIN_MAX_LENGTH, UID_MAX_LENGTH

# Deterministic constraint and index names, so that migrations and the models agree on them
# and a later migration can drop or alter one by name on PostgreSQL and SQLite alike.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME_LENGTH: Final = DNS1123_SUBDOMAIN_MAX_LENGTH
NAMESPACE_LENGTH: Final = DNS1123_LABEL_MAX_LENGTH
UID_LENGTH: Final = UID_MAX_LENGTH
ENUM_LENGTH: Final = 32
SHORT_TEXT_LENGTH: Final = 255
ANOMALY_KEY_LENGTH: Final = 16
TRACE_ID_LENGTH: Final = 32
ERROR_CODE_LENGTH: Final = 64
EVENT_ID_LENGTH: Final = 255


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL keeps the offset (``timestamptz``); SQLite has no timestamp type and SQLAlchemy
    stores naive text there. Normalising to UTC on the way in and re-attaching UTC on the way out
    makes both return the same aware datetimes, and refuses naive ones, whose meaning is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused: history timestamps are UTC-aware")
        utc = value.astimezone(UTC)
        # SQLite stores the text without an offset and compares it as text, which orders by
        # time only when every value is in the same zone.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JsonDocument = JSON().with_variant(JSONB(), "postgresql")


class HistoryBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime(), dict[str, Any]: JsonDocument}


class IncidentRow(HistoryBase):
    """One Incident, as last projected from its custom resource."""

    __tablename__ = "incidents"

    uid: Mapped[str] = mapped_column(String(UID_LENGTH), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime]
    alert_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    service: Mapped[str] = mapped_column(String(NAME_LENGTH))
    error_type: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    severity: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    source: Mapped[str] = mapped_column(String(NAME_LENGTH))
    summary: Mapped[str | None] = mapped_column(Text)
    target_kind: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    target_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    remediation_mode: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    phase: Mapped[str | None] = mapped_column(String(ENUM_LENGTH))
    anomaly_key: Mapped[str | None] = mapped_column(String(ANOMALY_KEY_LENGTH))
    escalation_level: Mapped[str | None] = mapped_column(String(ENUM_LENGTH))
    decision_id: Mapped[str | None] = mapped_column(String(ENUM_LENGTH))
    decision_source: Mapped[str | None] = mapped_column(String(ENUM_LENGTH))
    decision_action: Mapped[str | None] = mapped_column(String(ENUM_LENGTH))
    run_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    run_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    duplicate_of: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    disposition: Mapped[str | None] = mapped_column(String(ENUM_LENGTH))
    resolved_at: Mapped[datetime | None]
    # What the permanent fix was (spec.permanentFix, kept with the flag in status.anomaly).
    permanent_fix_description: Mapped[str | None] = mapped_column(Text)
    # Opaque to us (never compared); kept to tell which version of the object a row shows.
    resource_version: Mapped[str | None] = mapped_column(String(SHORT_TEXT_LENGTH))
    projected_at: Mapped[datetime]

    __table_args__ = (
        Index(None, "namespace", "phase"),
        Index(None, "namespace", "name"),
        Index(None, "anomaly_key"),
        Index(None, "created_at"),
    )


class RunRow(HistoryBase):
    """One Run, as last projected from its custom resource; its journal is in ``run_steps``."""

    __tablename__ = "runs"

    uid: Mapped[str] = mapped_column(String(UID_LENGTH), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime]
    incident_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    incident_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    action_type: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    target_kind: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    target_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    action_params: Mapped[dict[str, Any]]
    risk_level: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    requires_approval: Mapped[bool] = mapped_column(Boolean)
    mode: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    trace_id: Mapped[str] = mapped_column(String(TRACE_ID_LENGTH))
    trigger_type: Mapped[str | None] = mapped_column(String(SHORT_TEXT_LENGTH))
    trigger_ref: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    state: Mapped[str | None] = mapped_column(String(ENUM_LENGTH))
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    error_code: Mapped[str | None] = mapped_column(String(ERROR_CODE_LENGTH))
    error_detail: Mapped[str | None] = mapped_column(Text)
    approval_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    approval_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    resource_version: Mapped[str | None] = mapped_column(String(SHORT_TEXT_LENGTH))
    projected_at: Mapped[datetime]

    __table_args__ = (
        # `flywheel history -n NS --state S`, newest first.
        Index(None, "namespace", "state", "created_at"),
        # `flywheel timeline NAME -n NS` and `--incident NAME`.
        Index(None, "namespace", "name"),
        Index(None, "namespace", "incident_name"),
        Index(None, "incident_uid"),
        # Unfiltered listing and time-bounded metrics, newest first.
        Index(None, "created_at"),
    )


class RunStepRow(HistoryBase):
    """One journal entry of a Run. The Run's status keeps the latest 50; this table keeps all."""

    __tablename__ = "run_steps"

    run_uid: Mapped[str] = mapped_column(String(UID_LENGTH), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    result: Mapped[str] = mapped_column(String(SHORT_TEXT_LENGTH))
    at: Mapped[datetime]
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text)


class ApprovalRow(HistoryBase):
    """One Approval, as last projected from its custom resource."""

    __tablename__ = "approvals"

    uid: Mapped[str] = mapped_column(String(UID_LENGTH), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime]
    run_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    run_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    action_type: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    target_kind: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    target_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    risk_level: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    escalation_level: Mapped[str | None] = mapped_column(String(ENUM_LENGTH))
    reasoning: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime]
    decision: Mapped[str | None] = mapped_column(String(ENUM_LENGTH))
    reason: Mapped[str | None] = mapped_column(Text)
    phase: Mapped[str | None] = mapped_column(String(ENUM_LENGTH))
    # The approver's identity as the API server authenticated it: the accountability record of
    # the four-eyes rule, so it is kept verbatim (free text around it is redacted).
    decided_by: Mapped[str | None] = mapped_column(String(1024))
    decided_at: Mapped[datetime | None]
    message: Mapped[str | None] = mapped_column(Text)
    resource_version: Mapped[str | None] = mapped_column(String(SHORT_TEXT_LENGTH))
    projected_at: Mapped[datetime]

    __table_args__ = (
        Index(None, "run_uid"),
        Index(None, "namespace", "phase"),
        Index(None, "created_at"),
    )


class AuditEventRow(HistoryBase):
    """Something that happened and must be on record: a decision, a notification, a refusal.

    ``event_id`` is chosen by the producer and stable across its retries, so an event is stored
    once however many times it is submitted. The payload is redacted before it gets here.
    """

    __tablename__ = "audit_events"

    event_id: Mapped[str] = mapped_column(String(EVENT_ID_LENGTH), primary_key=True)
    kind: Mapped[str] = mapped_column(String(SHORT_TEXT_LENGTH))
    occurred_at: Mapped[datetime]
    namespace: Mapped[str | None] = mapped_column(String(NAMESPACE_LENGTH))
    run_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    incident_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    actor: Mapped[str | None] = mapped_column(String(1024))
    # e.g. Delivered / Failed for a notification, Approved / Rejected for a decision.
    outcome: Mapped[str | None] = mapped_column(String(SHORT_TEXT_LENGTH))
    summary: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]]
    recorded_at: Mapped[datetime]

    __table_args__ = (
        Index(None, "run_uid", "occurred_at"),
        Index(None, "incident_uid", "occurred_at"),
        Index(None, "kind", "occurred_at"),
        Index(None, "occurred_at"),
    )


class NotificationDeliveryRow(HistoryBase):
    """A notification delivered to the webhook, or its final failure, keyed by its de-duplication key."""

    __tablename__ = "notification_deliveries"

    delivery_id: Mapped[str] = mapped_column(String(EVENT_ID_LENGTH), primary_key=True)
    kind: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    reason: Mapped[str] = mapped_column(String(SHORT_TEXT_LENGTH))
    title: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    namespace: Mapped[str | None] = mapped_column(String(NAMESPACE_LENGTH))
    run_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    incident_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    channel: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    outcome: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]]
    recorded_at: Mapped[datetime]

    __table_args__ = (
        Index(None, "run_uid", "occurred_at"),
        Index(None, "incident_uid", "occurred_at"),
        Index(None, "kind", "occurred_at"),
    )


class RepairExecutionRow(HistoryBase):
    """The outcome of one attempt of a Run's action, keyed by (Run uid, attempt)."""

    __tablename__ = "repair_executions"

    run_uid: Mapped[str] = mapped_column(String(UID_LENGTH), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))
    incident_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    anomaly_key: Mapped[str] = mapped_column(String(ANOMALY_KEY_LENGTH))
    action: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    target_kind: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    target_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    shadow: Mapped[bool] = mapped_column(Boolean)
    succeeded: Mapped[bool] = mapped_column(Boolean)
    error_code: Mapped[str | None] = mapped_column(String(ERROR_CODE_LENGTH))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    recorded_at: Mapped[datetime]

    __table_args__ = (
        # Covering index for success rates per anomaly and action: the count of attempts and of
        # successes is answered from the index alone, without touching the table.
        Index(None, "anomaly_key", "action", "succeeded"),
        # The 24 h / 7 d execution success rate of the flywheel-health metrics.
        Index(None, "finished_at", "succeeded"),
    )


class KnowledgeEntryRow(HistoryBase):
    """What was learned when an Incident was resolved: one entry per Incident."""

    __tablename__ = "knowledge_entries"

    incident_uid: Mapped[str] = mapped_column(String(UID_LENGTH), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))
    incident_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    anomaly_key: Mapped[str | None] = mapped_column(String(ANOMALY_KEY_LENGTH))
    action: Mapped[str | None] = mapped_column(String(ENUM_LENGTH))
    outcome: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    disposition: Mapped[str | None] = mapped_column(String(ENUM_LENGTH))
    root_cause: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    resolved_at: Mapped[datetime]
    recorded_at: Mapped[datetime]

    __table_args__ = (
        Index(None, "anomaly_key"),
        Index(None, "resolved_at"),
    )


ALL_TABLES: Final[tuple[str, ...]] = tuple(HistoryBase.metadata.tables)

__all__ = [
    "ALL_TABLES",
    "ApprovalRow",
    "AuditEventRow",
    "HistoryBase",
    "IncidentRow",
    "KnowledgeEntryRow",
    "RepairExecutionRow",
    "RunRow",
    "RunStepRow",
    "UtcDateTime",
]
