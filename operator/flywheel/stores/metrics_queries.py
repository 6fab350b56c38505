"""The reads behind the metrics snapshot: aggregates over the history database and Redis.

History (SQLAlchemy Core, synchronous: the snapshot computer calls it from a worker thread).
Every figure is aggregated by the database — period bounds in ``WHERE``, ``GROUP BY`` and
``COUNT(*) FILTER (WHERE …)`` — so the rows that cross the wire are a few dozen however
large the history grows. All statements of one snapshot run in one transaction, so the
figures agree with each other.

All-time figures (actions by type and result, the duration histograms, knowledge entries) are
cumulative by nature: Prometheus counters and histograms must never go down, and reading them
from the shared database keeps them identical on every replica and across restarts. They scan
an index, not the table (see the covering indexes in ``tables.py``).

Redis (async): the anomaly recurrence keys of every tenant (or of the configured one) are
found with SCAN and counted by server-side scripts, a batch of keys per round trip: with
10,000 keys, a pipeline of two ZCOUNTs per key was a fifth of the operator's CPU, spent
packing commands and parsing replies one by one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import redis.asyncio
from sqlalchemy import ColumnElement, Connection, Engine, Select, and_, func, or_, select, text
from sqlalchemy import exc as sa_exc

from flywheel.api.enums import ApprovalPhase, EscalationLevel, IncidentPhase, RunMode, RunState
from flywheel.domain.escalation import EscalationThresholds, escalation_level
from flywheel.domain.funnel import FailureClass, ObjectSample, SourceActivity, normalize_failure_class
from flywheel.domain.health import (
    ALERTNAME_NULL_RATE_WINDOW,
    NODE_ACTIVITY_WINDOW,
    SUCCESS_RATE_FALLBACK_WINDOW,
    SUCCESS_RATE_WINDOW,
    ExecutionTally,
    FlywheelNode,
    HistoryHealthCounts,
    start_of_day,
)
from flywheel.logs import get_logger
from flywheel.stores.anomaly_redis import ALLOWED_DISPOSITIONS, COUNTING_WINDOWS
from flywheel.stores.history.engine import as_unavailable, describe_database_url
from flywheel.stores.history.tables import (
    ApprovalRow,
    IncidentRow,
    KnowledgeEntryRow,
    RepairExecutionRow,
    RunRow,
)
from flywheel.stores.redis_errors import redis_errors

_log = get_logger(__name__)

TOP_ANOMALY_KEYS: Final = 20
SCAN_PAGE_SIZE: Final = 1000
# Keys counted per script call: each call blocks Redis for a moment, never long.
SCRIPT_BATCH_KEYS: Final = 500

# KEYS: timelines; ARGV: start_1h, start_24h. Returns the two counts of each key, in order.
_COUNT_WINDOWS_LUA: Final = """
local counts = {}
for i, key in ipairs(KEYS) do
  counts[2 * i - 1] = redis.call('ZCOUNT', key, ARGV[1], '+inf')
  counts[2 * i] = redis.call('ZCOUNT', key, ARGV[2], '+inf')
end
return counts
"""

# KEYS: disposition hashes; ARGV: the disposition names. Returns their totals over the keys.
_SUM_DISPOSITIONS_LUA: Final = """
local totals = {}
for j = 1, #ARGV do totals[j] = 0 end
for _, key in ipairs(KEYS) do
  local values = redis.call('HMGET', key, unpack(ARGV))
  for j = 1, #ARGV do totals[j] = totals[j] + (tonumber(values[j]) or 0) end
end
return totals
"""
NO_ESCALATION: Final = "none"

# Bucket bounds in seconds. Runs take seconds to tens of minutes (the default deadline is 10
# minutes); approvals minutes to hours (they expire after one hour by default).
RUN_DURATION_BUCKETS: Final = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
APPROVAL_WAIT_BUCKETS: Final = (30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)

FAILED_AFTER_START: Final = (RunState.FAILED.value, RunState.TIMED_OUT.value)
FINISHED_RUN_STATES: Final = (
    RunState.SUCCEEDED.value,
    RunState.FAILED.value,
    RunState.CANCELLED.value,
    RunState.TIMED_OUT.value,
)
DECIDED_APPROVAL_PHASES: Final = (ApprovalPhase.APPROVED.value, ApprovalPhase.REJECTED.value)

_INCIDENTS = IncidentRow.__table__
_RUNS = RunRow.__table__
_APPROVALS = ApprovalRow.__table__
_EXECUTIONS = RepairExecutionRow.__table__
_KNOWLEDGE = KnowledgeEntryRow.__table__

# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class HistogramSeries:
    """One labelled series of a histogram: cumulative counts per bucket bound, sum and count."""

    cumulative: tuple[int, ...]
    total_seconds: float
    count: int


@dataclass(frozen=True, slots=True)
class DurationHistogram:
    """A histogram per label value (Run final state, Approval phase) over the whole history."""

    buckets: tuple[float, ...]
    series: Mapping[str, HistogramSeries]


@dataclass(frozen=True, slots=True)
class FunnelHistory:
    """The funnel stages the history database knows (see ``flywheel.domain.funnel``)."""

    opened: int
    runs_started: int
    executed: int
    verification_passed: int
    verification_failed: int
    resolved: int
    failure_classes: tuple[FailureClass, ...]  # every class, unranked; the domain keeps the top 5
    approvals_rejected: int
    approvals_invalid: int
    sources: tuple[SourceActivity, ...]


@dataclass(frozen=True, slots=True)
class ActionOutcomeCount:
    action: str
    mode: str  # RunMode value: Auto or Shadow
    succeeded: bool
    count: int


@dataclass(frozen=True, slots=True)
class HistoryFigures:
    """Everything one snapshot reads from the history database."""

    funnel: FunnelHistory
    health: HistoryHealthCounts
    node_activity: Mapping[FlywheelNode, int]  # every node but diagnosis (Redis knows that one)
    repair_by_action: Mapping[str, ExecutionTally]  # last 7 days, Shadow excluded
    actions: tuple[ActionOutcomeCount, ...]  # all time
    run_duration: DurationHistogram  # all time, by final state
    approval_wait: DurationHistogram  # all time, by phase


@dataclass(frozen=True, slots=True)
class AnomalySeries:
    """Occurrence counts of one anomaly key, per window."""

    tenant: str
    key: str
    alert_name: str
    service: str
    counts: Mapping[str, int]  # window label (1h, 24h, 7d, 30d) → occurrences


@dataclass(frozen=True, slots=True)
class AnomalyFigures:
    """What one snapshot reads from the recurrence store."""

    top: tuple[AnomalySeries, ...]  # at most 20, most frequent in 24 h first
    keys_by_level: Mapping[str, int]  # escalation level (or "none") → keys
    dispositions: Mapping[str, int]  # disposition type → total over all keys
    occurrences_last_hour: int
    tracked_keys: int


# --------------------------------------------------------------------------- history


def _seconds_between(start: ColumnElement[Any], end: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """``end - start`` in seconds, computed by the database.

    SQLite has no interval type: timestamps are ISO text (UTC, see ``UtcDateTime``) and
    julianday() turns them into fractional days.
    """
    if dialect == "sqlite":
        # julianday() is a double of ~2.46e6 days: rounding to the millisecond removes the
        # float noise that would push a duration of exactly 60 s just past the 60 s bucket.
        return func.round((func.julianday(end) - func.julianday(start)) * 86400.0, 3)
    # date_part returns a double; EXTRACT returns numeric since PostgreSQL 14, several times slower.
    return func.date_part("epoch", end - start)


class HistoryMetricsQueries:
    """Aggregates of the history database for one metrics snapshot."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._database = describe_database_url(engine.url)

    @property
    def database(self) -> str:
        return self._database

    def ping(self) -> None:
        """Raise :class:`DatabaseUnavailableError` unless the database answers a trivial query."""
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except sa_exc.SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def read(self, now: datetime, period: timedelta) -> HistoryFigures:
        """All history figures at ``now``, the funnel over ``period`` back from ``now``."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        try:
            with self._engine.connect() as connection, connection.begin():
                return self._read(connection, now, period)
        except sa_exc.SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: sa_exc.SQLAlchemyError) -> Exception:
        """Unavailability as :class:`DatabaseUnavailableError`; anything else (a bug) unchanged."""
        unavailable = as_unavailable(exc, self._database)
        return unavailable if unavailable is not None else exc

    def _read(self, connection: Connection, now: datetime, period: timedelta) -> HistoryFigures:
        dialect = connection.dialect.name
        since = now - period
        hour_ago = now - NODE_ACTIVITY_WINDOW
        incidents = self._incident_counts(connection, now, since, hour_ago)
        runs = self._run_counts(connection, since, hour_ago)
        executions = self._execution_tallies(connection, now)
        knowledge_entries, without_root_cause, learned_last_hour = self._knowledge_counts(connection, hour_ago)
        last_day = ExecutionTally(
            executions=sum(tally["day"].executions for tally in executions.values()),
            successes=sum(tally["day"].successes for tally in executions.values()),
        )
        last_week = ExecutionTally(
            executions=sum(tally["week"].executions for tally in executions.values()),
            successes=sum(tally["week"].successes for tally in executions.values()),
        )
        funnel = FunnelHistory(
            opened=incidents["opened"],
            runs_started=runs["runs_started"],
            executed=runs["executed"],
            verification_passed=runs["passed"],
            verification_failed=runs["failed"],
            resolved=self._resolved(connection, since),
            failure_classes=self._failure_classes(connection, since),
            approvals_rejected=(approvals := self._approval_outcomes(connection, since))[ApprovalPhase.REJECTED],
            approvals_invalid=approvals[ApprovalPhase.INVALID],
            sources=self._source_activity(connection, since),
        )
        health = HistoryHealthCounts(
            last_day=last_day,
            last_week=last_week,
            knowledge_entries=knowledge_entries,
            knowledge_without_root_cause=without_root_cause,
            incidents_last_day=incidents["last_day"],
            incidents_without_alertname=incidents["without_alertname"],
            processed_today=incidents["today"],
        )
        return HistoryFigures(
            funnel=funnel,
            health=health,
            node_activity={
                FlywheelNode.MONITORING: incidents["received_last_hour"],
                FlywheelNode.DEDUPLICATION: incidents["duplicates_last_hour"],
                FlywheelNode.REASONING: incidents["decided_last_hour"],
                FlywheelNode.EXECUTION: runs["executed_last_hour"],
                FlywheelNode.LEARNING: learned_last_hour,
            },
            repair_by_action={action: tally["week"] for action, tally in executions.items()},
            actions=self._action_outcomes(connection),
            run_duration=self._run_duration(connection, dialect),
            approval_wait=self._approval_wait(connection, dialect),
        )

    # -- incidents ------------------------------------------------------------------

    @staticmethod
    def _incident_counts(connection: Connection, now: datetime, since: datetime, hour_ago: datetime) -> dict[str, int]:
        created = _INCIDENTS.c.created_at
        last_day_start = now - ALERTNAME_NULL_RATE_WINDOW
        today = start_of_day(now)
        # One range scan of the creation-time index covers every window (the widest is 24 h).
        earliest = min(since, hour_ago, last_day_start, today)
        statement = select(
            func.count().filter(created >= since).label("opened"),
            func.count().filter(created >= hour_ago).label("received_last_hour"),
            func.count()
            .filter(and_(created >= hour_ago, _INCIDENTS.c.phase == IncidentPhase.DUPLICATE.value))
            .label("duplicates_last_hour"),
            func.count()
            .filter(and_(created >= hour_ago, _INCIDENTS.c.decision_id.is_not(None)))
            .label("decided_last_hour"),
            func.count().filter(created >= today).label("today"),
            func.count().filter(created >= last_day_start).label("last_day"),
            func.count()
            .filter(
                and_(
                    created >= last_day_start,
                    or_(_INCIDENTS.c.alert_name.is_(None), func.trim(_INCIDENTS.c.alert_name) == ""),
                )
            )
            .label("without_alertname"),
        ).where(created >= earliest)
        row = connection.execute(statement).one()
        return {key: int(value or 0) for key, value in row._mapping.items()}

    @staticmethod
    def _resolved(connection: Connection, since: datetime) -> int:
        statement = select(func.count()).where(_INCIDENTS.c.resolved_at >= since)
        return int(connection.execute(statement).scalar_one())

    @staticmethod
    def _source_activity(connection: Connection, since: datetime) -> tuple[SourceActivity, ...]:
        progressed = or_(_INCIDENTS.c.run_uid.is_not(None), _INCIDENTS.c.phase == IncidentPhase.DUPLICATE.value)
        statement = (
            select(_INCIDENTS.c.source, func.count(), func.count().filter(progressed))
            .where(_INCIDENTS.c.created_at >= since)
            .group_by(_INCIDENTS.c.source)
        )
        return tuple(
            SourceActivity(source=source, opened=int(opened), progressed=int(progressed_count))
            for source, opened, progressed_count in connection.execute(statement)
        )

    # -- runs -----------------------------------------------------------------------

    @staticmethod
    def _run_counts(connection: Connection, since: datetime, hour_ago: datetime) -> dict[str, int]:
        auto = _RUNS.c.mode == RunMode.AUTO.value
        started, completed = _RUNS.c.started_at, _RUNS.c.completed_at
        earliest = min(since, hour_ago)
        # One pass over the Runs that did anything since ``earliest``; with an index on each
        # timestamp the OR becomes an index union instead of a table scan.
        statement = select(
            func.count().filter(_RUNS.c.created_at >= since).label("runs_started"),
            func.count().filter(started >= since).label("executed"),
            func.count().filter(started >= hour_ago).label("executed_last_hour"),
            func.count()
            .filter(and_(completed >= since, _RUNS.c.state == RunState.SUCCEEDED.value))
            .label("passed"),
            func.count()
            .filter(and_(completed >= since, _RUNS.c.state.in_(FAILED_AFTER_START), started.is_not(None)))
            .label("failed"),
        ).where(auto, or_(_RUNS.c.created_at >= earliest, started >= earliest, completed >= earliest))
        row = connection.execute(statement).one()
        return {key: int(value or 0) for key, value in row._mapping.items()}

    @staticmethod
    def _failure_classes(connection: Connection, since: datetime) -> tuple[FailureClass, ...]:
        """Every failure class of the period with its count and its 3 most recent Runs.

        A window function numbers the Runs of each class in the database, so only the
        examples cross the wire, not every failed Run.
        """
        code = func.coalesce(func.upper(func.trim(_RUNS.c.error_code)), "")
        failed = (
            select(
                code.label("code"),
                _RUNS.c.namespace,
                _RUNS.c.name,
                _RUNS.c.uid,
                func.count().over(partition_by=code).label("class_count"),
                func.row_number()
                .over(partition_by=code, order_by=(_RUNS.c.completed_at.desc(), _RUNS.c.name))
                .label("position"),
            )
            .where(
                _RUNS.c.completed_at >= since,
                _RUNS.c.mode == RunMode.AUTO.value,
                _RUNS.c.state.in_(FAILED_AFTER_START),
                _RUNS.c.started_at.is_not(None),
            )
            .subquery()
        )
        statement = (
            select(failed.c.code, failed.c.class_count, failed.c.namespace, failed.c.name, failed.c.uid)
            .where(failed.c.position <= 3)
            .order_by(failed.c.code, failed.c.position)
        )
        grouped: dict[str, tuple[int, list[ObjectSample]]] = {}
        for row_code, count, namespace, name, uid in connection.execute(statement):
            label = normalize_failure_class(row_code)
            _, examples = grouped.setdefault(label, (int(count), []))
            examples.append(ObjectSample("Run", namespace, name, uid))
        return tuple(
            FailureClass(code=label, count=count, examples=tuple(examples))
            for label, (count, examples) in grouped.items()
        )

    @staticmethod
    def _run_duration(connection: Connection, dialect: str) -> DurationHistogram:
        statement = _histogram_statement(
            "run_durations",
            _RUNS.c.state,
            _seconds_between(_RUNS.c.started_at, _RUNS.c.completed_at, dialect),
            and_(
                _RUNS.c.completed_at.is_not(None),
                _RUNS.c.started_at.is_not(None),
                _RUNS.c.state.in_(FINISHED_RUN_STATES),
            ),
            RUN_DURATION_BUCKETS,
            dialect,
        )
        return _histogram(connection.execute(statement).all(), RUN_DURATION_BUCKETS)

    # -- approvals ------------------------------------------------------------------

    @staticmethod
    def _approval_outcomes(connection: Connection, since: datetime) -> dict[ApprovalPhase, int]:
        refused = (ApprovalPhase.REJECTED.value, ApprovalPhase.INVALID.value)
        # An Invalid Approval may carry no decision time; its creation is when it was refused.
        happened = func.coalesce(_APPROVALS.c.decided_at, _APPROVALS.c.created_at)
        statement = (
            select(_APPROVALS.c.phase, func.count())
            .where(_APPROVALS.c.phase.in_(refused), happened >= since)
            .group_by(_APPROVALS.c.phase)
        )
        counts = {ApprovalPhase.REJECTED: 0, ApprovalPhase.INVALID: 0}
        for phase, count in connection.execute(statement):
            counts[ApprovalPhase(phase)] = int(count)
        return counts

    @staticmethod
    def _approval_wait(connection: Connection, dialect: str) -> DurationHistogram:
        """How long Approvals waited for a person: until decided, or until they expired unanswered."""
        ended = func.coalesce(_APPROVALS.c.decided_at, _APPROVALS.c.expires_at)
        statement = _histogram_statement(
            "approval_waits",
            _APPROVALS.c.phase,
            _seconds_between(_APPROVALS.c.created_at, ended, dialect),
            or_(
                and_(_APPROVALS.c.phase.in_(DECIDED_APPROVAL_PHASES), _APPROVALS.c.decided_at.is_not(None)),
                _APPROVALS.c.phase == ApprovalPhase.EXPIRED.value,
            ),
            APPROVAL_WAIT_BUCKETS,
            dialect,
        )
        return _histogram(connection.execute(statement).all(), APPROVAL_WAIT_BUCKETS)

    # -- executions and knowledge ------------------------------------------------------

    @staticmethod
    def _execution_tallies(connection: Connection, now: datetime) -> dict[str, dict[str, ExecutionTally]]:
        """Per action: executions and successes over 24 h ("day") and 7 days ("week"), Shadow excluded."""
        finished = _EXECUTIONS.c.finished_at
        succeeded = _EXECUTIONS.c.succeeded.is_(True)
        day_start = now - SUCCESS_RATE_WINDOW
        statement = (
            select(
                _EXECUTIONS.c.action,
                func.count(),
                func.count().filter(succeeded),
                func.count().filter(finished >= day_start),
                func.count().filter(and_(finished >= day_start, succeeded)),
            )
            .where(finished >= now - SUCCESS_RATE_FALLBACK_WINDOW, _EXECUTIONS.c.shadow.is_(False))
            .group_by(_EXECUTIONS.c.action)
        )
        return {
            action: {
                "week": ExecutionTally(int(week), int(week_ok)),
                "day": ExecutionTally(int(day), int(day_ok)),
            }
            for action, week, week_ok, day, day_ok in connection.execute(statement)
        }

    @staticmethod
    def _action_outcomes(connection: Connection) -> tuple[ActionOutcomeCount, ...]:
        statement = select(
            _EXECUTIONS.c.action, _EXECUTIONS.c.shadow, _EXECUTIONS.c.succeeded, func.count()
        ).group_by(_EXECUTIONS.c.action, _EXECUTIONS.c.shadow, _EXECUTIONS.c.succeeded)
        return tuple(
            ActionOutcomeCount(
                action=action,
                mode=(RunMode.SHADOW if shadow else RunMode.AUTO).value,
                succeeded=bool(succeeded),
                count=int(count),
            )
            for action, shadow, succeeded, count in connection.execute(statement)
        )

    @staticmethod
    def _knowledge_counts(connection: Connection, hour_ago: datetime) -> tuple[int, int, int]:
        no_root_cause = or_(_KNOWLEDGE.c.root_cause.is_(None), func.trim(_KNOWLEDGE.c.root_cause) == "")
        statement = select(
            func.count(),
            func.count().filter(no_root_cause),
            func.count().filter(_KNOWLEDGE.c.resolved_at >= hour_ago),
        )
        entries, without_root_cause, last_hour = connection.execute(statement).one()
        return int(entries), int(without_root_cause), int(last_hour)


def _histogram_statement(
    name: str,
    label: ColumnElement[Any],
    seconds: ColumnElement[Any],
    condition: ColumnElement[bool],
    buckets: tuple[float, ...],
    dialect: str,
) -> Select[Any]:
    """Cumulative bucket counts, sum and count of ``seconds`` per ``label``, in one pass.

    On SQLite the durations are a MATERIALIZED common table expression, so that each row's
    julianday() arithmetic runs once rather than once per bucket (SQLite inlines the
    expression into every FILTER clause). PostgreSQL's double arithmetic is cheaper than
    writing the rows to a tuplestore, so it reads them inline.
    """
    durations = select(label.label("label"), seconds.label("seconds")).where(condition).cte(name)
    if dialect == "sqlite":
        durations = durations.prefix_with("MATERIALIZED")
    return select(
        durations.c.label,
        *(func.count().filter(durations.c.seconds <= bound) for bound in buckets),
        func.coalesce(func.sum(durations.c.seconds), 0.0),
        func.count(),
    ).group_by(durations.c.label)


def _histogram(rows: Sequence[Any], buckets: tuple[float, ...]) -> DurationHistogram:
    series: dict[str, HistogramSeries] = {}
    for row in rows:
        label, *cumulative, total, count = row
        series[str(label)] = HistogramSeries(
            cumulative=tuple(int(value) for value in cumulative),
            # A clock step between two timestamps can make one duration negative; the sum of
            # a Prometheus histogram must not be, so such a series sums from zero.
            total_seconds=max(float(total), 0.0),
            count=int(count),
        )
    return DurationHistogram(buckets=buckets, series=series)


# --------------------------------------------------------------------------- Redis


_WINDOW_LABELS: Final = ("1h", "24h", "7d", "30d")


def _glob_escape(text_value: str) -> str:
    """Escape Redis glob metacharacters so that a project id is matched literally."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text_value)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _window_start(now: datetime, window: timedelta) -> str:
    # The same textual score form the anomaly store writes (shortest round-tripping float).
    return repr((now - window).timestamp())


class AnomalyMetricsReader:
    """Reads recurrence figures of all anomaly keys (of one tenant, when configured)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        thresholds: EscalationThresholds,
        tenant: str | None = None,
        top: int = TOP_ANOMALY_KEYS,
    ) -> None:
        self._client = client
        self._thresholds = thresholds
        self._prefix = _glob_escape(tenant) if tenant else "*"
        self._top = top
        self._count_windows = client.register_script(_COUNT_WINDOWS_LUA)
        self._sum_dispositions = client.register_script(_SUM_DISPOSITIONS_LUA)

    async def ping(self) -> None:
        with redis_errors("pinging"):
            await self._client.ping()

    async def read(self, now: datetime) -> AnomalyFigures:
        with redis_errors("reading anomaly metrics"):
            return await self._read(now)

    async def _scan(self, kind: str) -> list[str]:
        pattern = f"{self._prefix}:anomaly:{kind}:*"
        return [_text(key) async for key in self._client.scan_iter(match=pattern, count=SCAN_PAGE_SIZE)]

    async def _read(self, now: datetime) -> AnomalyFigures:
        timelines = sorted(set(await self._scan("timeline")))
        disposition_keys = sorted(set(await self._scan("disposition")))
        starts = {label: _window_start(now, window) for label, window in zip(_WINDOW_LABELS, COUNTING_WINDOWS, strict=True)}

        # The 1 h and 24 h counts of every key, and the disposition totals, a batch per round trip.
        counts_1h: list[int] = []
        counts_24h: list[int] = []
        for batch in _batches(timelines):
            pairs = await self._count_windows(keys=batch, args=[starts["1h"], starts["24h"]])
            counts_1h += (int(value) for value in pairs[0::2])
            counts_24h += (int(value) for value in pairs[1::2])
        dispositions = dict.fromkeys(ALLOWED_DISPOSITIONS, 0)
        for batch in _batches(disposition_keys):
            totals = await self._sum_dispositions(keys=batch, args=list(ALLOWED_DISPOSITIONS))
            for name, value in zip(ALLOWED_DISPOSITIONS, totals, strict=True):
                dispositions[name] += int(value)

        keys_by_level = dict.fromkeys([NO_ESCALATION, *(level.value for level in EscalationLevel)], 0)
        for count in counts_24h:
            level = escalation_level(count, self._thresholds)
            keys_by_level[level.value if level is not None else NO_ESCALATION] += 1

        ranked = sorted(
            (
                (count_24h, count_1h, timeline)
                for timeline, count_1h, count_24h in zip(timelines, counts_1h, counts_24h, strict=True)
                if count_24h > 0
            ),
            key=lambda item: (-item[0], item[2]),
        )[: self._top]

        # One more round trip: the long windows and the signature of the top keys only.
        top: list[AnomalySeries] = []
        if ranked:
            pipeline = self._client.pipeline(transaction=False)
            for _, _, timeline in ranked:
                tenant, key = _split_timeline_key(timeline)
                pipeline.zcount(timeline, starts["7d"], "+inf")
                pipeline.zcount(timeline, starts["30d"], "+inf")
                pipeline.hget(f"{tenant}:anomaly:metadata:{key}", "signature")
            replies = await pipeline.execute()
            for index, (count_24h, count_1h, timeline) in enumerate(ranked):
                tenant, key = _split_timeline_key(timeline)
                count_7d, count_30d, signature = replies[3 * index : 3 * index + 3]
                alert_name, service = _signature_labels(signature)
                top.append(
                    AnomalySeries(
                        tenant=tenant,
                        key=key,
                        alert_name=alert_name,
                        service=service,
                        counts={"1h": count_1h, "24h": count_24h, "7d": int(count_7d), "30d": int(count_30d)},
                    )
                )
        return AnomalyFigures(
            top=tuple(top),
            keys_by_level=keys_by_level,
            dispositions=dispositions,
            occurrences_last_hour=sum(counts_1h),
            tracked_keys=len(timelines),
        )


def _batches(keys: Sequence[str]) -> list[Sequence[str]]:
    return [keys[start : start + SCRIPT_BATCH_KEYS] for start in range(0, len(keys), SCRIPT_BATCH_KEYS)]


def _split_timeline_key(timeline: str) -> tuple[str, str]:
    tenant, _, key = timeline.rpartition(":anomaly:timeline:")
    return tenant, key


def _signature_labels(raw: bytes | str | None) -> tuple[str, str]:
    """(alert name, service) from the signature JSON the store keeps per key; blanks if unreadable."""
    if raw is None:
        return "", ""
    try:
        signature = json.loads(_text(raw))
        return str(signature.get("alert_name") or ""), str(signature.get("service") or "")
    except (ValueError, AttributeError):
        _log.warning("anomaly_signature_unreadable", signature=_text(raw)[:200])
        return "", ""


__all__ = [
    "APPROVAL_WAIT_BUCKETS",
    "NO_ESCALATION",
    "RUN_DURATION_BUCKETS",
    "TOP_ANOMALY_KEYS",
    "ActionOutcomeCount",
    "AnomalyFigures",
    "AnomalyMetricsReader",
    "AnomalySeries",
    "DurationHistogram",
    "FunnelHistory",
    "HistogramSeries",
    "HistoryFigures",
    "HistoryMetricsQueries",
]
