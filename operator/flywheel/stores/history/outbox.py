"""The operator's way into the history database: fire-and-forget, retried until stored.

Handlers call :meth:`HistoryWriter.submit` and move on. The call never blocks and never raises:
history is a projection of the custom resources, and a slow or absent database must not hold
up a Run, an approval or a notification (SPEC §5: an outage delays history, it never loses it).

Behind it, one asyncio task hands items to a worker thread that writes them through the
synchronous :class:`HistoryStore`. While the database is unavailable the items stay pending,
in memory, and are retried with capped exponential backoff and jitter until they are stored.
Pending items are *coalesced by key*: a newer projection of the same Run replaces the older one
still waiting (the row is overwritten anyway, and its journal steps are cumulative), so an
outage costs memory per object, not per update. The queue is bounded; past the bound the oldest
item is dropped with an error log, which only ever happens after a long outage under heavy load.

Items left pending when the operator stops are lost from memory, not from history: on restart,
Kopf's resume handlers project every Run, Incident and Approval again from the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import partial
from typing import Any, Final, TypeAlias

from flywheel.errors import ConfigurationError, DatabaseUnavailableError
from flywheel.logs import get_logger
from flywheel.stores.history.engine import create_history_engine
from flywheel.stores.history.migrate import upgrade
from flywheel.stores.history.records import AuditEvent, KnowledgeEntry, RepairExecution
from flywheel.stores.history.repository import HistoryStore, plain_copy

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


HistoryPayload: TypeAlias = Mapping[str, Any] | AuditEvent | RepairExecution | KnowledgeEntry
_ItemKey: TypeAlias = tuple[HistoryKind, str]

_RESOURCE_KINDS: Final = frozenset({HistoryKind.INCIDENT, HistoryKind.RUN, HistoryKind.APPROVAL})
_RECORD_TYPES: Final[dict[HistoryKind, type[Any]]] = {
    HistoryKind.AUDIT_EVENT: AuditEvent,
    HistoryKind.REPAIR_EXECUTION: RepairExecution,
    HistoryKind.KNOWLEDGE_ENTRY: KnowledgeEntry,
}


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
    if isinstance(payload, AuditEvent):
        return replace(payload, payload=plain_copy(payload.payload))
    return payload  # frozen records of immutable values


class HistoryWriter:
    """Writes projections to the history database in the background, retrying through outages.

    ``prepare`` runs in the worker thread before the first write and is retried like a write
    until it succeeds — typically the schema migration, so that an operator started while the
    database is down creates the schema once it comes up. The writer owns ``store`` and closes
    it in :meth:`close`.

    ``submit`` is safe to call from the event loop and from other threads (Kopf's sync handlers).
    """

    def __init__(
        self,
        store: HistoryStore,
        *,
        prepare: Callable[[], object] | None = None,
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
        self._max_pending = max_pending
        self._batch_size = batch_size
        self._retry_initial_seconds = retry_initial_seconds
        self._retry_max_seconds = retry_max_seconds
        self._linger_seconds = linger_seconds
        # Guards the queue and the counters: submit() may run on any thread.
        self._lock = threading.Lock()
        self._pending: OrderedDict[_ItemKey, _PendingItem] = OrderedDict()
        self._in_flight = 0
        self._stored = 0
        self._dropped = 0
        self._database_available: bool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._retry_now: asyncio.Event | None = None
        self._closed = False

    # ---------------------------------------------------------------- state

    @property
    def pending_count(self) -> int:
        """Items submitted and not stored yet (waiting or being written)."""
        with self._lock:
            return len(self._pending) + self._in_flight

    @property
    def stored_count(self) -> int:
        """Items written since the writer was created."""
        with self._lock:
            return self._stored

    @property
    def dropped_count(self) -> int:
        """Items given up: malformed, refused by the database for good, or pushed out of a full queue."""
        with self._lock:
            return self._dropped

    @property
    def database_available(self) -> bool | None:
        """Whether the last write reached the database; ``None`` before the first attempt."""
        with self._lock:
            return self._database_available

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
        """Store what can be stored within ``timeout``, stop the worker and close the store."""
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
                "history writer closed with items not stored; resources are projected again on restart",
                unsaved=unsaved,
            )
        await asyncio.to_thread(self._store.close)

    # ---------------------------------------------------------------- submitting

    def submit(self, kind: HistoryKind | str, payload: HistoryPayload) -> None:
        """Queue ``payload`` for the history database. Never blocks, never raises.

        Of resource bodies (``incident``, ``run``, ``approval``) what the projection stores is copied
        at once, so the caller's object may keep changing. A payload that can never be stored is dropped with an error log.
        """
        try:
            history_kind = HistoryKind(kind)
            key = _item_key(history_kind, payload)
            snapshot = _snapshot(history_kind, payload)
        except Exception as exc:  # noqa: BLE001  (the caller's path must never fail because of history)
            with self._lock:
                self._dropped += 1
            _log.error("history item refused", kind=str(kind), error=str(exc))
            return
        if self._closed:
            with self._lock:
                self._dropped += 1
            _log.error("history item submitted after close", kind=history_kind.value, key=key)
            return
        evicted: _PendingItem | None = None
        with self._lock:
            existing = self._pending.get((history_kind, key))
            if existing is not None:
                # Newest projection wins; the item keeps its place in the queue, so a busy object
                # cannot starve the ones behind it.
                existing.payload = snapshot
            else:
                if len(self._pending) >= self._max_pending:
                    _, evicted = self._pending.popitem(last=False)
                    self._dropped += 1
                self._pending[(history_kind, key)] = _PendingItem(history_kind, key, snapshot)
        if evicted is not None:
            _log.error(
                "history queue full, oldest item dropped",
                max_pending=self._max_pending,
                kind=evicted.kind.value,
                key=evicted.key,
            )
        self._wake()

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
            self._in_flight += len(batch)
            return batch

    def _requeue(self, items: list[_PendingItem]) -> None:
        """Put unwritten items back at the head of the queue, unless a newer one arrived meanwhile."""
        with self._lock:
            self._in_flight -= len(items)
            for item in reversed(items):
                key = (item.kind, item.key)
                if key in self._pending:
                    continue
                self._pending[key] = item
                self._pending.move_to_end(key, last=False)

    def _write_one(self, item: _PendingItem) -> None:
        payload = item.payload
        if item.kind is HistoryKind.INCIDENT:
            assert isinstance(payload, Mapping)
            self._store.upsert_incident(payload)
        elif item.kind is HistoryKind.RUN:
            assert isinstance(payload, Mapping)
            self._store.upsert_run(payload)
        elif item.kind is HistoryKind.APPROVAL:
            assert isinstance(payload, Mapping)
            self._store.upsert_approval(payload)
        elif isinstance(payload, AuditEvent):
            self._store.add_audit_event(payload)
        elif isinstance(payload, RepairExecution):
            self._store.add_repair_execution(payload)
        elif isinstance(payload, KnowledgeEntry):
            self._store.add_knowledge_entry(payload)

    def _write_batch(self, batch: list[_PendingItem]) -> tuple[list[_PendingItem], Exception | None]:
        """Runs in a worker thread. Returns the items still to write and why they were not."""
        if not self._prepared:
            assert self._prepare is not None
            try:
                self._prepare()
            except Exception as exc:  # noqa: BLE001  (any failure to prepare holds writes back; retried)
                return batch, exc
            self._prepared = True
        if len(batch) > 1:
            try:
                with self._store.batch():
                    for item in batch:
                        self._write_one(item)
            except DatabaseUnavailableError as exc:
                return batch, exc
            except Exception as exc:  # noqa: BLE001  (one item is at fault: find it, one transaction each)
                _log.debug("history batch refused; writing its items one by one", size=len(batch), error=str(exc))
            else:
                with self._lock:
                    self._in_flight -= len(batch)
                    self._stored += len(batch)
                return [], None
        for position, item in enumerate(batch):
            try:
                self._write_one(item)
            except DatabaseUnavailableError as exc:
                return batch[position:], exc
            except Exception as exc:  # noqa: BLE001  (refused for good: retrying cannot help)
                with self._lock:
                    self._in_flight -= 1
                    self._dropped += 1
                _log.error(
                    "history item dropped: the database refused it",
                    kind=item.kind.value,
                    key=item.key,
                    error=f"{type(exc).__name__}: {exc}",
                )
            else:
                with self._lock:
                    self._in_flight -= 1
                    self._stored += 1
        return [], None

    async def _work(self) -> None:
        assert self._wakeup is not None and self._retry_now is not None
        delay = self._retry_initial_seconds
        while True:
            await self._wakeup.wait()
            # A moment's wait lets the next versions of the same objects replace the pending
            # ones (an Incident is created, then its status written, a second later resolved).
            await asyncio.sleep(self._linger_seconds)
            self._wakeup.clear()
            while batch := self._take_batch():
                try:
                    unwritten, error = await asyncio.to_thread(self._write_batch, batch)
                except Exception as exc:  # noqa: BLE001  (the worker outlives any surprise, items kept)
                    unwritten, error = batch, exc
                    _log.exception("history writer failed unexpectedly; items kept")
                if not unwritten:
                    self._mark_available()
                    delay = self._retry_initial_seconds
                    continue
                self._requeue(unwritten)
                self._mark_unavailable(error, delay)
                await self._sleep_before_retry(delay)
                delay = min(delay * 2, self._retry_max_seconds)

    def _mark_available(self) -> None:
        with self._lock:
            recovered = self._database_available is False
            self._database_available = True
            pending = len(self._pending) + self._in_flight
        if recovered:
            _log.info("history database reachable again", database=self._store.database, pending=pending)

    def _mark_unavailable(self, error: Exception | None, delay: float) -> None:
        with self._lock:
            first_failure = self._database_available is not False
            self._database_available = False
            pending = len(self._pending) + self._in_flight
        if not isinstance(error, DatabaseUnavailableError):
            # Not an outage (a failing migration, a bug): worth an error on every attempt.
            _log.error(
                "history database not usable, keeping items pending",
                database=self._store.database,
                pending=pending,
                retry_in_seconds=round(delay, 2),
                error=f"{type(error).__name__}: {error}",
            )
            return
        # One warning per outage, then debug: a long outage must not flood the log.
        log = _log.warning if first_failure else _log.debug
        log(
            "history database unavailable, keeping items pending",
            database=self._store.database,
            pending=pending,
            retry_in_seconds=round(delay, 2),
            error=str(error),
        )

    async def _sleep_before_retry(self, delay: float) -> None:
        """Back off (with jitter, so replicas do not retry in lockstep), unless flush() asks for now."""
        assert self._retry_now is not None and self._wakeup is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._retry_now.wait(), timeout=delay * random.uniform(0.8, 1.2))
        # Cleared after waking, not before sleeping: a flush() that asked just before the sleep
        # began still cuts it short.
        self._retry_now.clear()
        self._wakeup.set()


def build_history_writer(
    database_url: str,
    *,
    migrate: bool = True,
    max_pending: int = DEFAULT_MAX_PENDING,
    retry_initial_seconds: float = DEFAULT_RETRY_INITIAL_SECONDS,
    retry_max_seconds: float = DEFAULT_RETRY_MAX_SECONDS,
) -> HistoryWriter:
    """The writer the operator uses: its own engine, and the schema migrated before the first write.

    Nothing connects here, so the operator starts even while the database is down; call
    :meth:`HistoryWriter.start` from the event loop at start-up and :meth:`HistoryWriter.close`
    at shutdown.
    """
    return HistoryWriter(
        HistoryStore(create_history_engine(database_url)),
        prepare=partial(upgrade, database_url) if migrate else None,
        max_pending=max_pending,
        retry_initial_seconds=retry_initial_seconds,
        retry_max_seconds=retry_max_seconds,
    )


__all__ = ["HistoryKind", "HistoryPayload", "HistoryWriter", "build_history_writer"]
