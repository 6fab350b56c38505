"""Immutable metrics snapshots and the computer that builds them.

A snapshot is computed by a timer from three sources and then only read:

- the history database (period figures: the funnel, success rates, knowledge, histograms),
  queried in a worker thread so that Kopf's event loop never waits on SQL;
- Redis (anomaly recurrence figures), read asynchronously;
- the resources the operator watches (Kopf indexes, passed as plain mappings): figures about
  *now* — Runs by state, Incidents waiting without a Run, stuck Incidents, the current flow.

Each source may be down; its figures are then left out of the snapshot (never replaced by
zeros, which would look like real values) and ``redis_up``/``database_up`` say why. A replica
that is not the active Kopf peer computes no pipeline figures at all: its watched resources
are frozen while Kopf pauses it, so whatever it published would describe the past.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flywheel.api.times import format_precise_time
from flywheel.domain.funnel import (
    FunnelCounts,
    ObjectSample,
    StallAlert,
    evaluate_stalls,
    rank_failure_classes,
    source_statistics,
)
from flywheel.domain.health import (
    NODE_ACTIVITY_WINDOW,
    CurrentState,
    FlywheelHealth,
    FlywheelNode,
    NodeActivity,
    current_state,
    flywheel_health,
    node_activity,
)
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import ObservedRun
from flywheel.errors import DatabaseUnavailableError, RedisUnavailableError
from flywheel.logs import get_logger
from flywheel.stores.metrics_queries import (
    AnomalyFigures,
    AnomalyMetricsReader,
    HistoryFigures,
    HistoryMetricsQueries,
)

_log = get_logger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class LiveView:
    """The watched resources at one instant."""

    incidents: tuple[IncidentView, ...] = ()
    runs: tuple[ObservedRun, ...] = ()


# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True, slots=True)
class PipelineSnapshot:
    """Figures about the remediation pipeline; a part is ``None`` when its store was down."""

    playbook_count: int
    current: CurrentState
    history: HistoryFigures | None
    anomalies: AnomalyFigures | None
    funnel: FunnelCounts | None
    stalls: tuple[StallAlert, ...]
    health: FlywheelHealth | None
    nodes: tuple[NodeActivity, ...]


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything a scrape or a statistics request may show, computed once."""

    computed_at: datetime
    computation_seconds: float
    active: bool
    redis_up: bool
    database_up: bool
    funnel_period: timedelta
    pipeline: PipelineSnapshot | None

    # -- JSON endpoints -------------------------------------------------------------

    def summary_json(self) -> dict[str, Any]:
        """The body of ``/stats/summary``: health, funnel, stalls, runs and anomalies."""
        body: dict[str, Any] = self._header()
        pipeline = self.pipeline
        if pipeline is None:
            return body
        health = pipeline.health
        current = pipeline.current
        body.update(
            {
                "playbook_count": pipeline.playbook_count,
                "execution_success_rate": _number(health.success_rate.value) if health else None,
                "execution_success_rate_window": (
                    _window_label(health.success_rate.window) if health and health.success_rate.window else None
                ),
                "executions": health.success_rate.executions if health else None,
                "knowledge_entries": health.knowledge_entries if health else None,
                "resolved_without_root_cause_share": (
                    _number(health.resolved_without_root_cause_share) if health else None
                ),
                "alertname_null_rate": _number(health.alertname_null_rate) if health else None,
                "incidents_stuck": current.incidents_stuck,
                "processed_today": health.processed_today if health else None,
                "runs_by_state": {state.value: count for state, count in current.runs_by_state.items()},
                "funnel": _funnel_json(pipeline.funnel, current, self.funnel_period),
                "stalls": [{"rule": alert.rule.value, "message": alert.message} for alert in pipeline.stalls],
                "anomalies": _anomalies_json(pipeline.anomalies),
            }
        )
        return body

    def flywheel_json(self) -> dict[str, Any]:
        """The body of ``/stats/flywheel``: the six nodes and the 10 most recent active Incidents."""
        body: dict[str, Any] = self._header()
        pipeline = self.pipeline
        if pipeline is None:
            return body
        body["node_activity_window_seconds"] = int(NODE_ACTIVITY_WINDOW.total_seconds())
        body["nodes"] = {
            node.node.value: {"status": node.status, "activity": node.count, "counts": node.meaning}
            for node in pipeline.nodes
        }
        body["current_flow"] = [
            {
                "namespace": incident.namespace,
                "name": incident.name,
                "alert_name": incident.alert_name,
                "phase": incident.phase.value if incident.phase else None,
                "node": incident.node.value,
                "created_at": format_precise_time(incident.created_at),
            }
            for incident in pipeline.current.active_incidents
        ]
        return body

    def _header(self) -> dict[str, Any]:
        return {
            "computed_at": format_precise_time(self.computed_at),
            "active": self.active,
            "redis_up": self.redis_up,
            "database_up": self.database_up,
        }


def _number(value: float) -> float | None:
    # JSON has no NaN; null says "not enough data" just as NaN does in Prometheus.
    return None if math.isnan(value) else round(value, 6)




def _window_label(window: timedelta) -> str:
    hours = int(window.total_seconds() // 3600)
    return f"{hours // 24}d" if hours % 24 == 0 and hours >= 48 else f"{hours}h"


def _samples(samples: Iterable[ObjectSample]) -> list[str]:
    return [str(sample) for sample in samples]


def _funnel_json(funnel: FunnelCounts | None, current: CurrentState, period: timedelta) -> dict[str, Any]:
    body: dict[str, Any] = {
        "period_minutes": int(period.total_seconds() // 60),
        "open_waiting": current.open_waiting,
        "open_waiting_samples": _samples(current.open_waiting_samples),
    }
    if funnel is None:
        return body
    body.update(
        {
            "opened": funnel.opened,
            "runs_started": funnel.runs_started,
            "executed": funnel.executed,
            "verification_passed": funnel.verification_passed,
            "verification_failed": funnel.verification_failed,
            "resolved": funnel.resolved,
            "failure_classes": [
                {"code": item.code, "count": item.count, "examples": _samples(item.examples)}
                for item in funnel.failure_classes
            ],
            "approvals": {"rejected": funnel.approvals_rejected, "invalid": funnel.approvals_invalid},
            "sources": {
                "reporting": funnel.sources.reporting,
                "progressing": funnel.sources.progressing,
                "open_only": funnel.sources.open_only,
                "top_open_only": [
                    {"source": item.source, "opened": item.opened} for item in funnel.sources.top_open_only
                ],
            },
        }
    )
    return body


def _anomalies_json(anomalies: AnomalyFigures | None) -> dict[str, Any] | None:
    if anomalies is None:
        return None
    return {
        "tracked_keys": anomalies.tracked_keys,
        "keys_by_level": dict(anomalies.keys_by_level),
        "dispositions": dict(anomalies.dispositions),
        "top": [
            {
                "tenant": series.tenant,
                "key": series.key,
                "alert_name": series.alert_name,
                "service": series.service,
                "counts": dict(series.counts),
            }
            for series in anomalies.top
        ],
    }


class SnapshotHolder:
    """The latest snapshot. Replacing a reference is atomic, so readers never see half a snapshot."""

    def __init__(self) -> None:
        self._snapshot: MetricsSnapshot | None = None

    @property
    def latest(self) -> MetricsSnapshot | None:
        return self._snapshot

    def publish(self, snapshot: MetricsSnapshot) -> None:
        self._snapshot = snapshot


# --------------------------------------------------------------------------- computer


class SnapshotComputer:
    """Builds one :class:`MetricsSnapshot` from the stores and the watched resources."""

    def __init__(
        self,
        *,
        history: HistoryMetricsQueries,
        anomalies: AnomalyMetricsReader,
        live_view: Callable[[], LiveView],
        playbook_count: Callable[[], int],
        period: timedelta,
        internal_sources: Collection[str] = (),
        clock: Callable[[], datetime] = utc_now,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._history = history
        self._anomalies = anomalies
        self._live_view = live_view
        self._playbook_count = playbook_count
        self._period = period
        self._internal_sources = tuple(internal_sources)
        self._clock = clock
        self._timer = timer
        # Outages are logged when they start and end, not on every snapshot of a long one.
        self._outages: dict[str, bool] = {}

    async def compute(self, *, active: bool) -> MetricsSnapshot:
        started = self._timer()
        now = self._clock()
        if not active:
            redis_up, database_up = await asyncio.gather(self._redis_reachable(), self._database_reachable())
            return MetricsSnapshot(
                computed_at=now,
                computation_seconds=self._timer() - started,
                active=False,
                redis_up=redis_up,
                database_up=database_up,
                funnel_period=self._period,
                pipeline=None,
            )
        # Read the watched resources before anything awaits: Kopf updates its indexes on this
        # event loop, so the view is consistent as of ``now``.
        live = self._live_view()
        (history, database_up), (anomalies, redis_up) = await asyncio.gather(
            self._read_history(now), self._read_anomalies(now)
        )
        current = current_state(live.incidents, live.runs, now)
        funnel = self._funnel(history, current) if history is not None else None
        playbooks = self._playbook_count()
        node_counts: dict[FlywheelNode, int | None] = dict(history.node_activity) if history is not None else {}
        if anomalies is not None:
            node_counts[FlywheelNode.DIAGNOSIS] = anomalies.occurrences_last_hour
        pipeline = PipelineSnapshot(
            playbook_count=playbooks,
            current=current,
            history=history,
            anomalies=anomalies,
            funnel=funnel,
            stalls=evaluate_stalls(funnel) if funnel is not None else (),
            health=flywheel_health(playbooks, history.health) if history is not None else None,
            nodes=node_activity(node_counts),
        )
        return MetricsSnapshot(
            computed_at=now,
            computation_seconds=self._timer() - started,
            active=True,
            redis_up=redis_up,
            database_up=database_up,
            funnel_period=self._period,
            pipeline=pipeline,
        )

    def _funnel(self, history: HistoryFigures, current: CurrentState) -> FunnelCounts:
        stages = history.funnel
        return FunnelCounts(
            period=self._period,
            opened=stages.opened,
            runs_started=stages.runs_started,
            executed=stages.executed,
            verification_passed=stages.verification_passed,
            verification_failed=stages.verification_failed,
            resolved=stages.resolved,
            open_waiting=current.open_waiting,
            open_waiting_samples=current.open_waiting_samples,
            waiting_run_samples=current.waiting_run_samples,
            executing_run_samples=current.executing_run_samples,
            unresolved_samples=current.unresolved_samples,
            failure_classes=rank_failure_classes(stages.failure_classes),
            approvals_rejected=stages.approvals_rejected,
            approvals_invalid=stages.approvals_invalid,
            sources=source_statistics(stages.sources, self._internal_sources),
        )

    async def _read_history(self, now: datetime) -> tuple[HistoryFigures | None, bool]:
        """The history figures (None if unreadable) and whether the database was reachable."""
        try:
            figures = await asyncio.to_thread(self._history.read, now, self._period)
        except DatabaseUnavailableError as exc:
            self._outage("database", str(exc))
            return None, False
        except Exception:  # noqa: BLE001 - logged with its traceback
            # A query that the reachable database refuses is a bug (or a schema older than
            # this code): leave the figures out, keep the operator running, and say so loudly.
            _log.exception("history_metrics_query_failed", database=self._history.database)
            return None, True
        self._recovered("database")
        return figures, True

    async def _read_anomalies(self, now: datetime) -> tuple[AnomalyFigures | None, bool]:
        """The anomaly figures (None if unreadable) and whether Redis was reachable."""
        try:
            figures = await self._anomalies.read(now)
        except RedisUnavailableError as exc:
            self._outage("redis", str(exc))
            return None, False
        except Exception:  # noqa: BLE001 - logged with its traceback
            _log.exception("anomaly_metrics_read_failed")
            return None, True
        self._recovered("redis")
        return figures, True

    def _outage(self, store: str, error: str) -> None:
        if not self._outages.get(store):
            _log.warning("metrics_figures_left_out", store=store, error=error)
            self._outages[store] = True

    def _recovered(self, store: str) -> None:
        if self._outages.get(store):
            _log.info("metrics_figures_back", store=store)
            self._outages[store] = False

    async def _redis_reachable(self) -> bool:
        try:
            await self._anomalies.ping()
        except RedisUnavailableError:
            return False
        return True

    async def _database_reachable(self) -> bool:
        try:
            await asyncio.to_thread(self._history.ping)
        except DatabaseUnavailableError:
            return False
        return True


__all__ = [
    "LiveView",
    "MetricsSnapshot",
    "PipelineSnapshot",
    "SnapshotComputer",
    "SnapshotHolder",
    "utc_now",
]
