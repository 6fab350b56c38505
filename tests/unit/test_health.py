"""Flywheel health figures (pure).

Scenario matrix:
- execution success rate: 24 h with ≥ 10 executions; 7 days when 24 h has 9; NaN when 7 days
  has 9 (and with none at all) — never 0 or -1; tallies that contradict each other refused;
- shares (resolved without root cause, alertname null rate): NaN on an empty population;
- stuck: Investigating for exactly 24 h is not stuck, a second more is; other phases never;
- nodes: where each kind of Incident stands; activity unknown when its store is down;
- current state from watched resources: Runs by state (unreconciled = Pending), open
  Incidents waiting without a Run (duplicates, resolved and remediated ones excluded) with
  the 5 oldest as samples, Runs waiting to execute (Shadow excluded), verified-but-open
  Incidents, and the 10 most recent active Incidents, newest first.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from flywheel.api.enums import IncidentPhase, RunMode, RunState, TargetKind
from flywheel.domain.health import (
    SUCCESS_RATE_FALLBACK_WINDOW,
    SUCCESS_RATE_WINDOW,
    ExecutionTally,
    FlywheelNode,
    HistoryHealthCounts,
    current_state,
    execution_success_rate,
    flywheel_health,
    incident_node,
    is_stuck,
    node_activity,
    share,
    start_of_day,
)
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import ObservedRun
from flywheel.errors import InvalidInputError

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)


def tally(executions: int, successes: int) -> ExecutionTally:
    return ExecutionTally(executions=executions, successes=successes)


def watched(name: str, phase: IncidentPhase | None, *, age: timedelta = timedelta(minutes=1), **fields: object) -> IncidentView:
    return IncidentView(namespace="shop", name=name, uid=f"uid-{name}", created_at=NOW - age, phase=phase,
                        **fields)  # type: ignore[arg-type]


def watched_run(name: str, state: RunState | None, *, age: timedelta = timedelta(minutes=1),
                mode: RunMode = RunMode.AUTO) -> ObservedRun:
    return ObservedRun(namespace="shop", name=name, uid=f"uid-{name}", created_at=NOW - age,
                       target_kind=TargetKind.DEPLOYMENT, target_name="checkout", mode=mode, requires_approval=False,
                       state=state, started_at=None)


# --------------------------------------------------------------------------- success rate


class TestExecutionSuccessRate:
    def test_uses_24_hours_from_ten_executions(self) -> None:
        rate = execution_success_rate(tally(10, 7), tally(40, 10))
        assert rate.value == pytest.approx(0.7)
        assert rate.window == SUCCESS_RATE_WINDOW and rate.executions == 10

    def test_falls_back_to_7_days_below_ten_executions_in_24_hours(self) -> None:
        rate = execution_success_rate(tally(9, 3), tally(10, 4))
        assert rate.value == pytest.approx(0.4)
        assert rate.window == SUCCESS_RATE_FALLBACK_WINDOW

    def test_is_nan_when_7_days_hold_fewer_than_ten(self) -> None:
        rate = execution_success_rate(tally(9, 0), tally(9, 0))
        assert math.isnan(rate.value)
        assert rate.window is None and not rate.known
        assert rate.executions == 9

    def test_is_nan_not_zero_without_any_execution(self) -> None:
        rate = execution_success_rate(tally(0, 0), tally(0, 0))
        assert math.isnan(rate.value)

    def test_zero_successes_over_enough_executions_is_a_real_zero(self) -> None:
        assert execution_success_rate(tally(10, 0), tally(10, 0)).value == 0.0

    def test_a_24_hour_tally_larger_than_the_7_day_one_is_refused(self) -> None:
        with pytest.raises(InvalidInputError):
            execution_success_rate(tally(10, 5), tally(9, 5))

    def test_more_successes_than_executions_are_refused(self) -> None:
        with pytest.raises(InvalidInputError):
            tally(1, 2)


def test_share_is_nan_on_an_empty_population() -> None:
    assert math.isnan(share(0, 0))
    assert share(1, 4) == 0.25
    with pytest.raises(InvalidInputError):
        share(5, 4)


def test_health_figures_from_history_counts() -> None:
    counts = HistoryHealthCounts(
        last_day=tally(3, 3), last_week=tally(12, 6), knowledge_entries=8, knowledge_without_root_cause=2,
        incidents_last_day=0, incidents_without_alertname=0, processed_today=5,
    )
    health = flywheel_health(5, counts)
    assert health.playbook_count == 5
    assert health.success_rate.value == 0.5 and health.success_rate.window == SUCCESS_RATE_FALLBACK_WINDOW
    assert health.resolved_without_root_cause_share == 0.25
    assert math.isnan(health.alertname_null_rate)  # no Incident in 24 h: unknown, not 0
    assert health.processed_today == 5


def test_inconsistent_history_counts_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        HistoryHealthCounts(last_day=tally(0, 0), last_week=tally(0, 0), knowledge_entries=1,
                            knowledge_without_root_cause=2, incidents_last_day=0, incidents_without_alertname=0,
                            processed_today=0)


# --------------------------------------------------------------------------- stuck and nodes


class TestStuck:
    def test_investigating_for_exactly_24_hours_is_not_stuck(self) -> None:
        assert not is_stuck(watched("a", IncidentPhase.INVESTIGATING, age=timedelta(hours=24)), NOW)

    def test_investigating_a_second_longer_is_stuck(self) -> None:
        assert is_stuck(watched("a", IncidentPhase.INVESTIGATING, age=timedelta(hours=24, seconds=1)), NOW)

    # Mitigating and NotRemediated count too (issue #16): a Mitigating Incident whose Runs failed
    # makes no progress either; the clock is its last condition change, not its creation.
    @pytest.mark.parametrize("phase", [IncidentPhase.MITIGATING, IncidentPhase.NOT_REMEDIATED])
    def test_active_phases_without_progress_are_stuck(self, phase: IncidentPhase) -> None:
        assert is_stuck(watched("a", phase, age=timedelta(days=3)), NOW)

    @pytest.mark.parametrize("phase", [IncidentPhase.INVESTIGATING, IncidentPhase.MITIGATING])
    def test_recent_progress_is_not_stuck(self, phase: IncidentPhase) -> None:
        incident = dataclasses.replace(
            watched("a", phase, age=timedelta(days=3)), last_progress=NOW - timedelta(hours=23)
        )
        assert not is_stuck(incident, NOW)

    @pytest.mark.parametrize("phase", [None, IncidentPhase.RESOLVED, IncidentPhase.DUPLICATE, IncidentPhase.CLOSED])
    def test_other_phases_are_never_stuck(self, phase: IncidentPhase | None) -> None:
        assert not is_stuck(watched("a", phase, age=timedelta(days=3)), NOW)


@pytest.mark.parametrize(
    ("incident", "node"),
    [
        (watched("new", None), FlywheelNode.MONITORING),
        (watched("diag", IncidentPhase.INVESTIGATING), FlywheelNode.DIAGNOSIS),
        (watched("off", IncidentPhase.INVESTIGATING, has_decision=True), FlywheelNode.REASONING),
        (watched("run", IncidentPhase.MITIGATING, has_decision=True, run_uid="r"), FlywheelNode.EXECUTION),
        (watched("dup", IncidentPhase.DUPLICATE), FlywheelNode.DEDUPLICATION),
        (watched("done", IncidentPhase.RESOLVED, has_decision=True, run_uid="r"), FlywheelNode.LEARNING),
        (watched("closed", IncidentPhase.CLOSED), FlywheelNode.LEARNING),
    ],
)
def test_incident_node(incident: IncidentView, node: FlywheelNode) -> None:
    assert incident_node(incident) is node


def test_node_activity_in_flywheel_order_with_unknown_nodes() -> None:
    nodes = node_activity({FlywheelNode.MONITORING: 3, FlywheelNode.EXECUTION: 0})
    assert [node.node for node in nodes] == list(FlywheelNode)
    status = {node.node: node.status for node in nodes}
    assert status[FlywheelNode.MONITORING] == "active"
    assert status[FlywheelNode.EXECUTION] == "idle"
    assert status[FlywheelNode.LEARNING] == "unknown"
    assert all(node.meaning for node in nodes)
    with pytest.raises(InvalidInputError):
        node_activity({FlywheelNode.LEARNING: -1})


def test_start_of_day_keeps_the_time_zone() -> None:
    assert start_of_day(NOW) == datetime(2026, 3, 14, tzinfo=UTC)
    tokyo = timezone(timedelta(hours=9))
    assert start_of_day(NOW.astimezone(tokyo)) == datetime(2026, 3, 15, tzinfo=tokyo)
    with pytest.raises(InvalidInputError):
        start_of_day(datetime(2026, 1, 1))


# --------------------------------------------------------------------------- current state


def test_runs_by_state_lists_every_state_and_counts_unreconciled_as_pending() -> None:
    state = current_state([], [watched_run("a", None), watched_run("b", RunState.PENDING),
                               watched_run("c", RunState.SUCCEEDED)], NOW)
    assert state.runs_by_state[RunState.PENDING] == 2
    assert state.runs_by_state[RunState.SUCCEEDED] == 1
    assert set(state.runs_by_state) == set(RunState)
    assert sum(state.runs_by_state.values()) == 3


def test_open_waiting_counts_active_incidents_without_a_run_and_samples_the_oldest_five() -> None:
    waiting = [watched(f"w{n}", IncidentPhase.INVESTIGATING, age=timedelta(minutes=n)) for n in range(1, 8)]
    others = [
        watched("new", None, age=timedelta(seconds=5)),  # not reconciled yet: waiting too
        watched("dup", IncidentPhase.DUPLICATE, age=timedelta(hours=1)),
        watched("remediating", IncidentPhase.MITIGATING, run_uid="r", age=timedelta(hours=2)),
        watched("done", IncidentPhase.RESOLVED, age=timedelta(hours=3)),
    ]
    state = current_state([*waiting, *others], [], NOW)
    assert state.open_waiting == 8
    assert [sample.name for sample in state.open_waiting_samples] == ["w7", "w6", "w5", "w4", "w3"]
    assert state.open_waiting_samples[0].kind == "Incident" and state.open_waiting_samples[0].uid == "uid-w7"


def test_runs_waiting_to_execute_exclude_shadow_and_started_runs() -> None:
    runs = [
        watched_run("old", RunState.WAITING_APPROVAL, age=timedelta(minutes=9)),
        watched_run("new", None, age=timedelta(minutes=1)),
        watched_run("shadow", RunState.PENDING, mode=RunMode.SHADOW, age=timedelta(minutes=20)),
        watched_run("running", RunState.RUNNING, age=timedelta(minutes=30)),
    ]
    state = current_state([], runs, NOW)
    assert [sample.name for sample in state.waiting_run_samples] == ["old", "new"]
    assert [sample.name for sample in state.executing_run_samples] == ["running"]


def test_verified_but_open_incidents_are_samples_for_resolve_stalls() -> None:
    incidents = [
        watched("open", IncidentPhase.MITIGATING, run_uid="uid-ok"),
        watched("closed", IncidentPhase.RESOLVED, run_uid="uid-ok2"),
        watched("failing", IncidentPhase.MITIGATING, run_uid="uid-bad"),
    ]
    runs = [watched_run("ok", RunState.SUCCEEDED), watched_run("ok2", RunState.SUCCEEDED),
            watched_run("bad", RunState.FAILED)]
    assert [sample.name for sample in current_state(incidents, runs, NOW).unresolved_samples] == ["open"]


def test_recent_active_incidents_are_the_ten_newest_with_their_node() -> None:
    incidents = [watched(f"i{n:02d}", IncidentPhase.INVESTIGATING, age=timedelta(minutes=n)) for n in range(15)]
    incidents.append(watched("resolved", IncidentPhase.RESOLVED, age=timedelta(seconds=1)))
    incidents.append(watched("stuck", IncidentPhase.INVESTIGATING, age=timedelta(days=2)))
    state = current_state(incidents, [], NOW)
    assert [item.name for item in state.active_incidents] == [f"i{n:02d}" for n in range(10)]
    assert {item.node for item in state.active_incidents} == {FlywheelNode.DIAGNOSIS}
    assert state.incidents_stuck == 1
