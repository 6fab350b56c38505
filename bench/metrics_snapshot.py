"""Benchmark: the metrics snapshot's history figures, aggregated by the database vs. row by row in Python.

Usage::

    python bench/metrics_snapshot.py [--database-url URL] [--rows N] [--repeat R] [--suggested-indexes]

Seeds ``--rows`` (default 1,000,000) history rows — Incidents, Runs, Approvals, repair
executions and knowledge entries over 30 days — into an SQLite file in a temporary directory,
or into the (empty) database at ``--database-url`` (e.g. PostgreSQL), creating the schema with
the history migrations. Then, in the same run and on the same data:

- ``snapshot``: ``HistoryMetricsQueries.read`` — period bounds in WHERE, GROUP BY and
  COUNT(*) FILTER in the database, a few dozen rows over the wire;
- ``row-by-row``: the same figures computed in Python from every row of every table, the way
  a naive exporter would (SELECT the columns, loop, count).

Both must produce the same figures (checked), and the script prints the median time of each
and their ratio. With ``--suggested-indexes`` it then creates the indexes the metrics would
like the history tables to have and measures again, so their effect is visible too.
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, insert, inspect, select, text

from flywheel.domain.funnel import FailureClass, ObjectSample, SourceActivity, normalize_failure_class
from flywheel.domain.health import ExecutionTally, FlywheelNode, HistoryHealthCounts, start_of_day
from flywheel.logs import configure_logging
from flywheel.stores.history import create_history_engine, upgrade
from flywheel.stores.history.tables import (
    ApprovalRow,
    IncidentRow,
    KnowledgeEntryRow,
    RepairExecutionRow,
    RunRow,
)
from flywheel.stores.metrics_queries import (
    APPROVAL_WAIT_BUCKETS,
    RUN_DURATION_BUCKETS,
    ActionOutcomeCount,
    DurationHistogram,
    FunnelHistory,
    HistogramSeries,
    HistoryFigures,
    HistoryMetricsQueries,
)

INCIDENTS = IncidentRow.__table__
RUNS = RunRow.__table__
APPROVALS = ApprovalRow.__table__
EXECUTIONS = RepairExecutionRow.__table__
KNOWLEDGE = KnowledgeEntryRow.__table__

# Shares of the seeded rows per table.
SHARES = {"incidents": 0.30, "runs": 0.25, "approvals": 0.05, "repair_executions": 0.25, "knowledge_entries": 0.15}
HISTORY_SPAN = timedelta(days=30)
PERIOD = timedelta(minutes=10)
BATCH = 10_000
SOURCES = ("alertmanager", "alertmanager", "alertmanager", "jane", "omar", "synthetic-probe", "grafana")
PHASES = ("Investigating", "Mitigating", "Resolved", "Resolved", "Resolved", "Closed", "Duplicate")
ACTIONS = ("RolloutRestart", "RolloutRestart", "Scale", "RolloutUndo")
RUN_STATES = ("Succeeded", "Succeeded", "Succeeded", "Failed", "TimedOut", "Cancelled", "Pending", "Running")
ERROR_CODES = ("E-VERIFY-TIMEOUT", "E-ROLLOUT-FAILED", "E-ACTION-FORBIDDEN", "E-TARGET-NOT-FOUND", None)
APPROVAL_PHASES = ("Approved", "Approved", "Rejected", "Invalid", "Expired", "Pending")

# What the metrics would like indexed (see the report to the history tables' owner).
SUGGESTED_INDEXES = (
    ("ix_runs_started_at_mode", "runs", "started_at, mode"),
    ("ix_runs_completed_at_state_mode", "runs", "completed_at, state, mode"),
    ("ix_incidents_resolved_at", "incidents", "resolved_at"),
    ("ix_repair_executions_finished_at_shadow_action_succeeded", "repair_executions",
     "finished_at, shadow, action, succeeded"),
    ("ix_approvals_phase_decided_at", "approvals", "phase, decided_at"),
)


# --------------------------------------------------------------------------- seeding


def _moment(rng: random.Random, now: datetime) -> datetime:
    return now - timedelta(seconds=rng.random() * HISTORY_SPAN.total_seconds())


def incident_rows(rng: random.Random, now: datetime, count: int) -> Iterator[dict[str, Any]]:
    for number in range(count):
        created = _moment(rng, now)
        phase = rng.choice(PHASES)
        resolved = phase in ("Resolved", "Closed")
        yield {
            "uid": str(uuid.UUID(int=rng.getrandbits(128))), "namespace": f"team-{number % 12}",
            "name": f"incident-{number}", "created_at": created,
            "alert_name": None if rng.random() < 0.05 else f"Alert{number % 40}", "service": f"svc-{number % 25}",
            "error_type": "OOMKilled", "severity": "P2", "source": rng.choice(SOURCES), "summary": None,
            "target_kind": "Deployment", "target_name": f"svc-{number % 25}", "remediation_mode": "Auto",
            "phase": phase, "anomaly_key": f"{number % 5000:016x}", "escalation_level": None,
            "decision_id": f"DEC-{number:012x}" if phase != "Duplicate" else None, "decision_source": "rules",
            "decision_action": "RolloutRestart", "run_name": f"incident-{number}-1" if phase != "Investigating" else None,
            "run_uid": str(uuid.UUID(int=rng.getrandbits(128))) if phase not in ("Investigating", "Duplicate") else None,
            "duplicate_of": "incident-0" if phase == "Duplicate" else None,
            "disposition": "auto_repair" if resolved else None,
            "resolved_at": created + timedelta(minutes=rng.randint(1, 120)) if resolved else None,
            "resource_version": "1", "projected_at": created,
        }


def run_rows(rng: random.Random, now: datetime, count: int) -> Iterator[dict[str, Any]]:
    for number in range(count):
        created = _moment(rng, now)
        state = rng.choice(RUN_STATES)
        started = created + timedelta(seconds=rng.randint(1, 300)) if state not in ("Pending", "Cancelled") else None
        finished = state in ("Succeeded", "Failed", "TimedOut", "Cancelled")
        completed = (started or created) + timedelta(seconds=rng.randint(5, 1800)) if finished else None
        yield {
            "uid": str(uuid.UUID(int=rng.getrandbits(128))), "namespace": f"team-{number % 12}",
            "name": f"run-{number}", "created_at": created, "incident_name": f"incident-{number}",
            "incident_uid": str(uuid.UUID(int=rng.getrandbits(128))), "action_type": rng.choice(ACTIONS),
            "target_kind": "Deployment", "target_name": f"svc-{number % 25}", "action_params": {},
            "risk_level": "medium", "requires_approval": False, "mode": "Shadow" if number % 20 == 0 else "Auto",
            "trace_id": f"{number:032x}", "trigger_type": "Incident", "trigger_ref": None, "state": state,
            "attempt": 1, "started_at": started, "completed_at": completed,
            "error_code": rng.choice(ERROR_CODES) if state in ("Failed", "TimedOut") else None, "error_detail": None,
            "approval_name": None, "approval_uid": None, "resource_version": "1", "projected_at": created,
        }


def approval_rows(rng: random.Random, now: datetime, count: int) -> Iterator[dict[str, Any]]:
    for number in range(count):
        created = _moment(rng, now)
        phase = rng.choice(APPROVAL_PHASES)
        decided = created + timedelta(seconds=rng.randint(10, 3000)) if phase in ("Approved", "Rejected") else None
        yield {
            "uid": str(uuid.UUID(int=rng.getrandbits(128))), "namespace": f"team-{number % 12}",
            "name": f"approval-{number}", "created_at": created, "run_name": f"run-{number}",
            "run_uid": str(uuid.UUID(int=rng.getrandbits(128))), "action_type": "RolloutUndo",
            "target_kind": "Deployment", "target_name": "svc", "risk_level": "critical", "escalation_level": None,
            "reasoning": None, "expires_at": created + timedelta(hours=1), "decision": None, "reason": None,
            "phase": phase, "decided_by": "jane" if decided else None, "decided_at": decided, "message": None,
            "resource_version": "1", "projected_at": created,
        }


def execution_rows(rng: random.Random, now: datetime, count: int) -> Iterator[dict[str, Any]]:
    for number in range(count):
        finished = _moment(rng, now)
        succeeded = rng.random() < 0.7
        yield {
            "run_uid": str(uuid.UUID(int=rng.getrandbits(128))), "attempt": 1, "namespace": f"team-{number % 12}",
            "incident_uid": str(uuid.UUID(int=rng.getrandbits(128))), "anomaly_key": f"{number % 5000:016x}",
            "action": rng.choice(ACTIONS), "target_kind": "Deployment", "target_name": "svc",
            "shadow": number % 20 == 0, "succeeded": succeeded, "error_code": None if succeeded else "E-VERIFY-TIMEOUT",
            "started_at": finished - timedelta(seconds=30), "finished_at": finished, "latency_ms": 30000,
            "recorded_at": finished,
        }


def knowledge_rows(rng: random.Random, now: datetime, count: int) -> Iterator[dict[str, Any]]:
    for number in range(count):
        resolved = _moment(rng, now)
        yield {
            "incident_uid": str(uuid.UUID(int=rng.getrandbits(128))), "namespace": f"team-{number % 12}",
            "incident_name": f"incident-{number}", "anomaly_key": f"{number % 5000:016x}",
            "action": "RolloutRestart", "outcome": "Succeeded", "disposition": "auto_repair",
            "root_cause": None if rng.random() < 0.4 else "memory limit too low", "note": None,
            "resolved_at": resolved, "recorded_at": resolved,
        }


GENERATORS: dict[str, tuple[Any, Callable[[random.Random, datetime, int], Iterator[dict[str, Any]]]]] = {
    "incidents": (INCIDENTS, incident_rows),
    "runs": (RUNS, run_rows),
    "approvals": (APPROVALS, approval_rows),
    "repair_executions": (EXECUTIONS, execution_rows),
    "knowledge_entries": (KNOWLEDGE, knowledge_rows),
}


def seed(engine: Engine, total: int, now: datetime) -> dict[str, int]:
    rng = random.Random(42)
    counts = {name: int(total * share) for name, share in SHARES.items()}
    counts["incidents"] += total - sum(counts.values())
    for name, count in counts.items():
        table, generate = GENERATORS[name]
        batch: list[dict[str, Any]] = []
        with engine.begin() as connection:
            for row in generate(rng, now, count):
                batch.append(row)
                if len(batch) == BATCH:
                    connection.execute(insert(table), batch)
                    batch = []
            if batch:
                connection.execute(insert(table), batch)
        print(f"  seeded {count:>9,} {name}", flush=True)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("ANALYZE"))
        else:
            connection.execute(text("ANALYZE"))
    return counts


# --------------------------------------------------------------------------- row by row


def _seconds(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


def _histogram(durations: dict[str, list[float]], buckets: tuple[float, ...]) -> DurationHistogram:
    return DurationHistogram(buckets, {
        label: HistogramSeries(
            cumulative=tuple(sum(1 for value in values if value <= bound) for bound in buckets),
            total_seconds=max(sum(values), 0.0),
            count=len(values),
        )
        for label, values in durations.items()
    })


def row_by_row(engine: Engine, now: datetime, period: timedelta) -> HistoryFigures:
    """The same figures as HistoryMetricsQueries.read, from every row, counted in Python."""
    since, hour_ago, day_ago, week_ago = now - period, now - timedelta(hours=1), now - timedelta(hours=24), now - timedelta(days=7)
    today = start_of_day(now)
    with engine.connect() as connection:
        incidents = connection.execute(select(INCIDENTS.c.created_at, INCIDENTS.c.phase, INCIDENTS.c.decision_id,
                                              INCIDENTS.c.alert_name, INCIDENTS.c.source, INCIDENTS.c.run_uid,
                                              INCIDENTS.c.resolved_at)).all()
        runs = connection.execute(select(RUNS.c.namespace, RUNS.c.name, RUNS.c.uid, RUNS.c.created_at, RUNS.c.mode,
                                         RUNS.c.state, RUNS.c.started_at, RUNS.c.completed_at,
                                         RUNS.c.error_code)).all()
        approvals = connection.execute(select(APPROVALS.c.phase, APPROVALS.c.created_at, APPROVALS.c.decided_at,
                                              APPROVALS.c.expires_at)).all()
        executions = connection.execute(select(EXECUTIONS.c.action, EXECUTIONS.c.shadow, EXECUTIONS.c.succeeded,
                                               EXECUTIONS.c.finished_at)).all()
        knowledge = connection.execute(select(KNOWLEDGE.c.root_cause, KNOWLEDGE.c.resolved_at)).all()

    opened = received = duplicates = decided = processed = last_day = no_alertname = resolved = 0
    sources: dict[str | None, list[int]] = defaultdict(lambda: [0, 0])
    for created, phase, decision_id, alert_name, source, run_uid, resolved_at in incidents:
        if created >= since:
            opened += 1
            sources[source][0] += 1
            sources[source][1] += int(run_uid is not None or phase == "Duplicate")
        if created >= hour_ago:
            received += 1
            duplicates += int(phase == "Duplicate")
            decided += int(decision_id is not None)
        processed += int(created >= today)
        if created >= day_ago:
            last_day += 1
            no_alertname += int(alert_name is None or not alert_name.strip())
        resolved += int(resolved_at is not None and resolved_at >= since)

    runs_started = executed = executed_hour = passed = failed = 0
    failures: dict[str, list[Any]] = defaultdict(list)
    durations: dict[str, list[float]] = defaultdict(list)
    for namespace, name, uid, created, mode, state, started, completed, error_code in runs:
        auto = mode == "Auto"
        runs_started += int(auto and created >= since)
        executed += int(auto and started is not None and started >= since)
        executed_hour += int(auto and started is not None and started >= hour_ago)
        if auto and completed is not None and completed >= since:
            if state == "Succeeded":
                passed += 1
            elif state in ("Failed", "TimedOut") and started is not None:
                failed += 1
                failures[normalize_failure_class(error_code)].append((completed, name, namespace, uid))
        if completed is not None and started is not None and state in ("Succeeded", "Failed", "Cancelled", "TimedOut"):
            durations[state].append(_seconds(started, completed))
    failure_classes = tuple(
        FailureClass(code, len(items), tuple(
            ObjectSample("Run", namespace, name, uid)
            for _, name, namespace, uid in sorted(items, key=lambda item: (-item[0].timestamp(), item[1]))[:3]
        ))
        for code, items in failures.items()
    )

    rejected = invalid = 0
    waits: dict[str, list[float]] = defaultdict(list)
    for phase, created, decided_at, expires_at in approvals:
        happened = decided_at or created
        rejected += int(phase == "Rejected" and happened >= since)
        invalid += int(phase == "Invalid" and happened >= since)
        if phase in ("Approved", "Rejected") and decided_at is not None:
            waits[phase].append(_seconds(created, decided_at))
        elif phase == "Expired":
            waits[phase].append(_seconds(created, decided_at or expires_at))

    per_action: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    outcomes: Counter[tuple[str, str, bool]] = Counter()
    for action, shadow, succeeded, finished in executions:
        outcomes[(action, "Shadow" if shadow else "Auto", bool(succeeded))] += 1
        if not shadow and finished >= week_ago:
            tally = per_action[action]
            tally[0] += 1
            tally[1] += int(succeeded)
            tally[2] += int(finished >= day_ago)
            tally[3] += int(finished >= day_ago and succeeded)

    without_root_cause = sum(1 for root_cause, _ in knowledge if root_cause is None or not root_cause.strip())
    learned = sum(1 for _, resolved_at in knowledge if resolved_at >= hour_ago)

    return HistoryFigures(
        funnel=FunnelHistory(
            opened=opened, runs_started=runs_started, executed=executed, verification_passed=passed,
            verification_failed=failed, resolved=resolved, failure_classes=failure_classes,
            approvals_rejected=rejected, approvals_invalid=invalid,
            sources=tuple(SourceActivity(source, counts[0], counts[1]) for source, counts in sources.items()),
        ),
        health=HistoryHealthCounts(
            last_day=ExecutionTally(sum(t[2] for t in per_action.values()), sum(t[3] for t in per_action.values())),
            last_week=ExecutionTally(sum(t[0] for t in per_action.values()), sum(t[1] for t in per_action.values())),
            knowledge_entries=len(knowledge), knowledge_without_root_cause=without_root_cause,
            incidents_last_day=last_day, incidents_without_alertname=no_alertname, processed_today=processed,
        ),
        node_activity={FlywheelNode.MONITORING: received, FlywheelNode.DEDUPLICATION: duplicates,
                       FlywheelNode.REASONING: decided, FlywheelNode.EXECUTION: executed_hour,
                       FlywheelNode.LEARNING: learned},
        repair_by_action={action: ExecutionTally(t[0], t[1]) for action, t in per_action.items()},
        actions=tuple(ActionOutcomeCount(action, mode, succeeded, count)
                      for (action, mode, succeeded), count in outcomes.items()),
        run_duration=_histogram(durations, RUN_DURATION_BUCKETS),
        approval_wait=_histogram(waits, APPROVAL_WAIT_BUCKETS),
    )


# --------------------------------------------------------------------------- comparing and timing


def comparable(figures: HistoryFigures) -> dict[str, Any]:
    """The figures in an order-independent form, histogram sums rounded (the databases' float maths differ)."""
    data = asdict(figures)
    data["funnel"]["failure_classes"] = sorted(
        (item.code, item.count, item.examples) for item in figures.funnel.failure_classes
    )
    data["funnel"]["sources"] = sorted(
        ((item.source or ""), item.opened, item.progressed) for item in figures.funnel.sources
    )
    data["actions"] = sorted(tuple(asdict(item).values()) for item in figures.actions)
    for name in ("run_duration", "approval_wait"):
        data[name]["series"] = {
            label: (series.cumulative, series.count, round(series.total_seconds, 0))
            for label, series in getattr(figures, name).series.items()
        }
    return data


def timed(function: Callable[[], HistoryFigures], repeat: int) -> tuple[float, HistoryFigures]:
    durations = []
    result: HistoryFigures | None = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        durations.append(time.perf_counter() - started)
    assert result is not None
    return statistics.median(durations), result


def measure(engine: Engine, now: datetime, repeat: int, naive_repeat: int, label: str) -> None:
    queries = HistoryMetricsQueries(engine)
    queries.read(now, PERIOD)  # warm caches and connections for both approaches alike
    snapshot_seconds, aggregated = timed(lambda: queries.read(now, PERIOD), repeat)
    naive_seconds, naive = timed(lambda: row_by_row(engine, now, PERIOD), naive_repeat)
    same = comparable(aggregated) == comparable(naive)
    print(f"\n{label}")
    print(f"  snapshot (aggregated in the database): {snapshot_seconds * 1000:10.1f} ms  (median of {repeat})")
    print(f"  row-by-row in Python:                  {naive_seconds * 1000:10.1f} ms  (median of {naive_repeat})")
    print(f"  ratio row-by-row / snapshot:           {naive_seconds / snapshot_seconds:10.1f} x")
    print(f"  same figures:                          {same}")
    if not same:
        raise SystemExit("the two computations disagree: a bug in one of them")
    funnel, health = aggregated.funnel, aggregated.health
    rate = health.last_day.successes / health.last_day.executions if health.last_day.executions else math.nan
    print(f"  (funnel: opened {funnel.opened}, runs started {funnel.runs_started}, executed {funnel.executed}, "
          f"passed {funnel.verification_passed}, failed {funnel.verification_failed}, resolved {funnel.resolved}; "
          f"24 h success rate {rate:.3f} over {health.last_day.executions} executions)")


def create_suggested_indexes(engine: Engine) -> None:
    with engine.begin() as connection:
        for name, table, columns in SUGGESTED_INDEXES:
            connection.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})"))
        connection.execute(text("ANALYZE"))


@contextmanager
def database(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-history-") as directory:
        yield f"sqlite:///{Path(directory) / 'history.db'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None, help="An empty database (default: a temporary SQLite file).")
    parser.add_argument("--rows", type=int, default=1_000_000, help="History rows to seed over all tables.")
    parser.add_argument("--repeat", type=int, default=5, help="Snapshot computations measured (median).")
    parser.add_argument("--naive-repeat", type=int, default=3, help="Row-by-row computations measured (median).")
    parser.add_argument("--suggested-indexes", action="store_true",
                        help="Afterwards, add the indexes suggested for the history tables and measure again.")
    args = parser.parse_args()
    configure_logging("WARNING")
    now = datetime.now(UTC)
    with database(args.database_url) as url:
        upgrade(url)
        engine = create_history_engine(url)
        try:
            with engine.connect() as connection:
                existing = connection.execute(select(func.count()).select_from(INCIDENTS)).scalar_one()
            if existing:
                raise SystemExit(f"{engine.url.render_as_string(hide_password=True)} already holds history rows; "
                                 "point --database-url at an empty database")
            print(f"database: {engine.url.render_as_string(hide_password=True)} ({engine.dialect.name})")
            print(f"seeding {args.rows:,} history rows over {HISTORY_SPAN.days} days ...", flush=True)
            started = time.perf_counter()
            seed(engine, args.rows, now)
            print(f"  took {time.perf_counter() - started:.1f} s")
            indexes = sum(len(inspect(engine).get_indexes(name)) for name in SHARES)
            measure(engine, now, args.repeat, args.naive_repeat, f"with the migrations' indexes ({indexes})")
            if args.suggested_indexes:
                create_suggested_indexes(engine)
                measure(engine, now, args.repeat, args.naive_repeat,
                        f"with the suggested indexes added ({', '.join(name for name, _, _ in SUGGESTED_INDEXES)})")
        finally:
            engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
