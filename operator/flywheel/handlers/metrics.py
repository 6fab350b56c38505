"""Kopf wiring of the metrics: two indexes of the watched resources, the timer and the HTTP server.

The indexes keep what the metrics need of every Incident and Run in memory (Kopf updates them
from its watch streams, so reading them costs no API call). The startup handler builds the
snapshot computer, the notifier and the server and starts the timer; the cleanup handler stops
them. Nothing here blocks the event loop: SQL runs in worker threads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import kopf
from sqlalchemy import Engine

from flywheel.api.enums import IncidentPhase, RunMode, RunState
from flywheel.domain.funnel import funnel_period
from flywheel.domain.health import WatchedIncident, WatchedRun
from flywheel.errors import FlywheelError
from flywheel.handlers.intake import MEMO_WATCHED_NAMESPACES
from flywheel.logs import get_logger
from flywheel.metrics.collector import OperatorCounters, ReconcileErrorCounter, build_registry
from flywheel.metrics.notifier import EventPoster, Notification, StallNotifier, WebhookSender
from flywheel.metrics.runtime import MetricsRuntime
from flywheel.metrics.server import MetricsApp, MetricsServer
from flywheel.metrics.snapshot import LiveView, SnapshotComputer, SnapshotHolder
from flywheel.settings import FlywheelSettings, get_settings
from flywheel.stores.events import KubernetesEventPoster
from flywheel.stores.history.engine import create_history_engine
from flywheel.stores.kube import GROUP, VERSION
from flywheel.stores.metrics_queries import AnomalyMetricsReader, HistoryMetricsQueries
from flywheel.stores.peering import PeeringObserver

log = get_logger(__name__)

MEMO_METRICS: Final = "metrics"
KOPF_OBJECT_LOGGER: Final = "kopf.objects"


def _created_at(meta: kopf.Meta) -> datetime:
    return datetime.fromisoformat(str(meta["creationTimestamp"]))


def _enum_or_none(enum: type[Any], value: object) -> Any:
    try:
        return enum(value) if value else None
    except ValueError:
        return None


@kopf.index(GROUP, VERSION, "incidents")
async def metrics_watched_incidents(
    namespace: str, name: str, uid: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, **_: Any
) -> dict[str, WatchedIncident]:
    """Every Incident, reduced to what the health and funnel figures need."""
    run_ref = status.get("runRef") or {}
    return {
        namespace: WatchedIncident(
            namespace=namespace,
            name=name,
            uid=uid,
            created_at=_created_at(meta),
            phase=_enum_or_none(IncidentPhase, status.get("phase")),
            alert_name=spec.get("alertName") or None,
            source=spec.get("source") or None,
            has_decision=bool(status.get("decision")),
            run_uid=(run_ref.get("uid") or run_ref.get("name")) if run_ref else None,
        )
    }


@kopf.index(GROUP, VERSION, "runs")
async def metrics_watched_runs(
    namespace: str, name: str, uid: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, **_: Any
) -> dict[str, WatchedRun]:
    """Every Run, reduced to its state and mode."""
    return {
        namespace: WatchedRun(
            namespace=namespace,
            name=name,
            uid=uid,
            created_at=_created_at(meta),
            state=_enum_or_none(RunState, status.get("state")),
            mode=_enum_or_none(RunMode, spec.get("mode")) or RunMode.AUTO,
        )
    }


@dataclass
class MetricsHandles:
    """What the cleanup handler must stop."""

    runtime: MetricsRuntime
    engine: Engine
    error_counter: ReconcileErrorCounter


def _event_poster(poster: KubernetesEventPoster) -> EventPoster:
    async def post(notification: Notification) -> None:
        if not notification.subjects:
            log.warning("stall has no resource to attach an Event to", reason=notification.reason,
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


@kopf.on.startup()
async def start_metrics(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    metrics_watched_incidents: kopf.Index[str, WatchedIncident],
    metrics_watched_runs: kopf.Index[str, WatchedRun],
    **_: Any,
) -> None:
    deps = getattr(memo, "deps", None)
    peering: PeeringObserver | None = getattr(memo, "peering", None)
    if deps is None or peering is None:
        raise kopf.TemporaryError("shared dependencies are not built yet", delay=1)
    config = get_settings()
    namespaces = tuple(memo.get(MEMO_WATCHED_NAMESPACES) or ())
    try:
        period = funnel_period(config.funnel_period_minutes)
        webhook = (
            WebhookSender(
                config.notify_webhook_url,
                config.notify_webhook_format,
                timeout_seconds=config.notify_webhook_timeout_seconds,
                retries=config.notify_webhook_retries,
            )
            if config.notify_webhook_url
            else None
        )
    except FlywheelError as exc:
        raise kopf.PermanentError(f"metrics configuration: {exc}") from exc

    counters = OperatorCounters()
    error_counter = ReconcileErrorCounter(counters)
    logging.getLogger(KOPF_OBJECT_LOGGER).addHandler(error_counter)

    holder = SnapshotHolder()
    registry = build_registry(holder, counters)

    engine = create_history_engine(config.database_url)
    computer = SnapshotComputer(
        history=HistoryMetricsQueries(engine),
        anomalies=AnomalyMetricsReader(deps.redis, deps.anomalies.thresholds, tenant=config.tenant),
        live_view=lambda: LiveView.from_indexes(metrics_watched_incidents, metrics_watched_runs),
        playbook_count=lambda: deps.catalogue.playbook_count,
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
        webhook=webhook,
    )
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
        engine.dispose()
        raise kopf.PermanentError(
            f"metrics server cannot listen on {config.metrics_bind_address}:{config.metrics_port}: {exc}"
        ) from exc
    memo[MEMO_METRICS] = MetricsHandles(runtime=runtime, engine=engine, error_counter=error_counter)
    log.info(
        "metrics started",
        port=config.metrics_port or None,
        interval_seconds=config.metrics_interval_seconds,
        funnel_period_minutes=int(period.total_seconds() // 60),
        webhook=webhook.format.value if webhook else None,
    )


@kopf.on.cleanup()
async def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
    handles = memo.get(MEMO_METRICS)
    if not isinstance(handles, MetricsHandles):
        return
    await handles.runtime.stop()
    logging.getLogger(KOPF_OBJECT_LOGGER).removeHandler(handles.error_counter)
    handles.engine.dispose()
