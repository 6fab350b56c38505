"""The metrics timer: compute a snapshot every interval, publish it, announce stalls.

One task per operator. It never blocks the event loop: SQL runs in a worker thread, Redis
and the Kubernetes API are awaited, notifications are sent by background tasks. A snapshot
that fails as a whole is logged and counted, and the previous one stays published (its
``flywheel_snapshot_timestamp_seconds`` then shows its age).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

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
                    "metrics snapshot published",
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
                _log.exception("metrics snapshot failed")
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))


__all__ = ["MetricsRuntime"]
