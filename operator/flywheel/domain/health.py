"""Flywheel health: is the loop monitoring → … → learning turning, and where does each Incident stand?

Pure: counts come from the history database, Redis and the watched resources; this module
defines the figures and computes the ones that need rules (minimum samples, NaN, stuck, nodes).

Undefined figures are NaN, never 0 or -1: a success rate of 0 would page someone on a quiet
cluster, and Prometheus compares NaN as false, so NaN-safe alerts simply stay silent.

The six nodes of the flywheel and what their activity counts (over the last hour):

- ``monitoring``: Incidents received;
- ``deduplication``: Incidents folded into an active Incident with the same anomaly (Duplicate);
- ``diagnosis``: anomaly occurrences recorded in the recurrence store (counted, escalation assessed);
- ``reasoning``: Incidents received that got a decision (rules, advisor or consensus);
- ``execution``: Runs that started executing their action (Auto mode; Shadow only dry-runs);
- ``learning``: knowledge entries written for resolved Incidents.

An active Incident stands at one node: ``monitoring`` until Flywheel has looked at it,
``diagnosis`` until it has a decision, ``reasoning`` while it has a decision but no Run (a
Run is being created, or remediation is Off and people must act), ``execution`` once it has
a Run. Resolved and Closed Incidents have reached ``learning``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Final

from flywheel.api.enums import IncidentPhase, RunState
from flywheel.domain.funnel import MAX_OPEN_WAITING_SAMPLES, ObjectSample
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import ObservedRun
from flywheel.errors import InvalidInputError

MINIMUM_EXECUTIONS: Final = 10
SUCCESS_RATE_WINDOW: Final = timedelta(hours=24)
SUCCESS_RATE_FALLBACK_WINDOW: Final = timedelta(days=7)
STUCK_AFTER: Final = timedelta(hours=24)
ALERTNAME_NULL_RATE_WINDOW: Final = timedelta(hours=24)
NODE_ACTIVITY_WINDOW: Final = timedelta(hours=1)
RECENT_ACTIVE_INCIDENTS: Final = 10

ACTIVE_PHASES: Final = frozenset(
    {None, IncidentPhase.INVESTIGATING, IncidentPhase.MITIGATING, IncidentPhase.NOT_REMEDIATED}
)


class FlywheelNode(StrEnum):
    MONITORING = "monitoring"
    DEDUPLICATION = "deduplication"
    DIAGNOSIS = "diagnosis"
    REASONING = "reasoning"
    EXECUTION = "execution"
    LEARNING = "learning"


NODE_ACTIVITY_MEANING: Final[Mapping[FlywheelNode, str]] = {
    FlywheelNode.MONITORING: "Incidents received",
    FlywheelNode.DEDUPLICATION: "Incidents folded into an active Incident with the same anomaly",
    FlywheelNode.DIAGNOSIS: "anomaly occurrences recorded in the recurrence store",
    FlywheelNode.REASONING: "Incidents received that got a decision",
    FlywheelNode.EXECUTION: "Runs that started executing their action (Auto mode)",
    FlywheelNode.LEARNING: "knowledge entries written for resolved Incidents",
}


def share(part: int, whole: int) -> float:
    """``part / whole``; NaN when there is nothing to divide (never a made-up 0)."""
    if part < 0 or whole < 0 or part > whole:
        raise InvalidInputError("share", f"need 0 <= part <= whole, got part={part}, whole={whole}")
    return part / whole if whole else math.nan


def start_of_day(now: datetime) -> datetime:
    """Midnight of ``now``'s day in ``now``'s time zone (UTC in the operator)."""
    if now.tzinfo is None:
        raise InvalidInputError("now", "must be timezone-aware")
    return datetime.combine(now.date(), time.min, tzinfo=now.tzinfo)


# --------------------------------------------------------------------------- success rate


@dataclass(frozen=True, slots=True)
class ExecutionTally:
    """Executions of remediation actions (Shadow dry-runs excluded) over a window, and their successes."""

    executions: int
    successes: int

    def __post_init__(self) -> None:
        if not 0 <= self.successes <= self.executions:
            raise InvalidInputError(
                "execution_tally", f"need 0 <= successes <= executions, got {self.successes}/{self.executions}"
            )


@dataclass(frozen=True, slots=True)
class SuccessRate:
    """The execution success rate and the window it was measured over.

    ``window`` is ``None`` and ``value`` NaN when even the fallback window holds fewer than
    the minimum number of executions.
    """

    value: float
    window: timedelta | None
    executions: int
    successes: int

    @property
    def known(self) -> bool:
        return self.window is not None


def execution_success_rate(
    last_day: ExecutionTally, last_week: ExecutionTally, minimum: int = MINIMUM_EXECUTIONS
) -> SuccessRate:
    """Success rate over 24 h; below ``minimum`` executions over 7 days; still below: NaN.

    A fresh or quiet cluster has too few executions for a rate to mean anything, and a rate
    of 0 from no data would raise a false "remediation is failing" alert.
    """
    if minimum < 1:
        raise InvalidInputError("minimum", f"must be >= 1, got {minimum}")
    if last_week.executions < last_day.executions or last_week.successes < last_day.successes:
        raise InvalidInputError("last_week", "the 7-day tally must include the 24-hour tally")
    for tally, window in ((last_day, SUCCESS_RATE_WINDOW), (last_week, SUCCESS_RATE_FALLBACK_WINDOW)):
        if tally.executions >= minimum:
            return SuccessRate(tally.successes / tally.executions, window, tally.executions, tally.successes)
    return SuccessRate(math.nan, None, last_week.executions, last_week.successes)


# --------------------------------------------------------------------------- watched resources


# The figures read the Incident and Run indexes' own views: ``IncidentView``
# (flywheel.domain.incident) and ``ObservedRun`` (flywheel.domain.run_state).


def incident_node(incident: IncidentView) -> FlywheelNode:
    """Where an Incident stands in the flywheel (see the module docstring)."""
    if incident.phase in (IncidentPhase.RESOLVED, IncidentPhase.CLOSED):
        return FlywheelNode.LEARNING
    if incident.phase is IncidentPhase.DUPLICATE:
        return FlywheelNode.DEDUPLICATION
    if incident.has_run:
        return FlywheelNode.EXECUTION
    if incident.has_decision:
        return FlywheelNode.REASONING
    if incident.phase is None:
        return FlywheelNode.MONITORING
    return FlywheelNode.DIAGNOSIS


def is_stuck(incident: IncidentView, now: datetime) -> bool:
    """Active (Investigating, Mitigating — its Runs may have failed —, NotRemediated) with no progress
    for more than 24 hours: no condition of it changed since (else since its creation)."""
    if not incident.active or incident.phase is None:
        return False
    progress = max(incident.created_at, incident.last_progress or incident.created_at)
    return now - progress > STUCK_AFTER


@dataclass(frozen=True, slots=True)
class ActiveIncident:
    """One line of the current flow: an active Incident and the node it stands at."""

    namespace: str
    name: str
    alert_name: str | None
    phase: IncidentPhase | None
    node: FlywheelNode
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CurrentState:
    """Figures about *now* (not a period), from the watched resources or the history database."""

    runs_by_state: Mapping[RunState, int]
    open_waiting: int
    open_waiting_samples: tuple[ObjectSample, ...]
    incidents_stuck: int
    active_incidents: tuple[ActiveIncident, ...]
    waiting_run_samples: tuple[ObjectSample, ...] = ()
    executing_run_samples: tuple[ObjectSample, ...] = ()
    unresolved_samples: tuple[ObjectSample, ...] = ()

    def __post_init__(self) -> None:
        missing = set(RunState) - set(self.runs_by_state)
        if missing:
            raise InvalidInputError("runs_by_state", f"missing states {sorted(missing)}")


def runs_by_state(states: Iterable[RunState | None]) -> dict[RunState, int]:
    """Count per Run state, every state present (a Run not reconciled yet is Pending)."""
    counts = dict.fromkeys(RunState, 0)
    for state in states:
        counts[state or RunState.PENDING] += 1
    return counts


def recent_active(incidents: Iterable[IncidentView], limit: int = RECENT_ACTIVE_INCIDENTS) -> tuple[ActiveIncident, ...]:
    """The ``limit`` most recently created active Incidents, newest first, with their node."""
    active = sorted(
        (incident for incident in incidents if incident.active),
        key=lambda incident: (incident.created_at, incident.namespace, incident.name),
        reverse=True,
    )
    return tuple(
        ActiveIncident(
            namespace=incident.namespace,
            name=incident.name,
            alert_name=incident.alert_name,
            phase=incident.phase,
            node=incident_node(incident),
            created_at=incident.created_at,
        )
        for incident in active[:limit]
    )


def current_state(incidents: Iterable[IncidentView], runs: Iterable[ObservedRun], now: datetime) -> CurrentState:
    """Current figures from the resources the operator watches.

    Samples are the resources that have waited longest (oldest first): those are the ones a
    person should look at first.
    """
    incident_list = list(incidents)
    run_list = list(runs)
    waiting = sorted(
        (incident for incident in incident_list if incident.waiting_without_run),
        key=lambda incident: (incident.created_at, incident.namespace, incident.name),
    )
    runs_waiting = sorted(
        (run for run in run_list if run.waiting_to_execute),
        key=lambda run: (run.created_at, run.namespace, run.name),
    )
    executing = sorted(
        (run for run in run_list if run.executing),
        key=lambda run: (run.created_at, run.namespace, run.name),
    )
    succeeded = {run.uid for run in run_list if run.state is RunState.SUCCEEDED}
    unresolved = sorted(
        (incident for incident in incident_list if incident.active and incident.run_uid in succeeded),
        key=lambda incident: (incident.created_at, incident.namespace, incident.name),
    )
    return CurrentState(
        runs_by_state=runs_by_state(run.state for run in run_list),
        open_waiting=len(waiting),
        open_waiting_samples=tuple(incident.sample() for incident in waiting[:MAX_OPEN_WAITING_SAMPLES]),
        incidents_stuck=sum(1 for incident in incident_list if is_stuck(incident, now)),
        active_incidents=recent_active(incident_list),
        waiting_run_samples=tuple(run.sample() for run in runs_waiting[:MAX_OPEN_WAITING_SAMPLES]),
        executing_run_samples=tuple(run.sample() for run in executing[:MAX_OPEN_WAITING_SAMPLES]),
        unresolved_samples=tuple(incident.sample() for incident in unresolved[:MAX_OPEN_WAITING_SAMPLES]),
    )


# --------------------------------------------------------------------------- node activity


@dataclass(frozen=True, slots=True)
class NodeActivity:
    """Activity of one flywheel node over the last hour; ``count`` is None when its store is down."""

    node: FlywheelNode
    count: int | None

    @property
    def status(self) -> str:
        if self.count is None:
            return "unknown"
        return "active" if self.count > 0 else "idle"

    @property
    def meaning(self) -> str:
        return NODE_ACTIVITY_MEANING[self.node]


def node_activity(counts: Mapping[FlywheelNode, int | None]) -> tuple[NodeActivity, ...]:
    """Activity of all six nodes in flywheel order; a node missing from ``counts`` is unknown."""
    for node, count in counts.items():
        if count is not None and count < 0:
            raise InvalidInputError("node_activity", f"{node.value}: count must be >= 0, got {count}")
    return tuple(NodeActivity(node, counts.get(node)) for node in FlywheelNode)


# --------------------------------------------------------------------------- all figures


@dataclass(frozen=True, slots=True)
class HistoryHealthCounts:
    """The health counts the history database provides (windows as documented per field)."""

    last_day: ExecutionTally  # repair executions finished in the last 24 h (Shadow excluded)
    last_week: ExecutionTally  # … in the last 7 days
    knowledge_entries: int  # all knowledge entries
    knowledge_without_root_cause: int  # … whose Incident was resolved without a root cause
    incidents_last_day: int  # Incidents created in the last 24 h
    incidents_without_alertname: int  # … of which had no alertName
    processed_today: int  # Incidents received since midnight UTC

    def __post_init__(self) -> None:
        if not 0 <= self.knowledge_without_root_cause <= self.knowledge_entries:
            raise InvalidInputError("knowledge_without_root_cause", "must be between 0 and knowledge_entries")
        if not 0 <= self.incidents_without_alertname <= self.incidents_last_day:
            raise InvalidInputError("incidents_without_alertname", "must be between 0 and incidents_last_day")
        if self.processed_today < 0:
            raise InvalidInputError("processed_today", "must be >= 0")


@dataclass(frozen=True, slots=True)
class FlywheelHealth:
    """The flywheel-health figures of one snapshot."""

    playbook_count: int
    success_rate: SuccessRate
    knowledge_entries: int
    resolved_without_root_cause_share: float
    alertname_null_rate: float
    processed_today: int


def flywheel_health(playbook_count: int, counts: HistoryHealthCounts) -> FlywheelHealth:
    if playbook_count < 0:
        raise InvalidInputError("playbook_count", f"must be >= 0, got {playbook_count}")
    return FlywheelHealth(
        playbook_count=playbook_count,
        success_rate=execution_success_rate(counts.last_day, counts.last_week),
        knowledge_entries=counts.knowledge_entries,
        resolved_without_root_cause_share=share(counts.knowledge_without_root_cause, counts.knowledge_entries),
        alertname_null_rate=share(counts.incidents_without_alertname, counts.incidents_last_day),
        processed_today=counts.processed_today,
    )


__all__ = [
    "ACTIVE_PHASES",
    "ALERTNAME_NULL_RATE_WINDOW",
    "MINIMUM_EXECUTIONS",
    "NODE_ACTIVITY_MEANING",
    "NODE_ACTIVITY_WINDOW",
    "RECENT_ACTIVE_INCIDENTS",
    "STUCK_AFTER",
    "SUCCESS_RATE_FALLBACK_WINDOW",
    "SUCCESS_RATE_WINDOW",
    "ActiveIncident",
    "CurrentState",
    "ExecutionTally",
    "FlywheelHealth",
    "FlywheelNode",
    "HistoryHealthCounts",
    "NodeActivity",
    "SuccessRate",
    "current_state",
    "execution_success_rate",
    "flywheel_health",
    "incident_node",
    "is_stuck",
    "node_activity",
    "recent_active",
    "runs_by_state",
    "share",
    "start_of_day",
]
