"""Kopf wiring of retention and of the history writer's health: the periodic sweep, drop reports, metrics.

The startup handler starts the retention loop (unless ``FLYWHEEL_FINISHED_TTL_SECONDS`` is 0):
every ``FLYWHEEL_RETENTION_INTERVAL_SECONDS`` it asks the peering whether this replica is the
active one, as the metrics loop does, and only then sweeps — a standby never deletes. It also
has the history writer report dropped items as Warning Events on the object they concerned
(at most one a minute: an overflow in a long outage must not turn into an Event storm).

:class:`HistoryRetentionCollector` exposes ``flywheel_history_outbox_dropped_total{reason}``,
``flywheel_history_outbox_pending``, ``flywheel_history_spooled_records`` and
``flywheel_retention_deleted_total{kind}``; ``flywheel.handlers.metrics`` registers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import kopf
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flywheel.controllers.retention import (
    DELETED_KINDS,
    HISTORY_PENDING,
    HISTORY_UNAVAILABLE,
    RetentionController,
)
from flywheel.domain.funnel import ObjectSample
from flywheel.handlers.intake import MEMO_WATCHED_NAMESPACES
from flywheel.logs import get_logger
from flywheel.stores.events import KubernetesEventPoster
from flywheel.stores.history import HistoryKind, HistoryWriter
from flywheel.stores.history.outbox import DroppedItem
from flywheel.stores.peering import PeeringObserver
from flywheel.stores.retention import KubeRetentionStore
from flywheel.wiring import FlywheelMemo

log = get_logger(__name__)

MEMO_RETENTION: Final = "retention"
DROP_EVENT_INTERVAL_SECONDS: Final = 60.0
DROP_EVENT_REASON: Final = "HistoryItemDropped"
_EVENT_KINDS: Final[dict[str, str]] = {
    HistoryKind.INCIDENT: "Incident", HistoryKind.RUN: "Run", HistoryKind.APPROVAL: "Approval",
}


@dataclass
class RetentionHandles:
    """What the cleanup handler stops and the collector reads."""

    controller: RetentionController | None
    task: asyncio.Task[None] | None


class DropReporter:
    """Turns the writer's drop reports (any thread) into Warning Events, one a minute at most."""

    def __init__(self, poster: KubernetesEventPoster, loop: asyncio.AbstractEventLoop) -> None:
        self._poster = poster
        self._loop = loop
        self._last_event = float("-inf")
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, item: DroppedItem) -> None:
        kind = _EVENT_KINDS.get(item.kind)
        if kind is None or item.namespace is None or item.name is None:
            return  # logged and counted by the writer; an Event needs an object to be about
        now = time.monotonic()
        if now - self._last_event < DROP_EVENT_INTERVAL_SECONDS:
            return
        self._last_event = now
        subject = ObjectSample(kind=kind, namespace=item.namespace, name=item.name, uid=item.key)
        message = f"history item not stored ({item.reason.value}): {item.detail}"[:1024]
        self._loop.call_soon_threadsafe(self._post, subject, message)

    def _post(self, subject: ObjectSample, message: str) -> None:
        task = self._loop.create_task(self._send(subject, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, subject: ObjectSample, message: str) -> None:
        try:
            await self._poster.post(subject, type="Warning", reason=DROP_EVENT_REASON, message=message)
        except Exception as exc:  # noqa: BLE001  (the drop is logged and counted already)
            log.warning("history_drop_event_not_posted", subject=str(subject), error=str(exc))


class HistoryRetentionCollector(Collector):
    """The writer's counters and the retention counters, read at scrape time (no I/O but the
    spool's row count, a local SQLite query)."""

    def __init__(self, memo: kopf.Memo) -> None:
        self._memo = memo

    def collect(self) -> Iterator[Metric]:
        writer: HistoryWriter | None = getattr(getattr(self._memo, "deps", None), "history", None)
        if writer is not None:
            dropped = CounterMetricFamily(
                "flywheel_history_outbox_dropped",
                "History items that will never reach the database, by reason: overflow (memory bound passed in an "
                "outage), spool_failed (spool file not writable), refused (malformed or refused by the database).",
                labels=["reason"],
            )
            for reason, count in writer.dropped_by_reason.items():
                dropped.add_metric([reason.value], count)
            yield dropped
            yield GaugeMetricFamily(
                "flywheel_history_outbox_pending",
                "History items not stored yet: projections in memory plus spooled records.",
                value=writer.pending_count,
            )
            yield GaugeMetricFamily(
                "flywheel_history_spooled_records",
                "Audit events, repair executions and knowledge entries waiting in the spool for the database.",
                value=writer.spooled_count,
            )
        handles = self._memo.get(MEMO_RETENTION)
        controller = handles.controller if isinstance(handles, RetentionHandles) else None
        deleted = CounterMetricFamily(
            "flywheel_retention_deleted",
            "Objects deleted after FLYWHEEL_FINISHED_TTL_SECONDS (Incidents, and the Runs, Approvals and claim "
            "Leases handed with them to the garbage collector), by kind.",
            labels=["kind"],
        )
        totals = controller.deleted_total if controller is not None else {}
        for kind in DELETED_KINDS:
            deleted.add_metric([kind], totals.get(kind, 0))
        yield deleted


async def retention_loop(
    controller: RetentionController, peering: PeeringObserver, namespaces: Sequence[str], interval_seconds: float
) -> None:
    """Sweep every ``interval_seconds`` on the active replica; a failed pass is logged and retried."""
    while True:
        try:
            if (await peering.check()).active:
                report = await controller.sweep(namespaces)
                # Quiet unless something went or the history holds something back (an outage).
                if report.deleted or report.held[HISTORY_PENDING] or report.held[HISTORY_UNAVAILABLE]:
                    log.info("retention_pass", deleted=len(report.deleted), held=dict(report.held))
        except Exception:
            log.exception("retention_pass_failed")
        await asyncio.sleep(interval_seconds)


@kopf.on.startup()
async def start_retention(memo: FlywheelMemo, **_: Any) -> None:
    deps, peering = memo.deps, memo.peering
    config = deps.settings
    deps.history.report_drops_to(DropReporter(KubernetesEventPoster(deps.kube), asyncio.get_running_loop()))
    if not config.finished_ttl_seconds:
        memo[MEMO_RETENTION] = RetentionHandles(controller=None, task=None)
        log.info("retention_disabled", setting="FLYWHEEL_FINISHED_TTL_SECONDS=0", effect="finished Incidents are kept")
        return
    controller = RetentionController(KubeRetentionStore(deps.kube), deps.history,
                                     ttl_seconds=config.finished_ttl_seconds)
    namespaces = tuple(memo.get(MEMO_WATCHED_NAMESPACES) or ())
    task = asyncio.get_running_loop().create_task(
        retention_loop(controller, peering, namespaces, config.retention_interval_seconds), name="flywheel-retention"
    )
    memo[MEMO_RETENTION] = RetentionHandles(controller=controller, task=task)
    log.info("retention_started", ttl_seconds=config.finished_ttl_seconds,
             interval_seconds=config.retention_interval_seconds, spool_durable=deps.history.spool_durable)


@kopf.on.cleanup()
async def stop_retention(memo: kopf.Memo, **_: Any) -> None:
    handles = memo.get(MEMO_RETENTION)
    if isinstance(handles, RetentionHandles) and handles.task is not None:
        handles.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await handles.task


__all__ = ["DropReporter", "HistoryRetentionCollector", "RetentionHandles", "retention_loop"]
