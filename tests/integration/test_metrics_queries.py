"""The metrics reads against a real database (SQLite file and PostgreSQL) and a real redis-server.

History scenarios (both backends, schema from the history migrations):
- funnel stages of the period: opened (duplicates included), runs started / executed /
  passed / failed (Shadow excluded, failures only after a start), resolved;
- failure classes merged case-insensitively with UNKNOWN for no code, counts and the 3 most
  recent example Runs per class; approvals rejected and invalid in the period; per-source
  activity;
- health counts: execution tallies over 24 h and 7 days (Shadow excluded), per action;
  knowledge entries and those without a root cause; alertname-null population of 24 h;
  Incidents since midnight; node activity of the last hour;
- all-time figures: actions by type/mode/result, run-duration and approval-wait histograms
  (durations computed by the database: julianday on SQLite, epoch on PostgreSQL);
- aggregation happens in the database: the number of statements does not grow with the rows;
- an unreachable database or a missing schema is DatabaseUnavailableError.

Redis scenarios:
- the top 20 keys by 24 h count with their 1h/24h/7d/30d counts and signature labels;
- keys per escalation level, disposition totals over all keys, occurrences of the last hour;
- tenant filtering; at most 4 round trips for 26 keys; Redis down is RedisUnavailableError.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio
from sqlalchemy import Engine, event

from flywheel.domain.escalation import EscalationThresholds
from flywheel.domain.funnel import ObjectSample
from flywheel.domain.health import SUCCESS_RATE_WINDOW, ExecutionTally, FlywheelNode, flywheel_health
from flywheel.errors import DatabaseUnavailableError, RedisUnavailableError
from flywheel.stores import metrics_queries
from flywheel.stores.anomaly_redis import AnomalyStore, connect_redis
from flywheel.stores.history import create_history_engine, upgrade
from flywheel.stores.metrics_queries import AnomalyMetricsReader, HistoryFigures, HistoryMetricsQueries
from tests.harness.history_rows import (
    APPROVALS,
    EXECUTIONS,
    INCIDENTS,
    KNOWLEDGE,
    RUNS,
    approval_row,
    execution_row,
    incident_row,
    insert_rows,
    knowledge_row,
    run_row,
)

pytestmark = pytest.mark.integration

# Noon today: "since midnight" and "the last 24 hours" then differ by a known set of rows.
NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
PERIOD = timedelta(minutes=10)


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture()
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = create_history_engine(database_url)
    yield engine
    engine.dispose()


def seed_history(engine: Engine) -> dict[str, str]:
    """The scenario of the module docstring; returns the uids of the Runs by name."""
    incidents = [
        *(incident_row(f"i{n}", ago(minutes=2)) for n in (1, 2, 3)),
        incident_row("i4", ago(minutes=3), source="jane", phase="Mitigating", run_uid="r-i4", decision_id="DEC-4"),
        incident_row("i5", ago(minutes=4), source="probe", phase="Duplicate", duplicate_of="i1"),
        incident_row("i6", ago(minutes=30), alert_name=None, decision_id="DEC-6"),
        incident_row("i7", ago(hours=5), phase="Resolved", resolved_at=ago(minutes=5)),
        incident_row("i8", ago(days=2), alert_name=None),
        incident_row("i9", ago(hours=20), alert_name=""),
    ]
    runs = [
        run_row("r1", ago(minutes=5), state="Succeeded", started_at=ago(minutes=4), completed_at=ago(minutes=3)),
        run_row("r2", ago(minutes=6), state="Failed", started_at=ago(minutes=5), completed_at=ago(minutes=1),
                error_code="E-VERIFY-TIMEOUT"),
        run_row("r3", ago(minutes=7), state="TimedOut", started_at=ago(minutes=6.5), completed_at=ago(minutes=2),
                error_code="e-verify-timeout"),
        run_row("r4", ago(minutes=8), state="Failed", started_at=ago(minutes=7), completed_at=ago(seconds=30)),
        run_row("r5", ago(minutes=9), state="TimedOut", completed_at=ago(minutes=1), error_code="E-RUN-TIMEOUT"),
        run_row("r6", ago(minutes=2), mode="Shadow", state="Succeeded", started_at=ago(minutes=2),
                completed_at=ago(minutes=1)),
        run_row("r7", ago(minutes=50), state="Succeeded", started_at=ago(minutes=45), completed_at=ago(minutes=40)),
        run_row("r8", ago(minutes=3)),
        run_row("r10", ago(minutes=9), state="Failed", started_at=ago(minutes=8.5), completed_at=ago(minutes=3),
                error_code="E-VERIFY-TIMEOUT"),
        run_row("r11", ago(minutes=9), state="Failed", started_at=ago(minutes=8.5), completed_at=ago(minutes=4),
                error_code="E-VERIFY-TIMEOUT"),
        run_row("r12", ago(minutes=9), state="Failed", started_at=ago(minutes=8.5), completed_at=ago(minutes=5),
                error_code="E-ACTION-FORBIDDEN"),
    ]
    approvals = [
        approval_row("a1", ago(minutes=20), phase="Rejected", decision="Reject", decided_at=ago(minutes=5)),
        approval_row("a2", ago(minutes=3), phase="Invalid"),
        approval_row("a3", ago(minutes=30), phase="Approved", decision="Approve", decided_at=ago(minutes=25)),
        approval_row("a4", ago(hours=2), phase="Expired", expires_at=ago(hours=1)),
        approval_row("a5", ago(days=2), phase="Rejected", decided_at=ago(days=2) + timedelta(minutes=1)),
        approval_row("a6", ago(minutes=1)),  # pending: neither refused nor waited out
    ]
    executions = [
        *(execution_row(ago(hours=n), succeeded=n != 1) for n in range(1, 7)),  # restart 6, 5 ok
        *(execution_row(ago(hours=n + 6), succeeded=n < 2, action="Scale") for n in range(4)),  # scale 4, 2 ok
        *(execution_row(ago(minutes=n), succeeded=True, action="Scale", shadow=True) for n in (1, 2)),
        *(execution_row(ago(days=3, minutes=n), succeeded=False, action="RolloutUndo") for n in range(5)),
        execution_row(ago(days=10), succeeded=False),
    ]
    knowledge = [
        knowledge_row(ago(minutes=10), "OOM: memory limit too low"),
        knowledge_row(ago(hours=2), None),
        knowledge_row(ago(minutes=30), "  "),
    ]
    insert_rows(engine, {INCIDENTS: incidents, RUNS: runs, APPROVALS: approvals, EXECUTIONS: executions,
                         KNOWLEDGE: knowledge})
    return {row["name"]: row["uid"] for row in runs}


@pytest.fixture()
def seeded(engine: Engine) -> tuple[HistoryFigures, dict[str, str]]:
    uids = seed_history(engine)
    return HistoryMetricsQueries(engine).read(NOW, PERIOD), uids


def test_funnel_stages_of_the_period(seeded: tuple[HistoryFigures, dict[str, str]]) -> None:
    figures, _ = seeded
    funnel = figures.funnel
    assert funnel.opened == 5  # i1..i5, the duplicate included
    assert funnel.runs_started == 9  # Auto Runs created in the period (r6 is Shadow, r7 older)
    assert funnel.executed == 7  # started in the period: r1 r2 r3 r4 r10 r11 r12
    assert funnel.verification_passed == 1  # r1 (r6 is Shadow)
    assert funnel.verification_failed == 6  # r5 never started, so it is not a verification failure
    assert funnel.resolved == 1
    assert funnel.approvals_rejected == 1 and funnel.approvals_invalid == 1


def test_failure_classes_with_examples(seeded: tuple[HistoryFigures, dict[str, str]]) -> None:
    figures, uids = seeded
    classes = {item.code: item for item in figures.funnel.failure_classes}
    assert {code: item.count for code, item in classes.items()} == {
        "E-VERIFY-TIMEOUT": 4, "E-ACTION-FORBIDDEN": 1, "UNKNOWN": 1,
    }
    assert classes["E-VERIFY-TIMEOUT"].examples == tuple(
        ObjectSample("Run", "shop", name, uids[name]) for name in ("r2", "r3", "r10")
    )
    assert classes["UNKNOWN"].examples == (ObjectSample("Run", "shop", "r4", uids["r4"]),)


def test_source_activity_of_the_period(seeded: tuple[HistoryFigures, dict[str, str]]) -> None:
    figures, _ = seeded
    activity = {row.source: (row.opened, row.progressed) for row in figures.funnel.sources}
    assert activity == {"alertmanager": (3, 0), "jane": (1, 1), "probe": (1, 1)}


def test_health_counts(seeded: tuple[HistoryFigures, dict[str, str]]) -> None:
    figures, _ = seeded
    health = figures.health
    assert health.last_day == ExecutionTally(10, 7)
    assert health.last_week == ExecutionTally(15, 7)
    assert health.knowledge_entries == 3 and health.knowledge_without_root_cause == 2
    assert health.incidents_last_day == 8  # all but the 2-day-old i8
    assert health.incidents_without_alertname == 2  # i6 (null) and i9 (empty)
    assert health.processed_today == 7  # since 00:00: not i8, not i9 (yesterday 16:00)
    rate = flywheel_health(5, health).success_rate
    assert rate.value == pytest.approx(0.7) and rate.window == SUCCESS_RATE_WINDOW
    assert figures.repair_by_action == {
        "RolloutRestart": ExecutionTally(6, 5), "Scale": ExecutionTally(4, 2), "RolloutUndo": ExecutionTally(5, 0),
    }


def test_node_activity_of_the_last_hour(seeded: tuple[HistoryFigures, dict[str, str]]) -> None:
    figures, _ = seeded
    assert figures.node_activity == {
        FlywheelNode.MONITORING: 6,  # i1..i6
        FlywheelNode.DEDUPLICATION: 1,  # i5
        FlywheelNode.REASONING: 2,  # i4, i6
        FlywheelNode.EXECUTION: 8,  # the 7 of the period and r7
        FlywheelNode.LEARNING: 2,  # knowledge written 10 and 30 minutes ago
    }


def test_all_time_figures(seeded: tuple[HistoryFigures, dict[str, str]]) -> None:
    figures, _ = seeded
    actions = {(item.action, item.mode, item.succeeded): item.count for item in figures.actions}
    assert actions == {
        ("RolloutRestart", "Auto", True): 5, ("RolloutRestart", "Auto", False): 2,
        ("Scale", "Auto", True): 2, ("Scale", "Auto", False): 2,
        ("Scale", "Shadow", True): 2, ("RolloutUndo", "Auto", False): 5,
    }
    succeeded = figures.run_duration.series["Succeeded"]  # r1 60 s, r6 60 s, r7 300 s
    bounds = dict(zip(figures.run_duration.buckets, succeeded.cumulative, strict=True))
    assert (bounds[30.0], bounds[60.0], bounds[120.0], bounds[300.0], bounds[3600.0]) == (0, 2, 2, 3, 3)
    assert succeeded.count == 3 and succeeded.total_seconds == pytest.approx(420, abs=0.01)
    assert figures.run_duration.series["Failed"].count == 5
    assert "TimedOut" in figures.run_duration.series and "Pending" not in figures.run_duration.series
    wait = figures.approval_wait.series
    assert wait["Approved"].count == 1 and wait["Approved"].total_seconds == pytest.approx(300, abs=0.01)
    assert wait["Rejected"].count == 2 and wait["Rejected"].total_seconds == pytest.approx(900 + 60, abs=0.01)
    assert wait["Expired"].count == 1 and wait["Expired"].total_seconds == pytest.approx(3600, abs=0.01)
    assert set(wait) == {"Approved", "Rejected", "Expired"}


def test_aggregation_stays_in_the_database(engine: Engine) -> None:
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        queries = HistoryMetricsQueries(engine)
        queries.read(NOW, PERIOD)
        small = len(statements)
        insert_rows(engine, {
            INCIDENTS: [incident_row(f"bulk-{n}", ago(minutes=n % 9), source=f"s{n % 7}") for n in range(400)],
            RUNS: [run_row(f"bulk-{n}", ago(minutes=n % 9), state="Failed", started_at=ago(minutes=n % 9),
                           completed_at=ago(seconds=n % 50), error_code=f"E-{n % 9}") for n in range(400)],
            EXECUTIONS: [execution_row(ago(minutes=n), succeeded=n % 3 == 0) for n in range(400)],
        })
        statements.clear()
        figures = queries.read(NOW, PERIOD)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == small
    assert figures.funnel.opened == 400
    assert sum(item.count for item in figures.funnel.failure_classes) == 400
    assert all(len(item.examples) <= 3 for item in figures.funnel.failure_classes)


def test_empty_history_gives_zeros_and_nan_where_undefined(engine: Engine) -> None:
    figures = HistoryMetricsQueries(engine).read(NOW, PERIOD)
    assert figures.funnel.opened == 0 and figures.funnel.failure_classes == ()
    assert figures.run_duration.series == {} and figures.actions == ()
    health = flywheel_health(5, figures.health)
    assert math.isnan(health.success_rate.value)
    assert math.isnan(health.alertname_null_rate) and math.isnan(health.resolved_without_root_cause_share)


def test_missing_schema_is_unavailability(tmp_path: Any) -> None:
    engine = create_history_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(DatabaseUnavailableError, match="schema"):
            HistoryMetricsQueries(engine).read(NOW, PERIOD)
    finally:
        engine.dispose()


def test_unreachable_postgresql_is_unavailability() -> None:
    engine = create_history_engine("postgresql+psycopg://flywheel:secret@127.0.0.1:1/history")
    try:
        queries = HistoryMetricsQueries(engine)
        with pytest.raises(DatabaseUnavailableError):
            queries.read(NOW, PERIOD)
        with pytest.raises(DatabaseUnavailableError):
            queries.ping()
        assert "secret" not in queries.database
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- Redis

THRESHOLDS = EscalationThresholds(repeat=3, escalate=5, permanent_fix=10)


@pytest.fixture()
async def client(clean_redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    redis_client = connect_redis(clean_redis_url)
    yield redis_client
    await redis_client.aclose()


async def seed_anomalies(client: redis.asyncio.Redis) -> None:
    """Key i (1..25) of tenant shop: i occurrences within 24 h (2 of them within the hour for i ≥ 2)
    and one more 3 days ago. Tenant other: one key seen 40 times. Dispositions on three keys."""
    store = AnomalyStore(client, THRESHOLDS)
    for number in range(1, 26):
        key = f"{number:016x}"
        signature = {"alert_name": f"Alert{number}", "service": f"svc{number}", "namespace": "shop", "error_type": ""}
        occurred = [ago(minutes=40 * n) for n in range(number)] + [ago(days=3)]
        for index, moment in enumerate(occurred):
            await store.record_occurrence("shop", key, signature, f"{key}-{index}", moment, now=NOW)
    other = {"alert_name": "Other", "service": "x", "namespace": "other", "error_type": ""}
    for index in range(40):
        await store.record_occurrence("other", "ffffffffffffffff", other, f"o-{index}", ago(minutes=index), now=NOW)
    for index, (key, disposition) in enumerate([
        (f"{1:016x}", "auto_repair"), (f"{1:016x}", "auto_repair"), (f"{2:016x}", "auto_repair"),
        (f"{3:016x}", "manual_resolved"),
    ]):
        await store.record_disposition("shop", key, disposition, f"d-{index}", at=NOW)


class RoundTrips:
    """Counts commands written to Redis (a pipeline is one write: one round trip)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = redis.asyncio.connection.AbstractConnection.send_packed_command

        async def counting(connection: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            await original(connection, command, check_health)

        monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", counting)


@pytest.mark.parametrize("batch_keys", [metrics_queries.SCRIPT_BATCH_KEYS, 4])
async def test_top_keys_levels_and_dispositions(
    client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch, batch_keys: int
) -> None:
    await seed_anomalies(client)
    monkeypatch.setattr(metrics_queries, "SCRIPT_BATCH_KEYS", batch_keys)
    reader = AnomalyMetricsReader(client, THRESHOLDS, tenant="shop")
    await reader.read(NOW)  # the first read per server loads the scripts (NOSCRIPT, SCRIPT LOAD)
    trips = RoundTrips(monkeypatch)
    figures = await reader.read(NOW)
    # SCAN timelines, SCAN dispositions, a script call per batch of each, one pipeline for the top keys.
    timeline_batches, disposition_batches = -(-25 // batch_keys), -(-3 // batch_keys)
    assert trips.count == 2 + timeline_batches + disposition_batches + 1
    assert [series.key for series in figures.top] == [f"{number:016x}" for number in range(25, 5, -1)]
    first = figures.top[0]
    assert (first.tenant, first.alert_name, first.service) == ("shop", "Alert25", "svc25")
    assert first.counts == {"1h": 2, "24h": 25, "7d": 26, "30d": 26}
    assert figures.keys_by_level == {"none": 2, "REPEAT": 2, "ESCALATE": 5, "PERMANENT_FIX": 16}
    assert figures.dispositions == {"auto_repair": 3, "human_approved": 0, "manual_resolved": 1,
                                    "cold_start_trust": 0, "timeout_ignored": 0}
    assert figures.occurrences_last_hour == 1 + 24 * 2
    assert figures.tracked_keys == 25


async def test_all_tenants_without_a_configured_one(client: redis.asyncio.Redis) -> None:
    await seed_anomalies(client)
    figures = await AnomalyMetricsReader(client, THRESHOLDS).read(NOW)
    assert figures.top[0].tenant == "other" and figures.top[0].counts["24h"] == 40
    assert len(figures.top) == 20
    assert figures.keys_by_level["PERMANENT_FIX"] == 17
    assert figures.tracked_keys == 26


async def test_keys_without_signature_get_blank_labels(client: redis.asyncio.Redis) -> None:
    await client.zadd("legacy:anomaly:timeline:00000000deadbeef", {str(NOW.timestamp()): NOW.timestamp()})
    figures = await AnomalyMetricsReader(client, THRESHOLDS).read(NOW)
    assert [(series.key, series.alert_name, series.service) for series in figures.top] == [
        ("00000000deadbeef", "", "")
    ]


async def test_redis_down_is_unavailability() -> None:
    client = connect_redis("redis://127.0.0.1:1/0", timeout_seconds=0.5)
    try:
        reader = AnomalyMetricsReader(client, THRESHOLDS)
        with pytest.raises(RedisUnavailableError):
            await reader.read(NOW)
        with pytest.raises(RedisUnavailableError):
            await reader.ping()
    finally:
        await client.aclose()
