"""The metrics timer: compute a snapshot every interval, publish it, announce stalls.

One task per operator. It never blocks the event loop: SQL runs in a worker thread, Redis
and the Kubernetes API are awaited, notifications are sent by background tasks. A snapshot
that fails as a whole is logged and counted, and the previous one stays published (its
``flywheel_snapshot_timestamp_seconds`` then shows its age).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from flywheel.domain.funnel import StallRule
from flywheel.logs import get_logger
from flywheel.metrics.collector import OperatorCounters
from flywheel.metrics.notifier import StallNotifier
from flywheel.metrics.server import MetricsServer
from flywheel.metrics.snapshot import MetricsSnapshot, SnapshotComputer, SnapshotHolder

_log = get_logger(__name__)

Leadership = Callable[[], Awaitable[bool]]


class MetricsRuntime:
    """Owns the snapshot loop and (optionally) the HTTP server."""

    def __init__(
        self,
        *,
        computer: SnapshotComputer,
        holder: SnapshotHolder,
        counters: OperatorCounters,
        is_active: Leadership,
        interval_seconds: float,
        notifier: StallNotifier | None = None,
        server: MetricsServer | None = None,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError(f"interval_seconds must be > 0, got {interval_seconds}")
        self._computer = computer
        self._holder = holder
        self._counters = counters
        self._is_active = is_active
        self._interval = interval_seconds
        self._notifier = notifier
        self._server = server
        self._task: asyncio.Task[None] | None = None
        self._firing: set[StallRule] = set()

    @property
    def server(self) -> MetricsServer | None:
        return self._server

    async def start(self) -> None:
        if self._server is not None:
            await self._server.start()
        self._task = asyncio.create_task(self._loop(), name="flywheel-metrics-snapshots")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._notifier is not None:
            await self._notifier.close()
        if self._server is not None:
            await self._server.stop()

    async def run_once(self) -> MetricsSnapshot:
        """Compute, publish and act on one snapshot."""
        active = await self._is_active()
        snapshot = await self._computer.compute(active=active)
        self._holder.publish(snapshot)
        pipeline = snapshot.pipeline
        if pipeline is None or pipeline.funnel is None:
            # Unknown is not "not firing": a standby or a database outage keeps no memory of
            # stalls, so a stall still present afterwards counts as a new one.
            self._firing = set()
            return snapshot
        firing = {alert.rule for alert in pipeline.stalls}
        for rule in sorted(firing - self._firing):
            self._counters.stall_started(rule)
        self._firing = firing
        if self._notifier is not None and pipeline.stalls:
            await self._notifier.notify(pipeline.stalls, pipeline.funnel, snapshot.computed_at)
        return snapshot

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                snapshot = await self.run_once()
                _log.debug(
                    "metrics_snapshot_published",
                    active=snapshot.active,
                    redis_up=snapshot.redis_up,
                    database_up=snapshot.database_up,
                    seconds=round(snapshot.computation_seconds, 4),
                )
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - logged with its traceback
                # Keep the timer alive: the previous snapshot stays published and ages visibly.
                self._counters.computation_error()
                _log.exception("metrics_snapshot_failed")
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))


class DriverView(Protocol):
    """What the metrics read of a pass driver (``flywheel.controllers.driver.ObjectDriver``)."""

    @property
    def kind(self) -> str: ...

    @property
    def stats(self) -> DriverStatsView: ...

    def __len__(self) -> int: ...

    def queue_depth(self) -> int: ...

    def failing(self) -> int: ...


class DriverStatsView(Protocol):
    """``flywheel.controllers.driver.DriverStats``: counts, and the results and buckets it uses."""

    @property
    def results(self) -> Sequence[str]: ...

    @property
    def bounds(self) -> Sequence[float]: ...

    @property
    def passes(self) -> Mapping[str, int]: ...

    @property
    def errors(self) -> Mapping[str, int]: ...

    @property
    def retries(self) -> int: ...

    @property
    def duration_buckets(self) -> Sequence[int]: ...

    @property
    def duration_sum(self) -> float: ...

    @property
    def duration_count(self) -> int: ...


class DriverCollector(Collector):
    """The pass drivers' figures, read at scrape time (counters kept by the drivers themselves).

    ``drivers`` is asked on every scrape: the drivers are built by their handlers' start-up,
    which may come after the metrics server's.
    """

    def __init__(self, drivers: Callable[[], Iterable[DriverView]]) -> None:
        self._drivers = drivers

    def collect(self) -> Iterator[Metric]:
        drivers = list(self._drivers())
        passes = CounterMetricFamily(
            "flywheel_reconcile_passes", "Passes of the driver loops by kind and result "
            "(succeeded, deferred: a store was unavailable, stalled: a write refused as invalid, error).",
            labels=["kind", "result"],
        )
        errors = CounterMetricFamily(
            "flywheel_reconcile_pass_errors", "Failed passes by kind and reason (the error class, or HttpNNN).",
            labels=["kind", "reason"],
        )
        retries = CounterMetricFamily(
            "flywheel_reconcile_retries", "Passes scheduled again after a failure (with backoff), by kind.",
            labels=["kind"],
        )
        duration = HistogramMetricFamily(
            "flywheel_reconcile_pass_duration_seconds", "Duration of one pass, by kind.", labels=["kind"]
        )
        queue = GaugeMetricFamily(
            "flywheel_reconcile_queue_depth", "Tracked objects whose next pass is due now, by kind.", labels=["kind"]
        )
        failing = GaugeMetricFamily(
            "flywheel_reconcile_failing_objects",
            "Tracked objects whose last pass failed and that wait for their next try, by kind.",
            labels=["kind"],
        )
        tracked = GaugeMetricFamily(
            "flywheel_reconcile_tracked_objects", "Objects the driver loop tracks, by kind.", labels=["kind"]
        )
        for driver in drivers:
            kind, stats = driver.kind, driver.stats
            for result in stats.results:
                passes.add_metric([kind, result], stats.passes.get(result, 0))
            for reason, count in sorted(stats.errors.items()):
                errors.add_metric([kind, reason], count)
            retries.add_metric([kind], stats.retries)
            buckets = [(str(bound), count) for bound, count in zip(stats.bounds, stats.duration_buckets, strict=True)]
            duration.add_metric([kind], [*buckets, ("+Inf", stats.duration_count)], stats.duration_sum)
            queue.add_metric([kind], driver.queue_depth())
            failing.add_metric([kind], driver.failing())
            tracked.add_metric([kind], len(driver))
        yield from (passes, errors, retries, duration, queue, failing, tracked)


# Kopf restarts a watch stream that brought no event and no bookmark for
# settings.watching.inactivity_timeout, and says so at DEBUG level on this logger.
KOPF_WATCH_LOGGER = "kopf._cogs.clients.watching"
_INACTIVE_STREAM = "is inactive, reconnecting"


class WatchRestartCounter(logging.Filter, Collector):
    """Counts Kopf's restarts of inactive watch streams (a logger filter on its watching logger).

    Kopf only logs them at DEBUG, so the logger is opened to DEBUG and this filter lets through
    only what the operator's own level would show: counting needs no verbose log.
    """

    def __init__(self, show_debug: bool) -> None:
        super().__init__()
        self._show_debug = show_debug
        self._lock = threading.Lock()
        self.restarts = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if _INACTIVE_STREAM in record.getMessage():
            with self._lock:
                self.restarts += 1
        return self._show_debug or record.levelno > logging.DEBUG

    def install(self) -> None:
        watching = logging.getLogger(KOPF_WATCH_LOGGER)
        watching.setLevel(logging.DEBUG)
        watching.addFilter(self)

    def uninstall(self) -> None:
        logging.getLogger(KOPF_WATCH_LOGGER).removeFilter(self)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "flywheel_watch_restarts",
            "Watch streams Kopf restarted because they brought no event and no bookmark for "
            "settings.watching.inactivity_timeout (a silently stalled watch).",
            value=self.restarts,
        )


__all__ = ["KOPF_WATCH_LOGGER", "DriverCollector", "DriverView", "MetricsRuntime", "WatchRestartCounter"]
