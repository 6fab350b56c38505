"""Kopf wiring of the metrics: the timer and the HTTP server, over the indexes of the watched resources.

The Incident and Run indexes (``flywheel.handlers.incident`` and ``.run``) keep what the metrics
need of every Incident and Run in memory (Kopf updates them from its watch streams, so reading
them costs no API call). The startup handler builds the
snapshot computer, the notifier and the server and starts the timer; the cleanup handler stops
them. Nothing here blocks the event loop: SQL runs in worker threads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

import kopf

from flywheel.controllers.driver import ObjectDriver
from flywheel.domain.funnel import funnel_period
from flywheel.domain.run_state import ObservedRun
from flywheel.errors import FlywheelError
from flywheel.handlers.catalogue import CatalogueCollector
from flywheel.handlers.incident import MEMO_INCIDENT_DRIVER, IncidentIndex, all_incidents
from flywheel.handlers.intake import MEMO_WATCHED_NAMESPACES
from flywheel.handlers.retention import HistoryRetentionCollector
from flywheel.logs import LogLevel, get_logger
from flywheel.metrics.collector import ReconcileErrorCounter, build_registry
from flywheel.metrics.notifier import EventPoster, Notification, StallNotifier, count_stall_deliveries
from flywheel.metrics.runtime import DriverCollector, MetricsRuntime, WatchRestartCounter
from flywheel.metrics.server import MetricsApp, MetricsServer
from flywheel.metrics.snapshot import LiveView, SnapshotComputer, SnapshotHolder
from flywheel.settings import FlywheelSettings
from flywheel.stores.events import KubernetesEventPoster
from flywheel.stores.metrics_queries import AnomalyMetricsReader, HistoryMetricsQueries
from flywheel.wiring import FlywheelMemo

# Kopf passes indexes, `old` and `operation` as keyword arguments its callback Protocols do not
# declare, so mypy cannot match such handlers to them: the decorators below carry an ignore for it.

log = get_logger(__name__)

MEMO_METRICS: Final = "metrics"
KOPF_OBJECT_LOGGER: Final = "kopf.objects"


def live_view(incident_index: IncidentIndex, run_views: kopf.Index[str, ObservedRun]) -> LiveView:
    """The watched Incidents and Runs, from the indexes their handlers keep (no index of our own:
    Kopf would call it on every watch event)."""
    return LiveView(
        incidents=tuple(all_incidents(incident_index)),
        runs=tuple(run for runs in run_views.values() for run in runs),
    )


@dataclass
class MetricsHandles:
    """What the cleanup handler must stop."""

    runtime: MetricsRuntime
    error_counter: ReconcileErrorCounter
    watch_restarts: WatchRestartCounter


def _event_poster(poster: KubernetesEventPoster) -> EventPoster:
    async def post(notification: Notification) -> None:
        if not notification.subjects:
            log.warning("stall_event_without_resource", reason=notification.reason,
                        message=notification.message)
            return
        # One Event per named resource, so `kubectl describe` of each shows why it is named.
        for subject in notification.subjects:
            await poster.post(subject, type="Warning", reason=notification.reason, message=notification.message)

    return post


def notification_scope(settings: FlywheelSettings, namespaces: tuple[str, ...]) -> str:
    """What one operator deployment watches: the tenant, its namespaces, or the whole cluster.

    Replicas of one deployment share the scope (and so the de-duplication key); operators
    watching other namespaces with the same Redis do not silence each other.
    """
    if settings.tenant:
        return settings.tenant
    return ",".join(sorted(namespaces)) if namespaces else "cluster"


def drivers_of(memo: kopf.Memo) -> list[ObjectDriver]:
    """The Incident and Run drivers built so far (their start-up may come after this one)."""
    from flywheel.handlers.run import MEMO_RUN_DRIVER

    found = (memo.get(MEMO_INCIDENT_DRIVER), memo.get(MEMO_RUN_DRIVER))
    return [driver for driver in found if isinstance(driver, ObjectDriver)]


@kopf.on.startup()  # type: ignore[arg-type]
async def start_metrics(
    settings: kopf.OperatorSettings,
    memo: FlywheelMemo,
    incident_index: IncidentIndex,
    run_views: kopf.Index[str, ObservedRun],
    **_: Any,
) -> None:
    deps = memo.deps
    peering = memo.peering
    config = deps.settings
    namespaces = tuple(memo.get(MEMO_WATCHED_NAMESPACES) or ())
    try:
        period = funnel_period(config.funnel_period_minutes)
    except FlywheelError as exc:
        raise kopf.PermanentError(f"metrics configuration: {exc}") from exc
    delivery = deps.notifier if deps.notifier.enabled else None

    counters = deps.counters
    error_counter = ReconcileErrorCounter(counters)
    logging.getLogger(KOPF_OBJECT_LOGGER).addHandler(error_counter)

    holder = SnapshotHolder()
    registry = build_registry(holder, counters)
    registry.register(DriverCollector(lambda: drivers_of(memo)))
    watch_restarts = WatchRestartCounter(show_debug=config.log_level is LogLevel.DEBUG)
    watch_restarts.install()
    registry.register(watch_restarts)
    registry.register(HistoryRetentionCollector(memo))
    registry.register(CatalogueCollector(memo))

    computer = SnapshotComputer(
        history=HistoryMetricsQueries(deps.history_engine),
        anomalies=AnomalyMetricsReader(deps.redis, deps.anomalies.thresholds, tenant=config.tenant),
        live_view=lambda: live_view(incident_index, run_views),
        playbook_count=lambda: deps.catalogue.current().playbook_count,
        period=period,
        internal_sources=config.internal_sources,
    )

    async def is_active() -> bool:
        return (await peering.check()).active

    notifier = StallNotifier(
        scope=notification_scope(config, namespaces),
        counters=counters,
        redis_client=deps.redis,
        post_event=_event_poster(KubernetesEventPoster(deps.kube)),
        delivery=delivery,
    )
    if delivery is not None:
        deps.notifier.observe(count_stall_deliveries(counters))
    server = (
        MetricsServer(MetricsApp(holder, registry), config.metrics_bind_address, config.metrics_port)
        if config.metrics_port
        else None
    )
    runtime = MetricsRuntime(
        computer=computer,
        holder=holder,
        counters=counters,
        is_active=is_active,
        interval_seconds=config.metrics_interval_seconds,
        notifier=notifier,
        server=server,
    )
    try:
        await runtime.start()
    except OSError as exc:  # the port is taken: a configuration problem, not a transient one
        logging.getLogger(KOPF_OBJECT_LOGGER).removeHandler(error_counter)
        watch_restarts.uninstall()
        raise kopf.PermanentError(
            f"metrics server cannot listen on {config.metrics_bind_address}:{config.metrics_port}: {exc}"
        ) from exc
    memo[MEMO_METRICS] = MetricsHandles(runtime=runtime, error_counter=error_counter, watch_restarts=watch_restarts)
    log.info(
        "metrics_started",
        port=config.metrics_port or None,
        interval_seconds=config.metrics_interval_seconds,
        funnel_period_minutes=int(period.total_seconds() // 60),
        webhook=deps.notifier.format if delivery is not None else None,
    )


@kopf.on.cleanup()
async def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
    handles = memo.get(MEMO_METRICS)
    if not isinstance(handles, MetricsHandles):
        return
    await handles.runtime.stop()
    logging.getLogger(KOPF_OBJECT_LOGGER).removeHandler(handles.error_counter)
    handles.watch_restarts.uninstall()
