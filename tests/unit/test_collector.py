"""The Prometheus collector and the snapshot computer, on a fresh CollectorRegistry each time.

Scenario matrix:
- every SPEC §6 metric is exposed, prefixed ``flywheel_``, with HELP and TYPE, and the values
  come from the snapshot (read with ``get_sample_value``);
- NaN stays NaN (success rate below the minimum sample, shares of empty populations);
- cardinality: 50 anomaly keys and 9 failure classes in the stores still give at most 20 keys
  and 5 classes; the whole exposition stays far below 10k series;
- standby replica: only status families (active=0, snapshot timestamp, up gauges, process
  counters), no pipeline family; no snapshot yet: only the process counters;
- a store down: its families are absent (not zero) and its up gauge is 0, the others remain;
- a query bug (not an outage) leaves the figures out but keeps database_up at 1;
- reconcile errors are counted from Kopf's per-object ERROR records, bounded by kind;
- stall transitions and notifications are counted;
- ``collect()`` does no I/O: it runs with the stores raising on any call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flywheel.api.enums import IncidentPhase, RunMode, RunState, TargetKind
from flywheel.domain.funnel import FailureClass, ObjectSample, SourceActivity, StallRule
from flywheel.domain.health import (
    ExecutionTally,
    FlywheelNode,
    HistoryHealthCounts,
)
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import ObservedRun
from flywheel.errors import DatabaseUnavailableError, RedisUnavailableError
from flywheel.metrics.collector import OperatorCounters, ReconcileErrorCounter, SnapshotCollector
from flywheel.metrics.runtime import MetricsRuntime
from flywheel.metrics.snapshot import LiveView, MetricsSnapshot, SnapshotComputer, SnapshotHolder
from flywheel.stores.metrics_queries import (
    APPROVAL_WAIT_BUCKETS,
    RUN_DURATION_BUCKETS,
    ActionOutcomeCount,
    AnomalyFigures,
    AnomalySeries,
    DurationHistogram,
    FunnelHistory,
    HistogramSeries,
    HistoryFigures,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
PERIOD = timedelta(minutes=10)


# --------------------------------------------------------------------------- in-memory stores

DAY = ExecutionTally(12, 9)
WEEK = ExecutionTally(30, 20)


def history_figures(
    *,
    opened: int = 4,
    runs_started: int = 0,
    failure_classes: Sequence[FailureClass] = (),
    last_day: ExecutionTally = DAY,
    last_week: ExecutionTally = WEEK,
) -> HistoryFigures:
    return HistoryFigures(
        funnel=FunnelHistory(
            opened=opened, runs_started=runs_started, executed=0, verification_passed=0, verification_failed=0,
            resolved=0, failure_classes=tuple(failure_classes), approvals_rejected=1, approvals_invalid=2,
            sources=(SourceActivity("alertmanager", 3, 0), SourceActivity("probe", 9, 0)),
        ),
        health=HistoryHealthCounts(
            last_day=last_day, last_week=last_week, knowledge_entries=8, knowledge_without_root_cause=2,
            incidents_last_day=10, incidents_without_alertname=1, processed_today=7,
        ),
        node_activity={FlywheelNode.MONITORING: 4, FlywheelNode.DEDUPLICATION: 1, FlywheelNode.REASONING: 3,
                       FlywheelNode.EXECUTION: 0, FlywheelNode.LEARNING: 2},
        repair_by_action={"RolloutRestart": ExecutionTally(10, 8)},
        actions=(ActionOutcomeCount("RolloutRestart", "Auto", True, 40), ActionOutcomeCount("Scale", "Shadow", False, 2)),
        run_duration=DurationHistogram(
            RUN_DURATION_BUCKETS,
            {"Succeeded": HistogramSeries(cumulative=(1, 2, 3, 4, 4, 4, 4, 4, 4, 4), total_seconds=95.5, count=4)},
        ),
        approval_wait=DurationHistogram(
            APPROVAL_WAIT_BUCKETS,
            {"Approved": HistogramSeries(cumulative=(0, 1, 1, 1, 1, 1, 1, 1, 1, 1), total_seconds=42.0, count=1)},
        ),
    )


def anomaly_figures(keys: int = 2) -> AnomalyFigures:
    top = tuple(
        AnomalySeries(tenant="shop", key=f"{number:016x}", alert_name="KubePodOOMKilled", service="checkout",
                      counts={"1h": 1, "24h": 50 - number, "7d": 60, "30d": 70})
        for number in range(min(keys, 20))
    )
    return AnomalyFigures(top=top, keys_by_level={"none": keys - 1, "REPEAT": 0, "ESCALATE": 0, "PERMANENT_FIX": 1},
                          dispositions={"auto_repair": 3, "manual_resolved": 1}, occurrences_last_hour=keys,
                          tracked_keys=keys)


class FakeHistory:
    """The history queries' interface, answering from memory (or failing like the real one)."""

    def __init__(self, figures: HistoryFigures | None = None, error: Exception | None = None) -> None:
        self.figures = figures or history_figures()
        self.error = error
        self.database = "memory"

    def read(self, now: datetime, period: timedelta) -> HistoryFigures:
        if self.error is not None:
            raise self.error
        return self.figures

    def ping(self) -> None:
        if isinstance(self.error, DatabaseUnavailableError):
            raise self.error


class FakeAnomalies:
    def __init__(self, figures: AnomalyFigures | None = None, down: bool = False) -> None:
        self.figures = figures or anomaly_figures()
        self.down = down

    async def read(self, now: datetime) -> AnomalyFigures:
        if self.down:
            raise RedisUnavailableError("redis down")
        return self.figures

    async def ping(self) -> None:
        if self.down:
            raise RedisUnavailableError("redis down")


def live_view() -> LiveView:
    incidents = tuple(
        IncidentView(namespace="shop", name=f"waiting-{n}", uid=f"u{n}", created_at=NOW - timedelta(minutes=n),
                     phase=IncidentPhase.INVESTIGATING, alert_name=None if n == 0 else "HighLatency")
        for n in range(3)
    ) + (IncidentView(namespace="shop", name="stuck", uid="s", created_at=NOW - timedelta(days=2),
                      phase=IncidentPhase.INVESTIGATING),)
    runs = tuple(
        ObservedRun(namespace="shop", name=name, uid=name, created_at=NOW, target_kind=TargetKind.DEPLOYMENT,
                    target_name="checkout", mode=RunMode.AUTO, requires_approval=False, state=state, started_at=None)
        for name, state in (("r1", RunState.RUNNING), ("r2", RunState.SUCCEEDED), ("r3", None))
    )
    return LiveView(incidents=incidents, runs=runs)


def computer(history: object | None = None, anomalies: object | None = None) -> SnapshotComputer:
    ticks = iter(range(100))
    return SnapshotComputer(
        history=history or FakeHistory(),  # type: ignore[arg-type]
        anomalies=anomalies or FakeAnomalies(),  # type: ignore[arg-type]
        live_view=live_view,
        playbook_count=lambda: 5,
        period=PERIOD,
        internal_sources=["probe"],
        clock=lambda: NOW,
        timer=lambda: next(ticks) * 0.25,
    )


def registry_for(snapshot: MetricsSnapshot | None, counters: OperatorCounters | None = None) -> CollectorRegistry:
    holder = SnapshotHolder()
    if snapshot is not None:
        holder.publish(snapshot)
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(holder, counters or OperatorCounters()))
    return registry


async def snapshot_of(active: bool = True, **stores: object) -> MetricsSnapshot:
    return await computer(**stores).compute(active=active)  # type: ignore[arg-type]


def family_names(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}


PIPELINE_FAMILIES = {
    "flywheel_anomaly_occurrences", "flywheel_anomaly_keys", "flywheel_anomaly_dispositions",
    "flywheel_repair_success_rate", "flywheel_repair_attempts",
    "flywheel_funnel_stage", "flywheel_funnel_period_seconds", "flywheel_funnel_failures",
    "flywheel_funnel_open_waiting", "flywheel_funnel_approvals_refused", "flywheel_funnel_sources",
    "flywheel_funnel_stall",
    "flywheel_playbooks", "flywheel_execution_success_rate", "flywheel_execution_success_rate_window_seconds",
    "flywheel_execution_success_rate_executions", "flywheel_knowledge_entries",
    "flywheel_resolved_without_root_cause_ratio", "flywheel_alertname_null_rate", "flywheel_incidents_stuck",
    "flywheel_processed_today", "flywheel_node_activity",
    "flywheel_runs", "flywheel_run_duration_seconds", "flywheel_approval_wait_seconds", "flywheel_actions",
}
STATUS_FAMILIES = {
    "flywheel_active", "flywheel_snapshot_timestamp_seconds", "flywheel_metrics_computation_seconds",
    "flywheel_redis_up", "flywheel_database_up",
}
PROCESS_FAMILIES = {
    "flywheel_reconcile_errors", "flywheel_funnel_stalls", "flywheel_stall_notifications",
    "flywheel_intake_alerts_refused",
    "flywheel_metrics_computation_errors",
}


# --------------------------------------------------------------------------- exposition


async def test_every_metric_family_is_exposed_with_help_and_type() -> None:
    registry = registry_for(await snapshot_of())
    assert family_names(registry) == PIPELINE_FAMILIES | STATUS_FAMILIES | PROCESS_FAMILIES
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("flywheel_")
        # The text format names a counter by its sample (…_total) in HELP and TYPE.
        exposed = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"# HELP {exposed} " in text and f"# TYPE {exposed} {family.type}" in text
        assert family.documentation


async def test_values_come_from_the_snapshot() -> None:
    registry = registry_for(await snapshot_of())
    value = registry.get_sample_value
    assert value("flywheel_active") == 1.0
    assert value("flywheel_snapshot_timestamp_seconds") == NOW.timestamp()
    assert value("flywheel_metrics_computation_seconds") == 0.25
    assert value("flywheel_redis_up") == 1.0 and value("flywheel_database_up") == 1.0
    assert value("flywheel_funnel_stage", {"stage": "opened"}) == 4
    assert value("flywheel_funnel_stage", {"stage": "runs_started"}) == 0
    assert value("flywheel_funnel_period_seconds") == 600
    assert value("flywheel_funnel_open_waiting") == 4
    assert value("flywheel_funnel_approvals_refused", {"outcome": "invalid"}) == 2
    # The probe is an internal source: only alertmanager counts, and it only opened.
    assert value("flywheel_funnel_sources", {"kind": "reporting"}) == 1
    assert value("flywheel_funnel_sources", {"kind": "open_only"}) == 1
    assert value("flywheel_funnel_stall", {"rule": "CLAIM_STALL"}) == 1
    assert value("flywheel_funnel_stall", {"rule": "PASS_STALL"}) == 0
    assert value("flywheel_playbooks") == 5
    assert value("flywheel_execution_success_rate") == 0.75
    assert value("flywheel_execution_success_rate_window_seconds") == 86400
    assert value("flywheel_knowledge_entries") == 8
    assert value("flywheel_resolved_without_root_cause_ratio") == 0.25
    assert value("flywheel_alertname_null_rate") == 0.1
    assert value("flywheel_incidents_stuck") == 1
    assert value("flywheel_processed_today") == 7
    assert value("flywheel_node_activity", {"node": "diagnosis"}) == 2  # from Redis
    assert value("flywheel_node_activity", {"node": "learning"}) == 2
    assert value("flywheel_runs", {"state": "Pending"}) == 1
    assert value("flywheel_runs", {"state": "TimedOut"}) == 0
    assert value("flywheel_anomaly_occurrences",
                 {"tenant": "shop", "anomaly_key": f"{0:016x}", "alertname": "KubePodOOMKilled",
                  "service": "checkout", "window": "24h"}) == 50
    assert value("flywheel_anomaly_keys", {"level": "PERMANENT_FIX"}) == 1
    assert value("flywheel_anomaly_dispositions", {"disposition": "auto_repair"}) == 3
    assert value("flywheel_repair_success_rate", {"action": "RolloutRestart"}) == 0.8
    assert value("flywheel_repair_attempts", {"action": "Scale"}) == 0
    assert value("flywheel_actions_total", {"type": "RolloutRestart", "mode": "Auto", "result": "succeeded"}) == 40
    assert value("flywheel_actions_total", {"type": "Scale", "mode": "Shadow", "result": "failed"}) == 2
    assert value("flywheel_actions_total", {"type": "RolloutUndo", "mode": "Auto", "result": "failed"}) == 0
    assert value("flywheel_run_duration_seconds_bucket", {"state": "Succeeded", "le": "15.0"}) == 2
    assert value("flywheel_run_duration_seconds_bucket", {"state": "Succeeded", "le": "+Inf"}) == 4
    assert value("flywheel_run_duration_seconds_sum", {"state": "Succeeded"}) == 95.5
    assert value("flywheel_run_duration_seconds_count", {"state": "Succeeded"}) == 4
    assert value("flywheel_approval_wait_seconds_count", {"phase": "Approved"}) == 1


async def test_nan_stays_nan() -> None:
    few = history_figures(last_day=ExecutionTally(2, 1), last_week=ExecutionTally(9, 1))
    registry = registry_for(await snapshot_of(history=FakeHistory(few)))
    assert math.isnan(registry.get_sample_value("flywheel_execution_success_rate") or 0.0)
    assert math.isnan(registry.get_sample_value("flywheel_execution_success_rate_window_seconds") or 0.0)
    assert registry.get_sample_value("flywheel_execution_success_rate_executions") == 9
    assert math.isnan(registry.get_sample_value("flywheel_repair_success_rate", {"action": "Scale"}) or 0.0)
    assert "flywheel_execution_success_rate NaN" in generate_latest(registry).decode()


async def test_label_cardinality_is_bounded() -> None:
    classes = [FailureClass(f"E-CLASS-{n}", n + 1, tuple(ObjectSample("Run", "shop", f"r{n}-{m}") for m in range(5)))
               for n in range(9)]
    snapshot = await snapshot_of(history=FakeHistory(history_figures(failure_classes=classes)),
                                 anomalies=FakeAnomalies(anomaly_figures(keys=50)))
    registry = registry_for(snapshot)
    families = {family.name: family for family in registry.collect()}
    keys = {sample.labels["anomaly_key"] for sample in families["flywheel_anomaly_occurrences"].samples}
    assert len(keys) == 20
    failure_classes = [sample.labels["failure_class"] for sample in families["flywheel_funnel_failures"].samples]
    assert failure_classes == ["E-CLASS-8", "E-CLASS-7", "E-CLASS-6", "E-CLASS-5", "E-CLASS-4"]
    assert snapshot.pipeline is not None and snapshot.pipeline.funnel is not None
    assert all(len(item.examples) <= 3 for item in snapshot.pipeline.funnel.failure_classes)
    total_series = sum(len(family.samples) for family in families.values())
    assert total_series < 1000


# --------------------------------------------------------------------------- standby and outages


async def test_a_standby_publishes_status_but_no_pipeline_figures() -> None:
    snapshot = await snapshot_of(active=False)
    assert snapshot.pipeline is None
    registry = registry_for(snapshot)
    assert family_names(registry) == STATUS_FAMILIES | PROCESS_FAMILIES
    assert registry.get_sample_value("flywheel_active") == 0.0
    assert registry.get_sample_value("flywheel_redis_up") == 1.0


async def test_before_the_first_snapshot_only_process_counters_are_exposed() -> None:
    assert family_names(registry_for(None)) == PROCESS_FAMILIES


async def test_database_down_leaves_history_families_out() -> None:
    snapshot = await snapshot_of(history=FakeHistory(error=DatabaseUnavailableError("db down")))
    registry = registry_for(snapshot)
    names = family_names(registry)
    assert registry.get_sample_value("flywheel_database_up") == 0.0
    assert "flywheel_funnel_stage" not in names and "flywheel_execution_success_rate" not in names
    assert "flywheel_funnel_stall" not in names  # unknown, not "not firing"
    # Live and Redis figures remain.
    assert registry.get_sample_value("flywheel_funnel_open_waiting") == 4
    assert registry.get_sample_value("flywheel_anomaly_keys", {"level": "none"}) == 1
    assert registry.get_sample_value("flywheel_node_activity", {"node": "monitoring"}) is None
    assert registry.get_sample_value("flywheel_node_activity", {"node": "diagnosis"}) == 2


async def test_redis_down_leaves_anomaly_families_out() -> None:
    snapshot = await snapshot_of(anomalies=FakeAnomalies(down=True))
    registry = registry_for(snapshot)
    assert registry.get_sample_value("flywheel_redis_up") == 0.0
    assert "flywheel_anomaly_occurrences" not in family_names(registry)
    assert registry.get_sample_value("flywheel_funnel_stage", {"stage": "opened"}) == 4


async def test_a_query_bug_is_not_reported_as_database_down() -> None:
    snapshot = await snapshot_of(history=FakeHistory(error=KeyError("column")))
    registry = registry_for(snapshot)
    assert registry.get_sample_value("flywheel_database_up") == 1.0
    assert "flywheel_funnel_stage" not in family_names(registry)


async def test_standby_reports_unreachable_stores() -> None:
    snapshot = await snapshot_of(active=False, history=FakeHistory(error=DatabaseUnavailableError("down")),
                                 anomalies=FakeAnomalies(down=True))
    assert (snapshot.redis_up, snapshot.database_up) == (False, False)


async def test_collect_does_no_io() -> None:
    history, anomalies = FakeHistory(), FakeAnomalies()
    holder = SnapshotHolder()
    holder.publish(await computer(history=history, anomalies=anomalies).compute(active=True))
    # From now on any store access fails loudly; scrapes must not notice.
    history.error = AssertionError("a scrape queried the database")
    anomalies.down = True
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(holder, OperatorCounters()))
    for _ in range(3):
        assert b"flywheel_funnel_stage" in generate_latest(registry)
    assert registry.get_sample_value("flywheel_redis_up") == 1.0


# --------------------------------------------------------------------------- process counters


def test_reconcile_errors_are_counted_from_kopf_object_records() -> None:
    counters = OperatorCounters()
    logger = logging.getLogger("kopf.objects.test-collector")
    logger.propagate = False
    handler = ReconcileErrorCounter(counters)
    logger.addHandler(handler)
    try:
        ref = {"apiVersion": "flywheel.dev/v1alpha1", "kind": "Incident", "name": "a", "namespace": "shop"}
        logger.error("Handler 'x' failed temporarily: boom", extra={"k8s_ref": ref})
        logger.error("Handler 'y' failed permanently", extra={"k8s_ref": {**ref, "kind": "Run"}})
        logger.error("odd kind", extra={"k8s_ref": {**ref, "kind": "ConfigMap"}})
        logger.warning("not an error", extra={"k8s_ref": ref})
        logger.error("no object attached")
    finally:
        logger.removeHandler(handler)
    registry = registry_for(None, counters)
    assert registry.get_sample_value("flywheel_reconcile_errors_total", {"resource": "Incident"}) == 1
    assert registry.get_sample_value("flywheel_reconcile_errors_total", {"resource": "Run"}) == 1
    assert registry.get_sample_value("flywheel_reconcile_errors_total", {"resource": "Approval"}) == 0
    assert registry.get_sample_value("flywheel_reconcile_errors_total", {"resource": "other"}) == 1


async def test_stall_transitions_are_counted_once_per_episode() -> None:
    counters = OperatorCounters()
    holder = SnapshotHolder()

    async def always_active() -> bool:
        return True

    history = FakeHistory()
    runtime = MetricsRuntime(computer=computer(history=history), holder=holder, counters=counters,
                             is_active=always_active, interval_seconds=30)
    await runtime.run_once()
    await runtime.run_once()  # still firing: the same episode
    history.figures = history_figures(opened=0)  # CLAIM_STALL stops
    await runtime.run_once()
    history.figures = history_figures()  # and starts again
    await runtime.run_once()
    registry = registry_for(holder.latest, counters)
    assert registry.get_sample_value("flywheel_funnel_stalls_total", {"rule": StallRule.CLAIM_STALL.value}) == 2
    assert registry.get_sample_value("flywheel_funnel_stalls_total", {"rule": StallRule.PASS_STALL.value}) == 0


def test_notification_outcomes_are_counted_and_bounded() -> None:
    counters = OperatorCounters()
    counters.notification(StallRule.PASS_STALL, "webhook", "sent")
    counters.notification(StallRule.PASS_STALL, "event", "suppressed")
    registry = registry_for(None, counters)
    assert registry.get_sample_value(
        "flywheel_stall_notifications_total", {"rule": "PASS_STALL", "channel": "webhook", "outcome": "sent"}) == 1
    with pytest.raises(ValueError):
        counters.notification(StallRule.PASS_STALL, "pager", "sent")
