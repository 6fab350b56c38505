"""Durable history (SPEC §5): a database projection of Flywheel's custom resources.

- :class:`HistoryWriter` (``outbox``): what the operator calls; fire-and-forget, retried
  through database outages, coalescing per object.
- :class:`HistoryStore` (``repository``): idempotent upserts and the reviewer's queries, with
  the value objects they take and return (``records``) and the engine (``engine``).
- :func:`upgrade` (``migrate``): Alembic migrations shipped in ``flywheel/migrations``.
- ``tables``: the SQLAlchemy models.
"""

from __future__ import annotations

from flywheel.stores.history.engine import create_history_engine, describe_database_url
from flywheel.stores.history.migrate import current_revision, head_revision, upgrade
from flywheel.stores.history.outbox import HistoryKind, HistoryPayload, HistoryWriter, build_history_writer
from flywheel.stores.history.records import (
    NOTIFICATION_KIND,
    AuditEvent,
    DeliveryOutcome,
    KnowledgeEntry,
    NotificationDelivery,
    RepairExecution,
    RunOutcome,
    RunPage,
    RunSummary,
    RunTimeline,
    TimelineEntry,
    TimelineKind,
)
from flywheel.stores.history.repository import HistoryStore

__all__ = [
    "NOTIFICATION_KIND",
    "AuditEvent",
    "DeliveryOutcome",
    "HistoryKind",
    "HistoryPayload",
    "HistoryStore",
    "HistoryWriter",
    "KnowledgeEntry",
    "NotificationDelivery",
    "RepairExecution",
    "RunOutcome",
    "RunPage",
    "RunSummary",
    "RunTimeline",
    "TimelineEntry",
    "TimelineKind",
    "build_history_writer",
    "create_history_engine",
    "current_revision",
    "describe_database_url",
    "head_revision",
    "upgrade",
]
