"""Exactly-once under crashes: a Hypothesis state machine kills the Run controller at every await.

The Run controller runs over the in-memory stand-ins of ``test_run_controller`` (the workload
keeps its stamps as the real store does on the object). Every store call a pass awaits is a
place where the operator can die: a chosen call raises :class:`Crash` *before* it happens (the
request never left) or *after* it (it took effect, the answer was lost), and the status write
that ends the pass is one more such place. After a crash the pass's status is lost, and a fresh
controller over the same stores takes over (a restart: nothing survives in memory but what the
stores hold). Between passes the rollout progresses or stalls, Redis goes down and comes back,
time passes. For every action type (RolloutRestart, Scale, RolloutUndo):

- at most one application per attempt, and never more applications than attempts started;
- a repair attempt is counted once per attempt id; the history gets no attempt the Run did not
  start;
- once the crashes stop, every Run ends in a terminal state with its outcome recorded.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from flywheel.api.enums import ActionType
from flywheel.controllers.run import RunController, RunObject, RunStores
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import TERMINAL_STATES
from flywheel.settings import FlywheelSettings
from flywheel.wiring import run_policy
from tests.unit.test_run_controller import (
    DONE,
    IN_PROGRESS,
    T0,
    Attempts,
    Incidents,
    Repairs,
    Workloads,
    incident_body,
    run_body,
)

pytestmark = pytest.mark.unit

ACTIONS = {
    ActionType.ROLLOUT_RESTART: {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "checkout"}},
    ActionType.SCALE: {"type": "Scale", "target": {"kind": "Deployment", "name": "checkout"}, "params": {"replicas": 3}},
    ActionType.ROLLOUT_UNDO: {"type": "RolloutUndo", "target": {"kind": "Deployment", "name": "checkout"}},
}


class Crash(BaseException):
    """The operator process dies here (a BaseException: no ``except Exception`` in the code catches it)."""


class Injector:
    """Counts the awaited store calls of a pass and crashes at the chosen one."""

    def __init__(self) -> None:
        self.calls = 0
        self.crash_at: int | None = None
        self.after = False

    def arm(self, crash_at: int | None, after: bool) -> None:
        self.calls, self.crash_at, self.after = 0, crash_at, after

    async def call(self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        here = self.calls == self.crash_at
        if here and not self.after:
            raise Crash(f"killed before call {self.calls} ({method.__name__})")
        result = await method(*args, **kwargs)
        if here:
            raise Crash(f"killed after call {self.calls} ({method.__name__}) took effect")
        return result


class Crashing:
    """A store whose every coroutine method is a place to crash (sync methods pass through)."""

    def __init__(self, store: Any, injector: Injector) -> None:
        self._store = store
        self._injector = injector

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not asyncio.iscoroutinefunction(attribute):
            return attribute

        async def crashing(*args: Any, **kwargs: Any) -> Any:
            return await self._injector.call(attribute, *args, **kwargs)

        return crashing


class RunUnderCrashes(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.injector = Injector()
        self.workloads = Workloads()
        self.incidents = Incidents(incident_body())
        self.repairs = Repairs()
        self.attempts = Attempts()
        self.body: dict[str, Any] = run_body()
        self.now = T0
        self.crashes = 0
        self.controller = self._start()

    def _start(self) -> RunController:
        """A fresh operator over the same stores (what a restart keeps)."""
        return RunController(
            run_policy(FlywheelSettings()),
            Crashing(self.repairs, self.injector),
            RunStores(
                workloads=Crashing(self.workloads, self.injector),
                incidents=Crashing(self.incidents, self.injector),
                attempts=self.attempts,
            ),
        )

    def teardown(self) -> None:
        self.loop.close()

    @initialize(action=st.sampled_from(list(ACTIONS)), max_attempts=st.integers(min_value=1, max_value=3))
    def choose_action(self, action: ActionType, max_attempts: int) -> None:
        self.action = action
        self.body = run_body(action=ACTIONS[action], maxAttempts=max_attempts)

    @property
    def state(self) -> str | None:
        return self.body["status"].get("state")

    def _pass(self, crash_at: int | None = None, after: bool = False, crash_on_write: bool = False) -> None:
        self.injector.arm(crash_at, after)
        run = RunObject.from_body(self.body)
        view = IncidentView.from_body(self.incidents.body) if self.incidents.body is not None else None
        try:
            outcome = self.loop.run_until_complete(self.controller.reconcile(run, view, [], now=self.now))
            if crash_on_write:
                raise Crash("killed before the status write")
        except Crash:
            self.crashes += 1
            self.controller = self._start()
            return
        for key, value in outcome.status_patch(run.status).items():
            if value is None:
                self.body["status"].pop(key, None)
            else:
                self.body["status"][key] = value

    @rule(
        crash_at=st.integers(min_value=1, max_value=8),
        after=st.booleans(),
        seconds=st.sampled_from([0, 1, 2, 30]),
    )
    def crash_during_a_pass(self, crash_at: int, after: bool, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        self._pass(crash_at, after)

    @rule(seconds=st.sampled_from([0, 1, 2, 30]))
    def crash_before_the_status_write(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        self._pass(crash_on_write=True)

    @rule(seconds=st.sampled_from([0, 1, 2, 30, 200]))
    def a_pass(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        self._pass()

    @rule(done=st.booleans())
    def the_rollout(self, done: bool) -> None:
        self.workloads.facts = DONE if done else IN_PROGRESS

    @rule(down=st.booleans())
    def redis(self, down: bool) -> None:
        self.repairs.down = down

    @precondition(lambda self: self.state == "Running")
    @rule()
    def lose_the_write_of_an_attempt(self) -> None:
        """As if the operator died after acting but before storing Verifying (the e2e's rewind)."""
        self._pass(crash_on_write=True)

    @invariant()
    def at_most_one_application_per_attempt(self) -> None:
        per_attempt = Counter((stamp.run_uid, stamp.attempt) for _, stamp, _ in self.workloads.applied)
        assert all(count == 1 for count in per_attempt.values()), per_attempt
        started = max(self.body["status"].get("attempt") or 0, max((a for _, a in per_attempt), default=0))
        assert len(self.workloads.applied) <= started <= int(self.body["spec"]["maxAttempts"])
        assert all(action.type is self.action for action, _, _ in self.workloads.applied)

    @invariant()
    def each_attempt_counted_once(self) -> None:
        attempts = [attempt_id for attempt_id in self.repairs.attempts]
        assert len(attempts) == len(set(attempts)) <= int(self.body["spec"]["maxAttempts"])
        applied = {stamp.attempt for _, stamp, _ in self.workloads.applied}
        recorded = {record.attempt for record in self.attempts.records}
        assert recorded <= applied | {self.body["status"].get("attempt") or 0}

    def check_ends_terminal(self) -> None:
        """Once the crashes stop (and Redis is back), the Run finishes and records its outcome."""
        self.repairs.down = False
        for _ in range(60):
            self.now += timedelta(seconds=30)
            self._pass()
            conditions = {c["type"]: c["status"] for c in self.body["status"].get("conditions") or []}
            if self.state in {state.value for state in TERMINAL_STATES} and conditions.get("OutcomeRecorded") == "True":
                return
        raise AssertionError(f"the Run never ended: {self.body['status']}")


class RunUnderCrashesEndingTerminal(RunUnderCrashes):
    def teardown(self) -> None:
        try:
            self.check_ends_terminal()
            self.at_most_one_application_per_attempt()
            self.each_attempt_counted_once()
        finally:
            super().teardown()


RunUnderCrashesEndingTerminal.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_the_run_controller_under_crashes = RunUnderCrashesEndingTerminal.TestCase


def _machine(action: ActionType) -> RunUnderCrashes:
    machine = RunUnderCrashes()
    machine.action = action
    machine.body = run_body(action=ACTIONS[action], maxAttempts=2)
    return machine


@pytest.mark.parametrize("action", list(ACTIONS))
def test_a_crash_at_every_await_of_every_pass_applies_once_and_ends_terminal(action: ActionType) -> None:
    """Exhaustively, besides the random walks: pass k of a clean Run, killed at each of its awaits."""
    clean = _machine(action)
    calls_per_pass = []
    while clean.state not in {state.value for state in TERMINAL_STATES} or clean.crashes:
        clean.now += timedelta(seconds=2)
        clean._pass()
        calls_per_pass.append(clean.injector.calls)
        assert len(calls_per_pass) < 20
    clean.teardown()
    assert sum(calls_per_pass) >= 3, calls_per_pass
    killed = 0
    for crashing_pass, calls in enumerate(calls_per_pass):
        for call in range(1, calls + 2):  # the last one: the status write
            for after in (False, True):
                machine = _machine(action)
                try:
                    for _ in range(crashing_pass):
                        machine.now += timedelta(seconds=2)
                        machine._pass()
                    machine.now += timedelta(seconds=2)
                    if call <= calls:
                        machine._pass(call, after)
                    else:
                        machine._pass(crash_on_write=True)
                    assert machine.crashes == 1
                    killed += 1
                    machine.check_ends_terminal()
                    machine.at_most_one_application_per_attempt()
                    machine.each_attempt_counted_once()
                    assert machine.body["status"]["state"] == "Succeeded", machine.body["status"]
                    assert len(machine.workloads.applied) == 1
                finally:
                    machine.teardown()
    assert killed == 2 * (sum(calls_per_pass) + len(calls_per_pass))
