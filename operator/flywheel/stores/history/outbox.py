"""The operator's way into the history database: fire-and-forget, retried until stored.

Handlers call :meth:`HistoryWriter.submit` and move on. The call never blocks on the database
and never raises: history is a projection of the custom resources, and a slow or absent
database must not hold up a Run, an approval or a notification (SPEC §5: an outage delays
history, it never loses it).

Behind it, one asyncio task hands items to a worker thread that writes them through the
synchronous :class:`HistoryStore`, retried with capped exponential backoff and jitter while the
database is unavailable (tenacity, with the delays of :class:`flywheel.retrying.Backoff`). What waits depends on whether it can be rebuilt:

- *Projections* of Incidents, Runs and Approvals wait in memory, coalesced by uid: a newer
  projection of the same object replaces the older one still waiting (the row is overwritten
  anyway, and a Run's journal steps are cumulative), so an outage costs memory per object, not
  per update. Lost from memory (a restart, or the bound of ``max_pending`` passed in a long
  outage), they are not lost from history: at start-up Kopf lists every object and the
  handlers project each again, idempotently.
- *Records* — audit events, repair executions, knowledge entries — are facts no resource
  carries in full. They wait in a :class:`RecordSpool`: a file in ``FLYWHEEL_HISTORY_SPOOL_DIR``,
  fsync'd before ``submit`` returns and replayed by the next operator (:class:`FileSpool`), or,
  without a spool directory, a bounded memory one that survives an outage but not a restart.

Nothing is dropped silently: an overflow, a spool that cannot be written, or a row the
database refuses for good is counted by reason (:attr:`HistoryWriter.dropped_by_reason`), logged
as a warning and reported to ``on_drop`` (the operator posts a Warning Event).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import partial
from typing import Any, Final, TypeAlias

from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_never

from flywheel.errors import ConfigurationError, DatabaseUnavailableError
from flywheel.logs import get_logger
from flywheel.retrying import Backoff
from flywheel.stores.history.engine import create_history_engine
from flywheel.stores.history.migrate import upgrade
from flywheel.stores.history.records import AuditEvent, KnowledgeEntry, NotificationDelivery, RepairExecution
from flywheel.stores.history.repository import HistoryStore, plain_copy
from flywheel.stores.history.spool import FileSpool, MemorySpool, RecordSpool, SpooledRecord, SpoolEntry

_log = get_logger(__name__)

DEFAULT_MAX_PENDING: Final = 10_000
DEFAULT_BATCH_SIZE: Final = 100
DEFAULT_RETRY_INITIAL_SECONDS: Final = 0.5
DEFAULT_RETRY_MAX_SECONDS: Final = 30.0
DEFAULT_LINGER_SECONDS: Final = 0.25
# How often flush() looks at the queue; only tests and shutdown wait on it.
_FLUSH_POLL_SECONDS: Final = 0.02


class HistoryKind(StrEnum):
    """What a submitted payload is, and so which store method writes it."""

    INCIDENT = "incident"  # payload: the Incident body (a Mapping, e.g. kopf.Body)
    RUN = "run"  # payload: the Run body
    APPROVAL = "approval"  # payload: the Approval body
    AUDIT_EVENT = "audit_event"  # payload: AuditEvent
    REPAIR_EXECUTION = "repair_execution"  # payload: RepairExecution
    KNOWLEDGE_ENTRY = "knowledge_entry"  # payload: KnowledgeEntry
    NOTIFICATION_DELIVERY = "notification_delivery"  # payload: NotificationDelivery


HistoryPayload: TypeAlias = (
    Mapping[str, Any] | AuditEvent | RepairExecution | KnowledgeEntry | NotificationDelivery
)
_ItemKey: TypeAlias = tuple[HistoryKind, str]

_RESOURCE_KINDS: Final = frozenset({HistoryKind.INCIDENT, HistoryKind.RUN, HistoryKind.APPROVAL})
_RECORD_KINDS: Final = frozenset({
    HistoryKind.AUDIT_EVENT, HistoryKind.REPAIR_EXECUTION, HistoryKind.KNOWLEDGE_ENTRY, HistoryKind.NOTIFICATION_DELIVERY,
})
_RECORD_TYPES: Final[dict[HistoryKind, type[Any]]] = {
    HistoryKind.AUDIT_EVENT: AuditEvent,
    HistoryKind.REPAIR_EXECUTION: RepairExecution,
    HistoryKind.KNOWLEDGE_ENTRY: KnowledgeEntry,
    HistoryKind.NOTIFICATION_DELIVERY: NotificationDelivery,
}


class DropReason(StrEnum):
    """Why an item will never reach the history database (the label of the dropped counter)."""

    OVERFLOW = "overflow"  # pushed out of a full memory queue or memory spool
    SPOOL_FAILED = "spool_failed"  # the spool file could not be written (disk full, I/O error)
    REFUSED = "refused"  # malformed, submitted after close, or refused for good by the database


@dataclass(frozen=True, slots=True)
class DroppedItem:
    """What ``on_drop`` is told: enough to name the object in a Warning Event."""

    kind: HistoryKind | str
    key: str
    reason: DropReason
    namespace: str | None = None
    name: str | None = None
    detail: str = ""


@dataclass
class _PendingItem:
    kind: HistoryKind
    key: str
    payload: HistoryPayload


def _item_key(kind: HistoryKind, payload: HistoryPayload) -> str:
    """The identity under which pending items coalesce (the same key the database upserts on)."""
    if kind in _RESOURCE_KINDS:
        if not isinstance(payload, Mapping):
            raise TypeError(
                f"a {kind.value} projection needs the resource body, got {type(payload).__name__}"
            )
        metadata = payload.get("metadata")
        uid = metadata.get("uid") if isinstance(metadata, Mapping) else None
        if not uid:
            raise ValueError(f"{kind.value} body has no metadata.uid")
        return str(uid)
    expected = _RECORD_TYPES[kind]
    if not isinstance(payload, expected):
        raise TypeError(f"{kind.value} needs a {expected.__name__}, got {type(payload).__name__}")
    if isinstance(payload, AuditEvent):
        return payload.event_id
    if isinstance(payload, RepairExecution):
        return f"{payload.run_uid}/{payload.attempt}"
    if isinstance(payload, KnowledgeEntry):
        return payload.incident_uid
    if isinstance(payload, NotificationDelivery):
        return payload.delivery_id
    raise TypeError(f"unsupported history payload {type(payload).__name__}")


# What a projection reads of a resource's metadata (the rest — managedFields above all — is most
# of a body, and copying it for every watch event was a twentieth of the operator's CPU in an
# alert storm).
_PROJECTED_METADATA: Final = ("uid", "name", "namespace", "creationTimestamp", "resourceVersion")


def _snapshot(kind: HistoryKind, payload: HistoryPayload) -> HistoryPayload:
    """What the payload is now, immune to the caller changing its objects after submit().

    Of a resource body, what the projection stores: its identity, spec and status.
    """
    if kind in _RESOURCE_KINDS:
        assert isinstance(payload, Mapping)  # checked by _item_key
        metadata = payload.get("metadata") or {}
        return {
            "metadata": {key: metadata[key] for key in _PROJECTED_METADATA if key in metadata},
            "spec": plain_copy(payload.get("spec") or {}),
            "status": plain_copy(payload.get("status") or {}),
        }
    if isinstance(payload, AuditEvent | NotificationDelivery):
        return replace(payload, payload=plain_copy(payload.payload))
    return payload  # frozen records of immutable values


class HistoryWriter:
    """Writes projections to the history database in the background, retrying through outages.

    ``prepare`` runs in the worker thread before the first write and is retried like a write
    until it succeeds — typically the schema migration, so that an operator started while the
    database is down creates the schema once it comes up. The writer owns ``store`` and
    ``spool`` and closes them in :meth:`close`. Without a ``spool``, records wait in a
    :class:`MemorySpool` of ``max_pending`` entries.

    ``submit`` is safe to call from the event loop and from other threads (Kopf's sync handlers).
    """

    def __init__(
        self,
        store: HistoryStore,
        *,
        prepare: Callable[[], object] | None = None,
        spool: RecordSpool | None = None,
        on_drop: Callable[[DroppedItem], None] | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry_initial_seconds: float = DEFAULT_RETRY_INITIAL_SECONDS,
        retry_max_seconds: float = DEFAULT_RETRY_MAX_SECONDS,
        linger_seconds: float = DEFAULT_LINGER_SECONDS,
    ) -> None:
        if max_pending < 1 or batch_size < 1:
            raise ConfigurationError("history writer: max_pending and batch_size must be >= 1")
        if not 0 < retry_initial_seconds <= retry_max_seconds:
            raise ConfigurationError(
                "history writer: retry delays must satisfy 0 < retry_initial_seconds <= retry_max_seconds"
            )
        self._store = store
        self._prepare = prepare
        self._prepared = prepare is None
        self._spool: RecordSpool = spool if spool is not None else MemorySpool(max_pending)
        self._on_drop = on_drop
        self._max_pending = max_pending
        self._batch_size = batch_size
        # Jittered, so that replicas do not retry in lockstep.
        self._backoff = Backoff(retry_initial_seconds, retry_max_seconds, jitter=(0.8, 1.2))
        self._linger_seconds = linger_seconds
        # Guards the queue and the counters: submit() may run on any thread.
        self._lock = threading.Lock()
        self._pending: OrderedDict[_ItemKey, _PendingItem] = OrderedDict()
        self._in_flight: set[str] = set()  # uids of the projections being written
        self._in_flight_count = 0
        self._stored = 0
        self._dropped: Counter[DropReason] = Counter()
        self._database_available: bool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._retry_now: asyncio.Event | None = None
        self._closed = False

    # ---------------------------------------------------------------- state

    @property
    def pending_count(self) -> int:
        """Items submitted and not stored yet (waiting, spooled or being written)."""
        with self._lock:
            in_memory = len(self._pending) + self._in_flight_count
        return in_memory + self._spool.count()

    @property
    def spooled_count(self) -> int:
        """Records waiting in the spool (on disk with a spool directory)."""
        return self._spool.count()

    @property
    def spool_durable(self) -> bool:
        """Whether waiting records outlive the process (a spool directory is configured)."""
        return self._spool.durable

    @property
    def stored_count(self) -> int:
        """Items written since the writer was created."""
        with self._lock:
            return self._stored

    @property
    def dropped_count(self) -> int:
        """Items given up, whatever the reason."""
        with self._lock:
            return sum(self._dropped.values())

    @property
    def dropped_by_reason(self) -> dict[DropReason, int]:
        """Items given up since the writer was created, by reason (every reason present)."""
        with self._lock:
            return {reason: self._dropped.get(reason, 0) for reason in DropReason}

    @property
    def database_available(self) -> bool | None:
        """Whether the last write reached the database; ``None`` before the first attempt."""
        with self._lock:
            return self._database_available

    def waiting_for(self, uids: Iterable[str]) -> bool:
        """Whether anything about these Incident, Run or Approval uids is not stored yet."""
        wanted = set(uids)
        with self._lock:
            if wanted & self._in_flight or any(key in wanted for _, key in self._pending):
                return True
        return self._spool.concerns(wanted)

    async def holds(self, kind: HistoryKind, versions: Mapping[str, str]) -> bool:
        """Whether the history holds these objects of ``kind`` (uid → resourceVersion) as they are.

        True only when each one's row carries that resourceVersion (its last projection is
        committed) and nothing about it still waits here. Raises
        :class:`DatabaseUnavailableError` while the database is unreachable.
        """
        if self.waiting_for(versions):
            return False
        stored = await asyncio.to_thread(self._store.projected_versions, kind.value, list(versions))
        return all(stored.get(uid) == version for uid, version in versions.items())

    def report_drops_to(self, on_drop: Callable[[DroppedItem], None]) -> None:
        """Have every dropped item reported to ``on_drop`` (from any thread) from now on."""
        self._on_drop = on_drop

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the background task on the running event loop; harmless when already started."""
        if self._worker is not None and not self._worker.done():
            return
        if self._closed:
            raise RuntimeError("history writer is closed")
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._worker = self._loop.create_task(self._work(), name="flywheel-history-writer")
        spooled = self._spool.count()
        if spooled:
            _log.info("history_spool_replayed", left_by="the previous operator", spooled=spooled)
        if self.pending_count:
            self._wakeup.set()

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far is stored (or dropped), retrying now.

        Raises :class:`TimeoutError` when that takes longer than ``timeout`` seconds — as it
        will while the database stays unavailable.
        """
        self.start()
        assert self._retry_now is not None and self._wakeup is not None
        self._retry_now.set()
        self._wakeup.set()
        async with asyncio.timeout(timeout):
            while self.pending_count:
                await asyncio.sleep(_FLUSH_POLL_SECONDS)

    async def close(self, timeout: float = 5.0) -> None:
        """Store what can be stored within ``timeout``, stop the worker, close the store and spool."""
        if self._closed:
            return
        unsaved = 0
        if self._worker is not None or self.pending_count:
            try:
                await self.flush(timeout)
            except TimeoutError:
                unsaved = self.pending_count
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if unsaved:
            _log.warning(
                "history_writer_closed_unsaved",
                projections="made again on restart",
                records="stay in the spool" if self._spool.durable else "lost (no spool directory)",
                unsaved=unsaved,
                spooled=self._spool.count(),
            )
        self._spool.close()
        await asyncio.to_thread(self._store.close)

    # ---------------------------------------------------------------- submitting

    def submit(self, kind: HistoryKind | str, payload: HistoryPayload) -> None:
        """Queue ``payload`` for the history database. Never raises; never waits for the database.

        Of resource bodies (``incident``, ``run``, ``approval``) what the projection stores is
        copied at once, so the caller's object may keep changing. Records are in the spool when
        this returns (on disk with a spool directory). A payload that can never be stored is
        dropped, counted and logged.
        """
        try:
            history_kind = HistoryKind(kind)
            key = _item_key(history_kind, payload)
            snapshot = _snapshot(history_kind, payload)
        except Exception as exc:  # noqa: BLE001  (the caller's path must never fail because of history)
            self._drop(DroppedItem(str(kind), "", DropReason.REFUSED, detail=f"history item refused: {exc}"))
            return
        if self._closed:
            self._drop(DroppedItem(history_kind, key, DropReason.REFUSED, detail="history item submitted after close"))
            return
        if history_kind in _RECORD_KINDS:
            self._spool_record(history_kind, key, snapshot)
        else:
            self._queue_projection(history_kind, key, snapshot)
        self._wake()

    def _spool_record(self, kind: HistoryKind, key: str, record: HistoryPayload) -> None:
        assert isinstance(record, AuditEvent | RepairExecution | KnowledgeEntry | NotificationDelivery)
        try:
            evicted = self._spool.put(kind.value, key, record)
        except (OSError, sqlite3.Error) as exc:
            self._drop(DroppedItem(kind, key, DropReason.SPOOL_FAILED, namespace=record.namespace,
                                   detail=f"history spool not writable: {exc}"))
            return
        if evicted is not None:
            self._drop(DroppedItem(evicted.kind, evicted.key, DropReason.OVERFLOW,
                                   namespace=evicted.record.namespace,
                                   detail=f"history memory spool full ({self._max_pending} records), oldest dropped"))

    def _queue_projection(self, kind: HistoryKind, key: str, snapshot: HistoryPayload) -> None:
        evicted: _PendingItem | None = None
        with self._lock:
            existing = self._pending.get((kind, key))
            if existing is not None:
                # Newest projection wins; the item keeps its place in the queue, so a busy object
                # cannot starve the ones behind it.
                existing.payload = snapshot
            else:
                if len(self._pending) >= self._max_pending:
                    _, evicted = self._pending.popitem(last=False)
                self._pending[(kind, key)] = _PendingItem(kind, key, snapshot)
        if evicted is not None:
            metadata = evicted.payload.get("metadata") or {} if isinstance(evicted.payload, Mapping) else {}
            self._drop(DroppedItem(
                evicted.kind, evicted.key, DropReason.OVERFLOW,
                namespace=metadata.get("namespace"), name=metadata.get("name"),
                detail=f"history queue full ({self._max_pending} objects), oldest projection dropped; "
                       "it is made again at the object's next change or the operator's next start",
            ))

    def _drop(self, item: DroppedItem) -> None:
        with self._lock:
            self._dropped[item.reason] += 1
        _log.warning(
            "history_item_dropped", kind=str(item.kind), key=item.key, reason=item.reason.value,
            namespace=item.namespace, name=item.name, detail=item.detail,
        )
        if self._on_drop is not None:
            try:
                self._on_drop(item)
            except Exception:  # noqa: BLE001  (reporting a drop must not break the caller's path)
                _log.exception("history_drop_report_failed")

    def _wake(self) -> None:
        loop = self._loop
        if loop is None:
            try:
                self.start()
            except RuntimeError:
                # No running loop here (a thread before start-up): the worker picks the item up
                # once start() runs.
                return
            loop = self._loop
        assert loop is not None and self._wakeup is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wakeup.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._wakeup.set)

    # ---------------------------------------------------------------- the worker

    def _take_batch(self) -> list[_PendingItem]:
        with self._lock:
            batch: list[_PendingItem] = []
            while self._pending and len(batch) < self._batch_size:
                _, item = self._pending.popitem(last=False)
                batch.append(item)
                self._in_flight.add(item.key)
            self._in_flight_count += len(batch)
            return batch

    def _done(self, items: list[_PendingItem], *, stored: bool) -> None:
        with self._lock:
            self._in_flight_count -= len(items)
            self._in_flight.difference_update(item.key for item in items)
            if stored:
                self._stored += len(items)

    def _requeue(self, items: list[_PendingItem]) -> None:
        """Put unwritten items back at the head of the queue, unless a newer one arrived meanwhile."""
        with self._lock:
            self._in_flight_count -= len(items)
            self._in_flight.difference_update(item.key for item in items)
            for item in reversed(items):
                key = (item.kind, item.key)
                if key in self._pending:
                    continue
                self._pending[key] = item
                self._pending.move_to_end(key, last=False)

    def _write_projection(self, item: _PendingItem) -> None:
        payload = item.payload
        assert isinstance(payload, Mapping)
        if item.kind is HistoryKind.INCIDENT:
            self._store.upsert_incident(payload)
        elif item.kind is HistoryKind.RUN:
            self._store.upsert_run(payload)
        else:
            self._store.upsert_approval(payload)

    def _write_record(self, record: SpooledRecord) -> None:
        if isinstance(record, AuditEvent):
            self._store.add_audit_event(record)
        elif isinstance(record, RepairExecution):
            self._store.add_repair_execution(record)
        elif isinstance(record, NotificationDelivery):
            self._store.add_notification_delivery(record)
        else:
            self._store.add_knowledge_entry(record)

    def _records_stored(self, entries: list[SpoolEntry]) -> None:
        self._spool.remove(entries)
        with self._lock:
            self._stored += len(entries)

    def _write_batch(self, batch: list[_PendingItem]) -> _BatchResult:
        """Runs in a worker thread: the projections taken and the oldest spooled records."""
        if not self._prepared:
            assert self._prepare is not None
            try:
                self._prepare()
            except Exception as exc:  # noqa: BLE001  (any failure to prepare holds writes back; retried)
                return _BatchResult(batch, exc, wrote=False)
            self._prepared = True
        records = self._spool.oldest(self._batch_size)
        if not batch and not records:
            return _BatchResult([], None, wrote=False)
        if len(batch) + len(records) > 1:
            try:
                with self._store.batch():
                    for entry in records:
                        self._write_record(entry.record)
                    for item in batch:
                        self._write_projection(item)
            except DatabaseUnavailableError as exc:
                return _BatchResult(batch, exc, wrote=False)
            except Exception as exc:  # noqa: BLE001  (one item is at fault: find it, one transaction each)
                _log.debug("history_batch_refused", next_step="writing its items one by one",
                           size=len(batch) + len(records), error=str(exc))
            else:
                self._records_stored(records)
                self._done(batch, stored=True)
                return _BatchResult([], None, wrote=True)
        for entry in records:
            try:
                self._write_record(entry.record)
            except DatabaseUnavailableError as exc:
                return _BatchResult(batch, exc, wrote=False)
            except Exception as exc:  # noqa: BLE001  (refused for good: retrying cannot help)
                self._spool.remove([entry])
                self._drop(DroppedItem(entry.kind, entry.key, DropReason.REFUSED, namespace=entry.record.namespace,
                                       detail=f"the database refused it: {type(exc).__name__}: {exc}"))
            else:
                self._records_stored([entry])
        for position, item in enumerate(batch):
            try:
                self._write_projection(item)
            except DatabaseUnavailableError as exc:
                return _BatchResult(batch[position:], exc, wrote=True)
            except Exception as exc:  # noqa: BLE001  (refused for good: retrying cannot help)
                self._done([item], stored=False)
                metadata = item.payload.get("metadata") or {} if isinstance(item.payload, Mapping) else {}
                self._drop(DroppedItem(item.kind, item.key, DropReason.REFUSED, namespace=metadata.get("namespace"),
                                       name=metadata.get("name"),
                                       detail=f"the database refused it: {type(exc).__name__}: {exc}"))
            else:
                self._done([item], stored=True)
        return _BatchResult([], None, wrote=True)

    async def _work(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            # A moment's wait lets the next versions of the same objects replace the pending
            # ones (an Incident is created, then its status written, a second later resolved).
            await asyncio.sleep(self._linger_seconds)
            self._wakeup.clear()
            while await self._write_next_batch():
                self._mark_available()

    async def _write_next_batch(self) -> bool:
        """Write the next batch, retrying through an outage until it is stored; whether it held anything.

        Each retry takes a fresh batch: the items of the failed one are requeued first, and
        newer versions of them submitted meanwhile replace them. The backoff starts over with
        every batch that is stored.
        """
        retrying = AsyncRetrying(
            stop=stop_never,
            wait=self._backoff.wait(),
            retry=retry_if_result(lambda result: result.error is not None),
            before_sleep=self._before_retry,
            sleep=self._sleep_before_retry,
        )
        result: _BatchResult = await retrying(self._write_once)
        return result.wrote

    async def _write_once(self) -> _BatchResult:
        batch = self._take_batch()
        try:
            return await asyncio.to_thread(self._write_batch, batch)
        except Exception as exc:  # noqa: BLE001  (the worker outlives any surprise, items kept)
            _log.exception("history_writer_failed", items="kept")
            return _BatchResult(batch, exc, wrote=False)

    def _before_retry(self, state: RetryCallState) -> None:
        assert state.outcome is not None
        result: _BatchResult = state.outcome.result()
        assert result.error is not None
        self._requeue(result.unwritten)
        self._mark_unavailable(result.error, self._backoff.delay(state.attempt_number))

    def _mark_available(self) -> None:
        with self._lock:
            recovered = self._database_available is False
            self._database_available = True
            pending = len(self._pending) + self._in_flight_count
        if recovered:
            _log.info("history_database_reachable", database=self._store.database, pending=pending,
                      spooled=self._spool.count())

    def _mark_unavailable(self, error: Exception, delay: float) -> None:
        with self._lock:
            first_failure = self._database_available is not False
            self._database_available = False
            pending = len(self._pending) + self._in_flight_count
        spooled = self._spool.count()
        if not isinstance(error, DatabaseUnavailableError):
            # Not an outage (a failing migration, a bug): worth an error on every attempt.
            _log.error(
                "history_database_not_usable",
                database=self._store.database,
                pending=pending,
                spooled=spooled,
                retry_in_seconds=round(delay, 2),
                error=f"{type(error).__name__}: {error}",
            )
            return
        # One warning per outage, then debug: a long outage must not flood the log.
        log = _log.warning if first_failure else _log.debug
        log(
            "history_database_unavailable",
            database=self._store.database,
            pending=pending,
            spooled=spooled,
            retry_in_seconds=round(delay, 2),
            error=str(error),
        )

    async def _sleep_before_retry(self, seconds: float) -> None:
        """Sleep the backoff (jittered by the policy), unless flush() asks for now."""
        assert self._retry_now is not None and self._wakeup is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._retry_now.wait(), timeout=seconds)
        # Cleared after waking, not before sleeping: a flush() that asked just before the sleep
        # began still cuts it short.
        self._retry_now.clear()
        self._wakeup.set()


@dataclass(frozen=True, slots=True)
class _BatchResult:
    """What a write attempt left: the projections to requeue, why, and whether anything was written."""

    unwritten: list[_PendingItem]
    error: Exception | None
    wrote: bool


def build_history_writer(
    database_url: str,
    *,
    spool_dir: str | None = None,
    on_drop: Callable[[DroppedItem], None] | None = None,
    migrate: bool = True,
    max_pending: int = DEFAULT_MAX_PENDING,
    retry_initial_seconds: float = DEFAULT_RETRY_INITIAL_SECONDS,
    retry_max_seconds: float = DEFAULT_RETRY_MAX_SECONDS,
) -> HistoryWriter:
    """The writer the operator uses: its own engine, and the schema migrated before the first write.

    With ``spool_dir``, records wait on disk there (replayed at start); raises
    :class:`ConfigurationError` if it cannot be used. Nothing connects to the database here, so the operator starts even while the database is down; call
    :meth:`HistoryWriter.start` from the event loop at start-up and :meth:`HistoryWriter.close`
    at shutdown.
    """
    return HistoryWriter(
        HistoryStore(create_history_engine(database_url)),
        prepare=partial(upgrade, database_url) if migrate else None,
        spool=FileSpool(spool_dir) if spool_dir else None,
        on_drop=on_drop,
        max_pending=max_pending,
        retry_initial_seconds=retry_initial_seconds,
        retry_max_seconds=retry_max_seconds,
    )


__all__ = ["DropReason", "DroppedItem", "HistoryKind", "HistoryPayload", "HistoryWriter", "build_history_writer"]
