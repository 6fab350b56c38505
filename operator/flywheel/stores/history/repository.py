"""The history database: idempotent projections of Flywheel's resources, and the reviewer's queries.

Writes are upserts keyed by what identifies a thing in Kubernetes — an object's uid, a journal
step's ``(run uid, seq)`` — or by an id its producer keeps stable across retries (audit events,
repair attempts), through the dialect's ``INSERT ... ON CONFLICT`` on PostgreSQL and SQLite
alike. Projecting the same body twice therefore stores it once, and a body projected after a
database outage simply catches the rows up.

Secrets and personal data are redacted (``flywheel.domain.redaction``) from every free-text
field and every audit payload before they are written.

Methods are synchronous (SQLAlchemy Core over a sync engine); the operator calls them from a
worker thread through :class:`flywheel.stores.history.outbox.HistoryWriter`. They raise
:class:`DatabaseUnavailableError` when the database cannot be reached (or has no schema yet),
:class:`InvalidInputError` for a body that can never be stored, and let anything else — a bug —
propagate unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any, Final, TypeVar

from pydantic import AwareDatetime, BaseModel, TypeAdapter, ValidationError
from sqlalchemy import ColumnElement, Connection, Engine, Table, func, or_, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from flywheel.api.approval import ApprovalSpec, ApprovalStatus
from flywheel.api.enums import ActionType, ApprovalPhase, RunState
from flywheel.api.incident import IncidentSpec, IncidentStatus
from flywheel.api.run import RunSpec, RunStatus
from flywheel.domain.redaction import redact_optional_text, redact_payload
from flywheel.domain.signature import anomaly_key
from flywheel.errors import ConfigurationError, InvalidInputError
from flywheel.logs import get_logger
from flywheel.stores.history.engine import as_unavailable, describe_database_url
from flywheel.stores.history.records import (
    NOTIFICATION_KIND,
    AuditEvent,
    KnowledgeEntry,
    NotificationDelivery,
    RepairExecution,
    RunOutcome,
    RunPage,
    RunSummary,
    RunTimeline,
    TimelineEntry,
    TimelineKind,
    iso_timestamp,
)
from flywheel.stores.history.tables import (
    ApprovalRow,
    AuditEventRow,
    HistoryBase,
    IncidentRow,
    KnowledgeEntryRow,
    NotificationDeliveryRow,
    RepairExecutionRow,
    RunRow,
    RunStepRow,
)

_log = get_logger(__name__)

DEFAULT_PAGE_SIZE: Final = 20
MAX_PAGE_SIZE: Final = 500

_AWARE_DATETIME: Final = TypeAdapter(AwareDatetime)
_Model = TypeVar("_Model", bound=BaseModel)


def utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- parsing bodies


def plain_copy(value: Any) -> Any:
    """A deep copy made of plain dicts and lists, from any mapping or sequence view.

    Kopf hands handlers live, read-only views of a body; a copy taken at once is what the
    body was at that moment, whatever happens to the object afterwards.
    """
    if isinstance(value, Mapping):
        return {str(key): plain_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_copy(item) for item in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_timestamp(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def _storable_text(text: str) -> str:
    # PostgreSQL text cannot hold NUL characters; nothing a reviewer reads needs them.
    return text.replace("\x00", "")


def _storable_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {_storable_text(key): _storable_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable_json(item) for item in value]
    if isinstance(value, str):
        return _storable_text(value)
    return value


def _clean_text(text: str | None) -> str | None:
    """Free text as it may be stored: redacted, without NUL characters."""
    redacted = redact_optional_text(text)
    return _storable_text(redacted) if redacted is not None else None


def _clean_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A payload as it may be stored: JSON types only, redacted, without NUL characters."""
    as_json = json.loads(json.dumps(plain_copy(payload), default=_json_default))
    cleaned = _storable_json(redact_payload(as_json))
    return cleaned if isinstance(cleaned, dict) else {"value": cleaned}


@dataclass(frozen=True, slots=True)
class _Metadata:
    uid: str
    name: str
    namespace: str
    created_at: datetime
    resource_version: str | None


def _metadata(kind: str, body: Mapping[str, Any]) -> _Metadata:
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(f"{kind}.metadata", "missing")
    for required in ("uid", "name", "namespace", "creationTimestamp"):
        if not metadata.get(required):
            raise InvalidInputError(f"{kind}.metadata.{required}", "missing")
    try:
        created_at = _AWARE_DATETIME.validate_python(metadata["creationTimestamp"])
    except ValidationError as exc:
        raise InvalidInputError(f"{kind}.metadata.creationTimestamp", str(exc.errors()[0]["msg"])) from exc
    version = metadata.get("resourceVersion")
    return _Metadata(
        uid=str(metadata["uid"]),
        name=str(metadata["name"]),
        namespace=str(metadata["namespace"]),
        created_at=created_at,
        resource_version=str(version) if version is not None else None,
    )


def _model(model: type[_Model], kind: str, part: str, data: Any) -> _Model:
    try:
        return model.model_validate(data or {})
    except ValidationError as exc:
        error = exc.errors()[0]
        location = ".".join(str(item) for item in error["loc"])
        raise InvalidInputError(f"{kind}.{part}.{location}".rstrip("."), str(error["msg"])) from exc


# --------------------------------------------------------------------------- the store


class HistoryStore:
    """Projections into, and reviewer queries over, the history database."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._clock = clock
        self._database = describe_database_url(engine.url)
        backend = engine.dialect.name
        if backend == "postgresql":
            self._insert: Callable[[Table], Any] = postgresql.insert
        elif backend == "sqlite":
            self._insert = sqlite.insert
        else:
            raise ConfigurationError(f"history database must be PostgreSQL or SQLite, got {backend!r}")
        # Upsert statements by (table, columns): built once, executed with each row's values.
        self._upserts: dict[tuple[str, frozenset[str]], Any] = {}
        # The connection of an open batch (see batch()): writes join its transaction, and the
        # rows of each statement wait to go out in one executemany when the batch ends.
        self._batch: Connection | None = None
        self._deferred: dict[tuple[str, str, frozenset[str]], tuple[Any, dict[tuple[Any, ...], dict[str, Any]]]] = {}

    @property
    def database(self) -> str:
        """The database URL without its password."""
        return self._database

    def close(self) -> None:
        """Close pooled connections."""
        self._engine.dispose()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self._batch is not None:
            yield self._batch
            return
        try:
            with self._engine.begin() as connection:
                yield connection
        except sa_exc.SQLAlchemyError as exc:
            unavailable = as_unavailable(exc, self._database)
            if unavailable is not None:
                raise unavailable from exc
            raise

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside goes into one transaction: all of them are stored, or none.

        One commit per item made the history writer the operator's busiest thread in an alert
        storm (bench/e2e_throughput.py); the writer batches and falls back to one item per
        transaction when a batch is refused, to find the item at fault.
        """
        with self._transaction() as connection:
            self._batch = connection
            self._deferred = {}
            try:
                yield
                # One executemany per statement: per-row execute() calls were most of the writer's CPU.
                for statement, rows in self._deferred.values():
                    connection.execute(statement, list(rows.values()))
            finally:
                self._batch = None
                self._deferred = {}

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        try:
            with Session(self._engine) as session:
                yield session
        except sa_exc.SQLAlchemyError as exc:
            unavailable = as_unavailable(exc, self._database)
            if unavailable is not None:
                raise unavailable from exc
            raise

    def _upsert(self, connection: Connection, table: Table, values: Mapping[str, Any]) -> None:
        """Insert, or overwrite every non-key column: the newest projection of an object wins."""
        cache_key = (table.name, frozenset(values))
        statement = self._upserts.get(cache_key)
        if statement is None:
            keys = [column.name for column in table.primary_key.columns]
            insert = self._insert(table)
            statement = insert.on_conflict_do_update(
                index_elements=keys,
                set_={name: insert.excluded[name] for name in values if name not in keys},
            )
            self._upserts[cache_key] = statement
        self._execute(connection, ("upsert", *cache_key), statement, table, [values], newest_wins=True)

    def _execute(
        self,
        connection: Connection,
        key: tuple[str, str, frozenset[str]],
        statement: Any,
        table: Table,
        rows: Sequence[Mapping[str, Any]],
        *,
        newest_wins: bool,
    ) -> None:
        """Execute now, or (inside a batch) when the batch ends with one row per primary key:
        the newest (upserts) or the first (facts inserted once), as executing them in turn would."""
        if self._batch is None:
            connection.execute(statement, dict(rows[0]) if len(rows) == 1 else [dict(row) for row in rows])
            return
        _, pending = self._deferred.setdefault(key, (statement, {}))
        primary_key = [column.name for column in table.primary_key.columns]
        for row in rows:
            row_key = tuple(row[name] for name in primary_key)
            if newest_wins or row_key not in pending:
                pending[row_key] = dict(row)

    def _insert_once(self, connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows whose key is not stored yet; existing rows are facts and stay as they are."""
        if not rows:
            return
        keys = [column.name for column in table.primary_key.columns]
        statement = self._insert(table).on_conflict_do_nothing(index_elements=keys)
        self._execute(connection, ("insert", table.name, frozenset(rows[0])), statement, table, rows, newest_wins=False)

    # ---------------------------------------------------------------- projections

    def upsert_incident(self, body: Mapping[str, Any]) -> None:
        """Project an Incident custom resource (its latest version wins)."""
        body = plain_copy(body)
        meta = _metadata("Incident", body)
        spec = _model(IncidentSpec, "Incident", "spec", body.get("spec"))
        status = _model(IncidentStatus, "Incident", "status", body.get("status"))
        key = (
            status.anomaly.key
            if status.anomaly is not None
            else anomaly_key(spec.alert_name, spec.service, meta.namespace, spec.error_type)
        )
        decision = status.decision
        values = {
            "uid": meta.uid,
            "namespace": meta.namespace,
            "name": meta.name,
            "created_at": meta.created_at,
            "alert_name": spec.alert_name,
            "service": spec.service,
            "error_type": spec.error_type,
            "severity": spec.severity.value,
            "source": spec.source,
            "summary": _clean_text(spec.summary),
            "target_kind": spec.target_ref.kind.value,
            "target_name": spec.target_ref.name,
            "remediation_mode": spec.remediation.mode.value,
            "phase": status.phase.value if status.phase else None,
            "anomaly_key": key,
            "escalation_level": (
                status.anomaly.escalation_level.value
                if status.anomaly is not None and status.anomaly.escalation_level is not None
                else None
            ),
            "decision_id": decision.id if decision else None,
            "decision_source": decision.source.value if decision and decision.source else None,
            "decision_action": decision.action.type.value if decision and decision.action else None,
            "run_name": status.run_ref.name if status.run_ref else None,
            "run_uid": status.run_ref.uid if status.run_ref else None,
            "duplicate_of": status.duplicate_of,
            "disposition": status.disposition.value if status.disposition else None,
            "resolved_at": status.resolved_at,
            "permanent_fix_description": _clean_text(
                (status.anomaly.permanent_fix_description if status.anomaly is not None else None)
                or (spec.permanent_fix.description if spec.permanent_fix is not None else None)
            ),
            "resource_version": meta.resource_version,
            "projected_at": self._clock(),
        }
        with self._transaction() as connection:
            self._upsert(connection, _table(IncidentRow), values)
        _log.debug("incident_projected", namespace=meta.namespace, name=meta.name, uid=meta.uid)

    def upsert_run(self, body: Mapping[str, Any]) -> None:
        """Project a Run custom resource: its row (latest version wins) and its journal steps.

        Steps are keyed by (Run uid, seq) and never rewritten, so steps that have since been
        dropped from the bounded status journal stay in the database, and projecting the same
        body again adds nothing.
        """
        body = plain_copy(body)
        meta = _metadata("Run", body)
        spec = _model(RunSpec, "Run", "spec", body.get("spec"))
        status = _model(RunStatus, "Run", "status", body.get("status"))
        params = spec.action.params.model_dump(mode="json", exclude_none=True) if spec.action.params else {}
        values = {
            "uid": meta.uid,
            "namespace": meta.namespace,
            "name": meta.name,
            "created_at": meta.created_at,
            "incident_name": spec.incident_ref.name,
            "incident_uid": spec.incident_ref.uid,
            "action_type": spec.action.type.value,
            "target_kind": spec.action.target.kind.value,
            "target_name": spec.action.target.name,
            "action_params": params,
            "risk_level": spec.risk_level.value,
            "requires_approval": spec.requires_approval,
            "mode": spec.mode.value,
            "trace_id": spec.trace_id,
            "trigger_type": spec.trigger.type if spec.trigger else None,
            "trigger_ref": spec.trigger.ref if spec.trigger else None,
            "state": status.state.value if status.state else None,
            "attempt": status.attempt,
            "started_at": status.started_at,
            "completed_at": status.completed_at,
            "error_code": status.error_code,
            "error_detail": _clean_text(status.error_detail),
            "approval_name": status.approval_ref.name if status.approval_ref else None,
            "approval_uid": status.approval_ref.uid if status.approval_ref else None,
            "resource_version": meta.resource_version,
            "projected_at": self._clock(),
        }
        steps = [
            {
                "run_uid": meta.uid,
                "seq": step.seq,
                "name": step.name,
                "result": step.result,
                "at": step.at,
                "latency_ms": step.latency_ms,
                "message": _clean_text(step.message),
            }
            for step in status.steps
        ]
        with self._transaction() as connection:
            self._upsert(connection, _table(RunRow), values)
            self._insert_once(connection, _table(RunStepRow), steps)
        _log.debug(
            "run_projected", namespace=meta.namespace, name=meta.name, uid=meta.uid, state=values["state"]
        )

    def upsert_approval(self, body: Mapping[str, Any]) -> None:
        """Project an Approval custom resource (its latest version wins)."""
        body = plain_copy(body)
        meta = _metadata("Approval", body)
        spec = _model(ApprovalSpec, "Approval", "spec", body.get("spec"))
        status = _model(ApprovalStatus, "Approval", "status", body.get("status"))
        values = {
            "uid": meta.uid,
            "namespace": meta.namespace,
            "name": meta.name,
            "created_at": meta.created_at,
            "run_name": spec.run_ref.name,
            "run_uid": spec.run_ref.uid,
            "action_type": spec.action.type.value,
            "target_kind": spec.action.target.kind.value,
            "target_name": spec.action.target.name,
            "risk_level": spec.risk_level.value,
            "escalation_level": spec.escalation_level.value if spec.escalation_level else None,
            "reasoning": _clean_text(spec.reasoning),
            "expires_at": spec.expires_at,
            "decision": spec.decision.value if spec.decision else None,
            "reason": _clean_text(spec.reason),
            "phase": status.phase.value if status.phase else None,
            "decided_by": status.decided_by,
            "decided_at": status.decided_at,
            "message": _clean_text(status.message),
            "resource_version": meta.resource_version,
            "projected_at": self._clock(),
        }
        with self._transaction() as connection:
            self._upsert(connection, _table(ApprovalRow), values)
        _log.debug("approval_projected", namespace=meta.namespace, name=meta.name, uid=meta.uid)

    def add_audit_event(self, event: AuditEvent) -> None:
        """Store an audit event once; a retry with the same ``event_id`` changes nothing."""
        row = {
            "event_id": event.event_id,
            "kind": event.kind,
            "occurred_at": event.occurred_at,
            "namespace": event.namespace,
            "run_uid": event.run_uid,
            "incident_uid": event.incident_uid,
            "actor": event.actor,
            "outcome": event.outcome,
            "summary": _clean_text(event.summary),
            "payload": _clean_payload(event.payload),
            "recorded_at": self._clock(),
        }
        with self._transaction() as connection:
            self._insert_once(connection, _table(AuditEventRow), [row])

    def add_notification_delivery(self, delivery: NotificationDelivery) -> None:
        """Store a notification's delivery once; the same ``delivery_id`` again changes nothing."""
        row = {
            "delivery_id": delivery.delivery_id,
            "kind": delivery.kind,
            "reason": delivery.reason,
            "title": _clean_text(delivery.title) or "",
            "message": _clean_text(delivery.message) or "",
            "namespace": delivery.namespace,
            "run_uid": delivery.run_uid,
            "incident_uid": delivery.incident_uid,
            "channel": delivery.channel,
            "outcome": delivery.outcome.value,
            "attempts": delivery.attempts,
            "error": _clean_text(delivery.error),
            "occurred_at": delivery.occurred_at,
            "finished_at": delivery.finished_at,
            "payload": _clean_payload(delivery.payload),
            "recorded_at": self._clock(),
        }
        with self._transaction() as connection:
            self._insert_once(connection, _table(NotificationDeliveryRow), [row])

    def add_repair_execution(self, execution: RepairExecution) -> None:
        """Store the outcome of one attempt once; a retry of the same (run, attempt) changes nothing."""
        row = {
            "run_uid": execution.run_uid,
            "attempt": execution.attempt,
            "namespace": execution.namespace,
            "incident_uid": execution.incident_uid,
            "anomaly_key": execution.anomaly_key,
            "action": ActionType(execution.action).value,
            "target_kind": execution.target_kind,
            "target_name": execution.target_name,
            "shadow": execution.shadow,
            "succeeded": execution.succeeded,
            "error_code": execution.error_code,
            "started_at": execution.started_at,
            "finished_at": execution.finished_at,
            "latency_ms": execution.latency_ms,
            "recorded_at": self._clock(),
        }
        with self._transaction() as connection:
            self._insert_once(connection, _table(RepairExecutionRow), [row])

    def add_knowledge_entry(self, entry: KnowledgeEntry) -> None:
        """Store what was learned from an Incident; a later entry for the same Incident replaces it.

        Replacing (rather than keeping the first) lets a root cause written after an automatic
        resolution reach the knowledge base.
        """
        values = {
            "incident_uid": entry.incident_uid,
            "namespace": entry.namespace,
            "incident_name": entry.incident_name,
            "anomaly_key": entry.anomaly_key,
            "action": ActionType(entry.action).value if entry.action is not None else None,
            "outcome": entry.outcome,
            "disposition": entry.disposition,
            "root_cause": _clean_text(entry.root_cause),
            "note": _clean_text(entry.note),
            "resolved_at": entry.resolved_at,
            "recorded_at": self._clock(),
        }
        with self._transaction() as connection:
            self._upsert(connection, _table(KnowledgeEntryRow), values)

    # ---------------------------------------------------------------- reviewer queries

    def projected_versions(self, kind: str, uids: Sequence[str]) -> dict[str, str | None]:
        """The resourceVersion last projected of each of these objects (``incident``, ``run``,
        ``approval``); an object never projected is absent."""
        models: dict[str, type[IncidentRow | RunRow | ApprovalRow]] = {
            "incident": IncidentRow, "run": RunRow, "approval": ApprovalRow,
        }
        model = models.get(kind)
        if model is None:
            raise InvalidInputError("kind", f"must be one of {sorted(models)}, got {kind!r}")
        if not uids:
            return {}
        query = select(model.uid, model.resource_version).where(model.uid.in_(list(uids)))
        with self._reading() as session:
            return {uid: version for uid, version in session.execute(query)}

    def list_runs(
        self,
        *,
        namespace: str | None = None,
        state: RunState | str | None = None,
        incident: str | None = None,
        outcome: RunOutcome | str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        offset: int = 0,
    ) -> RunPage:
        """Runs matching every given filter, newest first, one page at a time.

        ``incident`` matches an Incident's name or uid; ``outcome`` keeps finished Runs that
        ended that way.
        """
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidInputError("limit", f"must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
        if offset < 0:
            raise InvalidInputError("offset", f"must be >= 0, got {offset}")
        conditions: list[ColumnElement[bool]] = []
        if namespace is not None:
            conditions.append(RunRow.namespace == namespace)
        if state is not None:
            conditions.append(RunRow.state == _parse(RunState, "state", state).value)
        if outcome is not None:
            conditions.append(RunRow.state == _parse(RunOutcome, "outcome", outcome).state.value)
        if incident is not None:
            conditions.append(or_(RunRow.incident_name == incident, RunRow.incident_uid == incident))
        count_query = select(func.count()).select_from(RunRow).where(*conditions)
        page_query = (
            select(RunRow)
            .where(*conditions)
            # uid breaks ties between Runs created in the same second, so pages never overlap.
            .order_by(RunRow.created_at.desc(), RunRow.uid)
            .limit(limit)
            .offset(offset)
        )
        with self._reading() as session:
            total = session.execute(count_query).scalar_one()
            items = [RunSummary.from_row(row) for row in session.scalars(page_query)]
        return RunPage(items=items, total=total, limit=limit, offset=offset)

    def timeline(self, run: str, namespace: str | None = None) -> RunTimeline | None:
        """Everything that happened to a Run, oldest first; ``None`` if no such Run is on record.

        ``run`` is a uid, or a name: then the newest Run of that name (a name can be reused
        after a Run is deleted), which must be unambiguous without ``namespace``.
        """
        lookup = select(RunRow).where(or_(RunRow.uid == run, RunRow.name == run))
        if namespace is not None:
            lookup = lookup.where(RunRow.namespace == namespace)
        with self._reading() as session:
            candidates = list(session.scalars(lookup.order_by(RunRow.created_at.desc(), RunRow.uid)))
            if not candidates:
                return None
            chosen = next((row for row in candidates if row.uid == run), None)
            if chosen is None:
                namespaces = sorted({row.namespace for row in candidates})
                if len(namespaces) > 1:
                    raise InvalidInputError(
                        "namespace",
                        f"run {run!r} exists in namespaces {', '.join(namespaces)}: say which one",
                    )
                chosen = candidates[0]
            summary = RunSummary.from_row(chosen)
            steps = list(
                session.scalars(
                    select(RunStepRow).where(RunStepRow.run_uid == summary.uid).order_by(RunStepRow.seq)
                )
            )
            approvals = list(
                session.scalars(
                    select(ApprovalRow)
                    .where(ApprovalRow.run_uid == summary.uid)
                    .order_by(ApprovalRow.created_at)
                )
            )
            notifications = list(
                session.scalars(
                    select(AuditEventRow)
                    .where(AuditEventRow.run_uid == summary.uid, AuditEventRow.kind == NOTIFICATION_KIND)
                    .order_by(AuditEventRow.occurred_at)
                )
            )
            deliveries = list(
                session.scalars(
                    select(NotificationDeliveryRow)
                    .where(NotificationDeliveryRow.run_uid == summary.uid)
                    .order_by(NotificationDeliveryRow.finished_at)
                )
            )
        entries = _run_entries(summary)
        entries.extend(_step_entry(step) for step in steps)
        for approval in approvals:
            entries.extend(_approval_entries(approval))
        entries.extend(_notification_entry(notification) for notification in notifications)
        entries.extend(_delivery_entry(delivery) for delivery in deliveries)
        # Stable: entries at the same instant keep the natural order of a Run's life.
        ordered = sorted(
            enumerate(entries), key=lambda item: (item[1].at, _KIND_ORDER[item[1].kind], item[0])
        )
        return RunTimeline(run=summary, entries=[entry for _, entry in ordered])


_Enum = TypeVar("_Enum", bound=StrEnum)
# Entries at the same instant keep the natural order of a Run's life.
_KIND_ORDER: Final = {kind: position for position, kind in enumerate(TimelineKind)}


def _parse(enum: type[_Enum], name: str, value: _Enum | str) -> _Enum:
    """An enum member from its value, matched without regard to case (``--state succeeded``)."""
    if isinstance(value, enum):
        return value
    wanted = str(value).lower()
    for member in enum:
        if member.value.lower() == wanted:
            return member
    raise InvalidInputError(name, f"{value!r} is not one of {', '.join(member.value for member in enum)}")


def _join(*parts: str | None) -> str | None:
    present = [part for part in parts if part]
    return "; ".join(present) if present else None


def _run_entries(run: RunSummary) -> list[TimelineEntry]:
    target = f"{run.action_type} {run.target_kind}/{run.target_name}"
    entries = [
        TimelineEntry(
            at=run.created_at,
            kind=TimelineKind.CREATED,
            title="run created",
            result=None,
            detail=_join(
                f"{target} for incident {run.incident_name}", f"risk {run.risk_level}", f"mode {run.mode}"
            ),
        )
    ]
    if run.started_at is not None:
        entries.append(TimelineEntry(at=run.started_at, kind=TimelineKind.STARTED, title="run started"))
    if run.completed_at is not None:
        entries.append(
            TimelineEntry(
                at=run.completed_at,
                kind=TimelineKind.COMPLETED,
                title="run completed",
                result=run.state,
                detail=_join(run.error_code, run.error_detail),
            )
        )
    return entries


def _step_entry(step: RunStepRow) -> TimelineEntry:
    return TimelineEntry(
        at=step.at,
        kind=TimelineKind.STEP,
        title=f"step {step.seq}: {step.name}",
        result=step.result,
        detail=_join(step.message, f"{step.latency_ms} ms" if step.latency_ms is not None else None),
    )


def _notification_entry(event: AuditEventRow) -> TimelineEntry:
    return TimelineEntry(
        at=event.occurred_at,
        kind=TimelineKind.NOTIFICATION,
        title=event.summary,
        result=event.outcome,
        detail=event.actor,
    )


def _delivery_entry(delivery: NotificationDeliveryRow) -> TimelineEntry:
    attempts = f"{delivery.attempts} attempt{'s' if delivery.attempts != 1 else ''}"
    return TimelineEntry(
        at=delivery.finished_at,
        kind=TimelineKind.NOTIFICATION,
        title=f"notification {delivery.kind} ({delivery.channel})",
        result=delivery.outcome,
        detail=_join(delivery.title, attempts, delivery.error),
    )


def _approval_entries(approval: ApprovalRow) -> list[TimelineEntry]:
    """The request, and the decision once there is one (or the expiry, or why it was invalid)."""
    entries = [
        TimelineEntry(
            at=approval.created_at,
            kind=TimelineKind.APPROVAL,
            title=f"approval requested: {approval.name}",
            result=ApprovalPhase.PENDING.value,
            detail=_join(
                f"{approval.action_type} {approval.target_kind}/{approval.target_name}",
                f"risk {approval.risk_level}",
                f"escalation {approval.escalation_level}" if approval.escalation_level else None,
                f"expires {iso_timestamp(approval.expires_at)}",
            ),
        )
    ]
    if approval.phase in (None, ApprovalPhase.PENDING.value):
        return entries
    if approval.decided_at is not None:
        at = approval.decided_at
    elif approval.phase == ApprovalPhase.EXPIRED.value:
        at = approval.expires_at
    else:
        # Invalid without a decision time: when Flywheel recorded it is the best known bound.
        at = approval.projected_at
    entries.append(
        TimelineEntry(
            at=at,
            kind=TimelineKind.APPROVAL,
            title=f"approval {approval.phase.lower()}: {approval.name}",
            result=approval.phase,
            detail=_join(
                f"by {approval.decided_by}" if approval.decided_by else None,
                approval.reason,
                approval.message,
            ),
        )
    )
    return entries


def _table(model: type[HistoryBase]) -> Table:
    return HistoryBase.metadata.tables[model.__tablename__]


__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "HistoryStore", "plain_copy", "utc_now"]
