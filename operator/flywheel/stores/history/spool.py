"""Where the history records nobody can rebuild wait for the database: a local, fsync'd spool.

Two kinds of history rows exist. Projections of Incidents, Runs and Approvals are copies of
resources: whatever is lost from memory is projected again from the cluster when the operator
starts (Kopf lists every object), keyed by uid, so they need no spool. Audit events (who decided
an Approval and when, an expiry, a refused token) and repair executions (each attempt's start,
end, latency and result; a Run's status keeps only its last attempt) exist nowhere else once
the operator that saw them is gone: they are written here before ``submit`` returns, and removed
only once the database has committed them. Knowledge entries are spooled as well: they are
small, and an Incident resolved then deleted by hand would otherwise take its entry with it.

:class:`FileSpool` is an SQLite file in ``FLYWHEEL_HISTORY_SPOOL_DIR`` (WAL journal,
``synchronous=FULL``: every put is on disk when it returns, so a ``kill -9`` a microsecond later
loses nothing); :class:`MemorySpool` keeps the same contract in memory, bounded, for an operator
run without a spool directory (tests, a laptop) — it survives an outage, not a restart.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Final, Protocol, TypeAlias

from flywheel.api.enums import ActionType
from flywheel.errors import ConfigurationError
from flywheel.logs import get_logger
from flywheel.stores.history.records import (
    AuditEvent,
    DeliveryOutcome,
    KnowledgeEntry,
    NotificationDelivery,
    RepairExecution,
)
from flywheel.stores.history.repository import plain_copy

_log = get_logger(__name__)

SPOOL_FILE_NAME: Final = "history-spool.sqlite3"

SpooledRecord: TypeAlias = AuditEvent | RepairExecution | KnowledgeEntry | NotificationDelivery

_RECORD_TYPES: Final[dict[str, type[SpooledRecord]]] = {
    "audit_event": AuditEvent,
    "repair_execution": RepairExecution,
    "knowledge_entry": KnowledgeEntry,
    "notification_delivery": NotificationDelivery,
}
_DATETIME_FIELDS: Final = frozenset({"occurred_at", "started_at", "finished_at", "resolved_at"})
_ACTION_FIELDS: Final = frozenset({"action"})


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One record waiting for the database. ``version`` tells a replaced record from the one taken."""

    kind: str
    key: str
    version: int
    record: SpooledRecord


class RecordSpool(Protocol):
    """Records kept until the database has them; the writer's only source of records to write."""

    def put(self, kind: str, key: str, record: SpooledRecord) -> SpoolEntry | None:
        """Keep ``record`` (replacing one of the same kind and key); returns a record pushed out
        to make room, if any. Raises ``OSError`` or ``sqlite3.Error`` when it cannot be kept."""
        ...

    def oldest(self, limit: int) -> list[SpoolEntry]:
        """Up to ``limit`` entries, oldest first, left in the spool."""
        ...

    def remove(self, entries: Iterable[SpoolEntry]) -> None:
        """Forget entries the database committed, unless replaced by a newer version meanwhile."""
        ...

    def count(self) -> int: ...

    def concerns(self, uids: Iterable[str]) -> bool:
        """Whether a record about any of these Incident or Run uids is still waiting."""
        ...

    @property
    def durable(self) -> bool:
        """Whether the records outlive the process."""
        ...

    def close(self) -> None: ...


def _subject_uids(record: SpooledRecord) -> tuple[str | None, ...]:
    if isinstance(record, KnowledgeEntry):
        return (record.incident_uid,)
    return (record.run_uid, record.incident_uid)


def encode_record(record: SpooledRecord) -> str:
    """JSON of a record: datetimes as ISO 8601 with their offset, enums as their value."""
    values: dict[str, Any] = {}
    for item in fields(record):
        value = getattr(record, item.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Enum):
            value = value.value
        elif isinstance(value, Mapping):
            value = plain_copy(value)
        values[item.name] = value
    return json.dumps(values, default=str, separators=(",", ":"))


def decode_record(kind: str, text: str) -> SpooledRecord:
    """The record :func:`encode_record` wrote; ValueError when ``kind`` or the text is not one."""
    record_type = _RECORD_TYPES.get(kind)
    if record_type is None:
        raise ValueError(f"unknown spooled record kind {kind!r}")
    values = json.loads(text)
    for name in _DATETIME_FIELDS & values.keys():
        values[name] = datetime.fromisoformat(values[name])
    for name in _ACTION_FIELDS & values.keys():
        if values[name] is not None:
            values[name] = ActionType(values[name])
    if record_type is NotificationDelivery:
        values["outcome"] = DeliveryOutcome(values["outcome"])
    return record_type(**values)


class MemorySpool:
    """The spool of an operator without a spool directory: bounded, lost on restart.

    Past ``capacity`` the oldest record is pushed out and returned by :meth:`put`, so that the
    writer counts it and warns: never a silent drop.
    """

    durable = False

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ConfigurationError("history spool capacity must be >= 1")
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], SpoolEntry] = OrderedDict()
        self._versions = 0

    def put(self, kind: str, key: str, record: SpooledRecord) -> SpoolEntry | None:
        with self._lock:
            self._versions += 1
            existing = self._entries.get((kind, key))
            if existing is not None:
                self._entries[(kind, key)] = SpoolEntry(kind, key, self._versions, record)
                return None
            evicted = None
            if len(self._entries) >= self._capacity:
                _, evicted = self._entries.popitem(last=False)
            self._entries[(kind, key)] = SpoolEntry(kind, key, self._versions, record)
            return evicted

    def oldest(self, limit: int) -> list[SpoolEntry]:
        with self._lock:
            return [entry for _, entry in zip(range(limit), self._entries.values(), strict=False)]

    def remove(self, entries: Iterable[SpoolEntry]) -> None:
        with self._lock:
            for entry in entries:
                current = self._entries.get((entry.kind, entry.key))
                if current is not None and current.version == entry.version:
                    del self._entries[(entry.kind, entry.key)]

    def count(self) -> int:
        with self._lock:
            return len(self._entries)

    def concerns(self, uids: Iterable[str]) -> bool:
        wanted = set(uids)
        with self._lock:
            return any(wanted.intersection(_subject_uids(entry.record)) for entry in self._entries.values())

    def close(self) -> None:
        """Nothing to release."""


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS spooled_records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    run_uid TEXT,
    incident_uid TEXT,
    record TEXT NOT NULL,
    UNIQUE (kind, key)
)
"""


class FileSpool:
    """Records in an SQLite file, on disk before :meth:`put` returns; replayed by the next operator.

    One connection shared by the submitting threads and the writer's worker thread, behind a
    lock: a put is a single small transaction, far from contended.
    """

    durable = True

    def __init__(self, directory: str | Path) -> None:
        path = Path(directory)
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(
                path / SPOOL_FILE_NAME, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._connection.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsync'd at every commit, so a put survives a crash of the host too.
            self._connection.execute("PRAGMA synchronous=FULL")
            self._connection.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigurationError(
                f"FLYWHEEL_HISTORY_SPOOL_DIR: cannot use {str(path)!r} as the history spool: {exc}"
            ) from exc
        self._path = path / SPOOL_FILE_NAME
        self._lock = threading.Lock()
        (self._version,) = self._connection.execute("SELECT COALESCE(MAX(version), 0) FROM spooled_records").fetchone()

    @property
    def path(self) -> Path:
        return self._path

    def put(self, kind: str, key: str, record: SpooledRecord) -> SpoolEntry | None:
        run_uid = None if isinstance(record, KnowledgeEntry) else record.run_uid
        text = encode_record(record)
        with self._lock:
            self._version += 1
            self._connection.execute(
                "INSERT INTO spooled_records (kind, key, version, run_uid, incident_uid, record) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET "
                "version = excluded.version, record = excluded.record",
                (kind, key, self._version, run_uid, record.incident_uid, text),
            )
        return None  # bounded by the disk, not by a count

    def oldest(self, limit: int) -> list[SpoolEntry]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT kind, key, version, record FROM spooled_records ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        entries: list[SpoolEntry] = []
        unreadable: list[tuple[str, str, int]] = []
        for kind, key, version, text in rows:
            try:
                entries.append(SpoolEntry(kind, key, version, decode_record(kind, text)))
            except (ValueError, TypeError) as exc:
                # Only a file written by another version could hold one; kept, it would block the spool.
                _log.error("history_spool_entry_unreadable", removed=True, kind=kind, key=key, error=str(exc))
                unreadable.append((kind, key, version))
        self._delete(unreadable)
        return entries

    def remove(self, entries: Iterable[SpoolEntry]) -> None:
        self._delete([(entry.kind, entry.key, entry.version) for entry in entries])

    def _delete(self, keys: list[tuple[str, str, int]]) -> None:
        if not keys:
            return
        with self._lock:
            self._connection.execute("BEGIN")
            try:
                self._connection.executemany(
                    "DELETE FROM spooled_records WHERE kind = ? AND key = ? AND version = ?", keys
                )
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def count(self) -> int:
        with self._lock:
            (count,) = self._connection.execute("SELECT COUNT(*) FROM spooled_records").fetchone()
        return int(count)

    def concerns(self, uids: Iterable[str]) -> bool:
        wanted = sorted(set(uids))
        if not wanted:
            return False
        marks = ",".join("?" * len(wanted))
        with self._lock:
            row = self._connection.execute(
                f"SELECT 1 FROM spooled_records WHERE run_uid IN ({marks}) OR incident_uid IN ({marks}) LIMIT 1",
                (*wanted, *wanted),
            ).fetchone()
        return row is not None

    def close(self) -> None:
        with self._lock:
            self._connection.close()


__all__ = [
    "SPOOL_FILE_NAME",
    "FileSpool",
    "MemorySpool",
    "RecordSpool",
    "SpoolEntry",
    "SpooledRecord",
    "decode_record",
    "encode_record",
]
