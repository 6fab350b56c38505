"""The Prometheus collector: metric families built from the latest snapshot, with no I/O.

``collect()`` runs on every scrape and only reads the immutable snapshot published by the
metrics timer plus a few in-process counters; it never touches Redis, the database or the
Kubernetes API. Label values are bounded: anomaly keys are the top 20, failure classes the top
5, everything else comes from closed vocabularies (states, phases, actions, rules, nodes).

Always present (every replica): ``flywheel_active``, ``flywheel_snapshot_timestamp_seconds``,
``flywheel_redis_up``, ``flywheel_database_up``, ``flywheel_metrics_computation_seconds`` and
the process counters. Pipeline families are present only on the active Kopf peer, and each
only while its store answers: absent means "unknown", never zero.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from flywheel.api.enums import ActionType, RunMode
from flywheel.domain.alerts import RefusalReason
from flywheel.domain.funnel import StallRule
from flywheel.domain.health import NODE_ACTIVITY_WINDOW, SUCCESS_RATE_FALLBACK_WINDOW
from flywheel.metrics.snapshot import MetricsSnapshot, PipelineSnapshot, SnapshotHolder
from flywheel.stores.metrics_queries import DurationHistogram

FUNNEL_STAGES: Final = (
    "opened",
    "runs_started",
    "executed",
    "verification_passed",
    "verification_failed",
    "resolved",
)
NOTIFICATION_CHANNELS: Final = ("event", "webhook")
NOTIFICATION_OUTCOMES: Final = ("sent", "failed", "suppressed")
# Kinds whose reconcile errors are counted by name; others (should Flywheel ever watch more)
# are counted together so the label stays bounded.
RECONCILED_KINDS: Final = ("Incident", "Run", "Approval")
OTHER_KIND: Final = "other"

ACTIONS: Final = tuple(action.value for action in ActionType)
MODES: Final = tuple(mode.value for mode in RunMode)


class OperatorCounters:
    """Counters kept in this process (reset on restart, as Prometheus expects of counters).

    Thread-safe: the logging handler that feeds reconcile errors may run in any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reconcile_errors: Counter[str] = Counter()
        self._stalls_started: Counter[str] = Counter()
        self._notifications: Counter[tuple[str, str, str]] = Counter()
        self._alerts_refused: Counter[RefusalReason] = Counter()
        self._computation_errors = 0

    def reconcile_error(self, kind: str | None) -> None:
        label = kind if kind in RECONCILED_KINDS else OTHER_KIND
        with self._lock:
            self._reconcile_errors[label] += 1

    def stall_started(self, rule: StallRule) -> None:
        with self._lock:
            self._stalls_started[rule.value] += 1

    def notification(self, rule: StallRule, channel: str, outcome: str) -> None:
        if channel not in NOTIFICATION_CHANNELS or outcome not in NOTIFICATION_OUTCOMES:
            raise ValueError(f"unknown notification channel/outcome {channel!r}/{outcome!r}")
        with self._lock:
            self._notifications[(rule.value, channel, outcome)] += 1

    def computation_error(self) -> None:
        with self._lock:
            self._computation_errors += 1

    def alert_refused(self, reason: RefusalReason) -> None:
        with self._lock:
            self._alerts_refused[RefusalReason(reason)] += 1

    def families(self) -> Iterator[Metric]:
        with self._lock:
            reconcile_errors = dict(self._reconcile_errors)
            stalls_started = dict(self._stalls_started)
            notifications = dict(self._notifications)
            computation_errors = self._computation_errors
            alerts_refused = dict(self._alerts_refused)
        errors = CounterMetricFamily(
            "flywheel_reconcile_errors",
            "Handler failures Kopf reported for Flywheel's resources (errors, temporary and permanent), by kind.",
            labels=["resource"],
        )
        for kind in (*RECONCILED_KINDS, OTHER_KIND):
            errors.add_metric([kind], reconcile_errors.get(kind, 0))
        yield errors
        stalls = CounterMetricFamily(
            "flywheel_funnel_stalls",
            "Times a funnel stall rule started firing (a transition from not firing to firing).",
            labels=["rule"],
        )
        for rule in StallRule:
            stalls.add_metric([rule.value], stalls_started.get(rule.value, 0))
        yield stalls
        sent = CounterMetricFamily(
            "flywheel_stall_notifications",
            "Stall notifications by channel (event, webhook) and outcome (sent, failed, or suppressed "
            "because the rule already notified within 10 minutes).",
            labels=["rule", "channel", "outcome"],
        )
        for rule in StallRule:
            for channel in NOTIFICATION_CHANNELS:
                for outcome in NOTIFICATION_OUTCOMES:
                    sent.add_metric([rule.value, channel, outcome], notifications.get((rule.value, channel, outcome), 0))
        yield sent
        refused = CounterMetricFamily(
            "flywheel_intake_alerts_refused",
            "Alertmanager alerts the intake refused (no Incident), by reason; the intake's log names "
            "the alert and the reason once per fingerprint.",
            labels=["reason"],
        )
        for reason in RefusalReason:
            refused.add_metric([reason.value], alerts_refused.get(reason, 0))
        yield refused
        yield CounterMetricFamily(
            "flywheel_metrics_computation_errors",
            "Metrics snapshots that could not be computed at all (the previous snapshot stays published).",
            value=computation_errors,
        )


class ReconcileErrorCounter(logging.Handler):
    """Counts the handler failures Kopf logs for each object (ERROR records on ``kopf.objects``).

    Kopf reports every failed handler run there — exceptions, TemporaryError and
    PermanentError alike — with the object's reference attached; counting those records
    measures reconcile errors without touching any handler.
    """

    def __init__(self, counters: OperatorCounters) -> None:
        super().__init__(level=logging.ERROR)
        self._counters = counters

    def emit(self, record: logging.LogRecord) -> None:
        reference = getattr(record, "k8s_ref", None)
        if not isinstance(reference, dict):
            return
        self._counters.reconcile_error(reference.get("kind"))


class SnapshotCollector(Collector):
    """Yields Flywheel's metric families from the latest published snapshot."""

    def __init__(self, holder: SnapshotHolder, counters: OperatorCounters) -> None:
        self._holder = holder
        self._counters = counters

    def collect(self) -> Iterable[Metric]:
        yield from self._counters.families()
        snapshot = self._holder.latest
        if snapshot is None:
            return
        yield from _status_families(snapshot)
        if snapshot.active and snapshot.pipeline is not None:
            yield from _pipeline_families(snapshot, snapshot.pipeline)


def build_registry(holder: SnapshotHolder, counters: OperatorCounters) -> CollectorRegistry:
    """The operator's own registry (never the global one): Flywheel's families plus the
    standard process, platform and garbage-collector families of client_python."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SnapshotCollector(holder, counters))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _status_families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    yield _gauge(
        "flywheel_active",
        "1 on the active Kopf peer, which publishes pipeline figures; 0 on a standby replica.",
        1.0 if snapshot.active else 0.0,
    )
    yield _gauge(
        "flywheel_snapshot_timestamp_seconds",
        "Unix time the published metrics snapshot was computed; its age is time() minus this.",
        snapshot.computed_at.timestamp(),
    )
    yield _gauge(
        "flywheel_metrics_computation_seconds",
        "Time taken to compute the published metrics snapshot.",
        snapshot.computation_seconds,
    )
    yield _gauge("flywheel_redis_up", "1 when Redis answered the last snapshot's reads, else 0.", _flag(snapshot.redis_up))
    yield _gauge(
        "flywheel_database_up",
        "1 when the history database answered the last snapshot's queries, else 0.",
        _flag(snapshot.database_up),
    )


def _flag(value: bool) -> float:
    return 1.0 if value else 0.0


def _pipeline_families(snapshot: MetricsSnapshot, pipeline: PipelineSnapshot) -> Iterator[Metric]:
    yield from _current_families(pipeline)
    if pipeline.anomalies is not None:
        yield from _anomaly_families(pipeline)
    if pipeline.history is not None and pipeline.funnel is not None and pipeline.health is not None:
        yield from _history_families(snapshot, pipeline)
    activity = GaugeMetricFamily(
        "flywheel_node_activity",
        f"Activity of each flywheel node over the last {int(NODE_ACTIVITY_WINDOW.total_seconds())} s: "
        "monitoring=Incidents received, deduplication=Duplicates, diagnosis=anomaly occurrences recorded, "
        "reasoning=Incidents decided, execution=Runs that started executing, learning=knowledge entries.",
        labels=["node"],
    )
    for node in pipeline.nodes:
        if node.count is not None:
            activity.add_metric([node.node.value], node.count)
    yield activity


def _current_families(pipeline: PipelineSnapshot) -> Iterator[Metric]:
    current = pipeline.current
    runs = GaugeMetricFamily("flywheel_runs", "Runs the operator currently watches, by state.", labels=["state"])
    for state, count in current.runs_by_state.items():
        runs.add_metric([state.value], count)
    yield runs
    yield _gauge(
        "flywheel_funnel_open_waiting",
        "Active Incidents (not duplicates) that currently have no Run.",
        current.open_waiting,
    )
    yield _gauge("flywheel_incidents_stuck", "Active Incidents (Investigating, Mitigating, NotRemediated) without progress for more than 24 hours.", current.incidents_stuck)
    yield _gauge(
        "flywheel_playbooks",
        "Enabled rules of the catalogue (each is a playbook Flywheel can run): the flywheel's playbook_count.",
        pipeline.playbook_count,
    )


def _anomaly_families(pipeline: PipelineSnapshot) -> Iterator[Metric]:
    anomalies = pipeline.anomalies
    assert anomalies is not None
    occurrences = GaugeMetricFamily(
        "flywheel_anomaly_occurrences",
        "Occurrences of the 20 most frequent anomaly keys (by 24 h count) per sliding window.",
        labels=["tenant", "anomaly_key", "alertname", "service", "window"],
    )
    for series in anomalies.top:
        for window, count in series.counts.items():
            occurrences.add_metric([series.tenant, series.key, series.alert_name, series.service, window], count)
    yield occurrences
    levels = GaugeMetricFamily(
        "flywheel_anomaly_keys",
        "Tracked anomaly keys by escalation level of their 24 h count (none below REPEAT).",
        labels=["level"],
    )
    for level, count in anomalies.keys_by_level.items():
        levels.add_metric([level], count)
    yield levels
    dispositions = GaugeMetricFamily(
        "flywheel_anomaly_dispositions",
        "How occurrences were dealt with, summed over all tracked anomaly keys (keys expire after 35 days).",
        labels=["disposition"],
    )
    for disposition, count in anomalies.dispositions.items():
        dispositions.add_metric([disposition], count)
    yield dispositions


def _history_families(snapshot: MetricsSnapshot, pipeline: PipelineSnapshot) -> Iterator[Metric]:
    history, funnel, health = pipeline.history, pipeline.funnel, pipeline.health
    assert history is not None and funnel is not None and health is not None
    period = snapshot.funnel_period.total_seconds()

    yield _gauge("flywheel_funnel_period_seconds", "Length of the funnel period the funnel gauges count over.", period)
    stages = GaugeMetricFamily(
        "flywheel_funnel_stage",
        "Funnel stages over the funnel period: Incidents opened, Runs started, actions executed, "
        "verifications passed/failed, Incidents resolved (Shadow Runs excluded after opened).",
        labels=["stage"],
    )
    for stage in FUNNEL_STAGES:
        stages.add_metric([stage], getattr(funnel, stage))
    yield stages
    failures = GaugeMetricFamily(
        "flywheel_funnel_failures",
        "Runs that failed after starting, over the funnel period, for the 5 most frequent failure classes.",
        labels=["failure_class"],
    )
    for item in funnel.failure_classes:
        failures.add_metric([item.code], item.count)
    yield failures
    approvals = GaugeMetricFamily(
        "flywheel_funnel_approvals_refused",
        "Approvals rejected by a person or found invalid, over the funnel period.",
        labels=["outcome"],
    )
    approvals.add_metric(["rejected"], funnel.approvals_rejected)
    approvals.add_metric(["invalid"], funnel.approvals_invalid)
    yield approvals
    sources = GaugeMetricFamily(
        "flywheel_funnel_sources",
        "Incident sources over the funnel period (internal probes excluded): reporting, progressing "
        "(some Incident got a Run), open_only (none did).",
        labels=["kind"],
    )
    sources.add_metric(["reporting"], funnel.sources.reporting)
    sources.add_metric(["progressing"], funnel.sources.progressing)
    sources.add_metric(["open_only"], funnel.sources.open_only)
    yield sources
    firing = {alert.rule for alert in pipeline.stalls}
    stall = GaugeMetricFamily(
        "flywheel_funnel_stall",
        "1 while a funnel stall rule fires (CLAIM_STALL, COLD_STANDBY, SUBMIT_STALL, PASS_STALL, RESOLVE_STALL).",
        labels=["rule"],
    )
    for rule in StallRule:
        stall.add_metric([rule.value], 1.0 if rule in firing else 0.0)
    yield stall

    rate = health.success_rate
    yield _gauge(
        "flywheel_execution_success_rate",
        "Share of remediation executions that succeeded over 24 h, over 7 days below 10 executions; "
        "NaN when even 7 days hold fewer than 10.",
        rate.value,
    )
    yield _gauge(
        "flywheel_execution_success_rate_window_seconds",
        "Window the execution success rate was measured over (86400 or 604800); NaN when not enough executions.",
        rate.window.total_seconds() if rate.window is not None else math.nan,
    )
    yield _gauge(
        "flywheel_execution_success_rate_executions",
        "Executions the success rate is based on (over the fallback window when the rate is NaN).",
        rate.executions,
    )
    yield _gauge("flywheel_knowledge_entries", "Knowledge entries written for resolved Incidents.", health.knowledge_entries)
    yield _gauge(
        "flywheel_resolved_without_root_cause_ratio",
        "Share of knowledge entries whose Incident was resolved without a recorded root cause; NaN without entries.",
        health.resolved_without_root_cause_share,
    )
    yield _gauge(
        "flywheel_alertname_null_rate",
        "Share of the last 24 h's Incidents without an alertName; NaN without Incidents.",
        health.alertname_null_rate,
    )
    yield _gauge("flywheel_processed_today", "Incidents received since 00:00 UTC.", health.processed_today)

    window_days = int(SUCCESS_RATE_FALLBACK_WINDOW.total_seconds() // 86400)
    success = GaugeMetricFamily(
        "flywheel_repair_success_rate",
        f"Share of successful executions per action over {window_days} days (Shadow excluded); NaN when never executed.",
        labels=["action"],
    )
    attempts = GaugeMetricFamily(
        "flywheel_repair_attempts",
        f"Executions per action over {window_days} days (Shadow excluded).",
        labels=["action"],
    )
    for action in ACTIONS:
        tally = history.repair_by_action.get(action)
        executions = tally.executions if tally is not None else 0
        successes = tally.successes if tally is not None else 0
        success.add_metric([action], successes / executions if executions else math.nan)
        attempts.add_metric([action], executions)
    yield success
    yield attempts

    actions = CounterMetricFamily(
        "flywheel_actions",
        "Remediation action executions recorded in the history, by type, mode (Auto, Shadow) and result.",
        labels=["type", "mode", "result"],
    )
    totals = {(item.action, item.mode, item.succeeded): item.count for item in history.actions}
    known = {(action, mode) for action in ACTIONS for mode in MODES}
    extra = {(action, mode) for action, mode, _ in totals} - known
    for action, mode in sorted(known | extra):
        for succeeded, result in ((True, "succeeded"), (False, "failed")):
            actions.add_metric([action, mode, result], totals.get((action, mode, succeeded), 0))
    yield actions

    yield _histogram(
        "flywheel_run_duration_seconds",
        "Time from a Run's start to its final state, over the whole history, by final state.",
        "state",
        history.run_duration,
    )
    yield _histogram(
        "flywheel_approval_wait_seconds",
        "Time an Approval waited for a person (until decided, or until it expired), over the whole history, by phase.",
        "phase",
        history.approval_wait,
    )


def _histogram(name: str, documentation: str, label: str, histogram: DurationHistogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, series in sorted(histogram.series.items()):
        buckets = [(_bound(bound), float(count)) for bound, count in zip(histogram.buckets, series.cumulative, strict=True)]
        buckets.append(("+Inf", float(series.count)))
        family.add_metric([value], buckets, sum_value=series.total_seconds)
    return family


def _bound(value: float) -> str:
    # The form client_python's own histograms use ("5.0"), so both kinds of series compare alike.
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


__all__ = ["OperatorCounters", "ReconcileErrorCounter", "SnapshotCollector", "build_registry"]
