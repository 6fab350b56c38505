"""An approval is no way around the safety limits (issue 17, item 4).

An approved Run starts only within the concurrency limits; the circuit breaker holds it too,
unless the breaker is what sent it to approval. A held Run waits in WaitingApproval with
condition Throttled, and starts once a slot frees.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from flywheel.api.common import ObjectRef
from flywheel.api.enums import RunMode, RunState, TargetKind
from flywheel.controllers.approval import GateRun, GateState, GateVerdict
from flywheel.controllers.run import RunController, RunStores
from flywheel.domain.run_state import ObservedRun
from flywheel.settings import FlywheelSettings
from flywheel.wiring import run_policy
from tests.unit.test_run_controller import NAMESPACE, T0, Harness, condition, run_body

pytestmark = pytest.mark.unit


class Gate:
    """The approval gate as the Run controller sees it: undecided until ``approve()``."""

    def __init__(self) -> None:
        self.approved = False
        self.reviews = 0

    async def review(self, run: GateRun, indexed: Any, now: Any) -> GateVerdict:
        self.reviews += 1
        ref = ObjectRef(name=run.name, uid="approval-uid")
        if not self.approved:
            return GateVerdict(GateState.WAITING, ref, "waiting for a decision")
        return GateVerdict(GateState.APPROVED, ref, "approved by alice", decider="alice", token_id=f"token-{self.reviews}")

    async def withdraw(self, run: GateRun, why: str, now: Any) -> None:
        return None

    async def authorise(self, run: GateRun, now: Any) -> None:
        return None


def gated(body: dict[str, Any] | None = None, **settings: Any) -> tuple[Harness, Gate]:
    h = Harness(body, **settings)
    gate = Gate()
    h.controller = RunController(
        run_policy(FlywheelSettings(**settings)),
        h.repairs,
        RunStores(workloads=h.workloads, incidents=h.incidents, attempts=h.attempts, approvals=gate),  # type: ignore[arg-type]
    )
    return h, gate


def peer(name: str, state: RunState, started_minutes_ago: float | None, target: str = "checkout") -> ObservedRun:
    started = T0 - timedelta(minutes=started_minutes_ago) if started_minutes_ago is not None else None
    return ObservedRun(
        NAMESPACE, name, f"uid-{name}", T0 - timedelta(minutes=10), TargetKind.DEPLOYMENT, target,
        RunMode.AUTO, False, state, started,
    )


async def test_an_approved_run_waits_for_a_slot_on_its_target() -> None:
    h, gate = gated(run_body(requiresApproval=True), run_max_concurrent_per_target=1)
    assert (await h.step()).state is RunState.WAITING_APPROVAL
    h.peers = [peer("busy", RunState.VERIFYING, 1)]
    gate.approved = True

    status = await h.step(1)
    assert status.state is RunState.WAITING_APPROVAL, "approved, but the target already has a Run executing"
    assert condition(status, "Throttled") == ("True", "TargetLimitReached")
    assert status.approval_token_id is None, "no token is kept for a Run that does not start"
    assert h.events().count("Throttled") == 1
    await h.step(2)
    assert h.events().count("Throttled") == 1, "announced once while it waits"

    h.peers = [peer("busy", RunState.SUCCEEDED, 1)]
    status = await h.step(2)
    assert status.state is RunState.RUNNING
    assert status.approval_token_id is not None
    assert condition(status, "Throttled") == ("False", "Admitted")


async def test_an_approved_run_waits_for_a_slot_in_its_namespace() -> None:
    h, gate = gated(run_body(requiresApproval=True), run_max_concurrent_per_namespace=1)
    await h.step()
    h.peers = [peer("elsewhere", RunState.RUNNING, 1, target="payments")]
    gate.approved = True
    status = await h.step(1)
    assert (status.state, condition(status, "Throttled")) == (
        RunState.WAITING_APPROVAL, ("True", "NamespaceLimitReached")
    )


async def test_an_open_breaker_holds_a_run_approved_for_its_risk() -> None:
    h, gate = gated(run_body(requiresApproval=True), circuit_breaker_max_remediations=1)
    await h.step()
    h.peers = [peer("earlier", RunState.SUCCEEDED, 4)]
    gate.approved = True
    status = await h.step(1)
    assert status.state is RunState.WAITING_APPROVAL, "the approver approved the risk, not a breaker opened since"
    assert condition(status, "Throttled") == ("True", "CircuitBreakerOpen")
    assert "Throttled" in h.events()

    # The window passes: the remediation four minutes ago leaves it (before the Run's own
    # approval deadline, an hour after it started waiting).
    status = await h.step(3400)
    assert status.state is RunState.RUNNING


async def test_a_run_sent_to_approval_by_the_breaker_starts_once_approved() -> None:
    h, gate = gated(circuit_breaker_max_remediations=1)
    h.peers = [peer("earlier", RunState.SUCCEEDED, 4)]
    status = await h.step()
    assert condition(status, "AwaitingApproval") == ("True", "CircuitBreakerOpen")
    status = await h.step(1)
    assert condition(status, "AwaitingApproval") == ("True", "CircuitBreakerOpen"), "the reason is kept"
    gate.approved = True
    status = await h.step(1)
    assert status.state is RunState.RUNNING, "the approval is the person the breaker asked for"


async def test_the_breakers_consent_leaves_the_concurrency_limits() -> None:
    h, gate = gated(circuit_breaker_max_remediations=1, run_max_concurrent_per_target=1)
    h.peers = [peer("earlier", RunState.SUCCEEDED, 4)]
    await h.step()
    h.peers.append(peer("busy", RunState.RUNNING, 0.5))
    gate.approved = True
    status = await h.step(1)
    assert (status.state, condition(status, "Throttled")) == (
        RunState.WAITING_APPROVAL, ("True", "TargetLimitReached")
    )
