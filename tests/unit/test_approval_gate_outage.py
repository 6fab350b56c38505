"""An approved Run whose gate cannot reach Redis waits, says why and tries again soon.

The approval's token is kept in Redis before anything says Approved; when Redis refuses
(down, or a read-only replica during a failover) the Run neither acts nor fails: it stays
WaitingApproval, its AwaitingApproval condition names the outage, one Warning Event says so,
and the pass asks to be repeated shortly (the Approval watch would not bring it back).
"""

from __future__ import annotations

from typing import Any

import pytest

from flywheel.api.common import ObjectRef
from flywheel.api.enums import RunState
from flywheel.controllers.approval import GateRun, GateState, GateVerdict
from flywheel.controllers.run import RunController, RunStores
from flywheel.controllers.run.approval_wait import GATE_RETRY_SECONDS
from flywheel.errors import RedisUnavailableError
from flywheel.settings import FlywheelSettings
from flywheel.wiring import run_policy
from tests.unit.test_run_controller import Harness, condition, run_body

pytestmark = pytest.mark.unit

READ_ONLY = "Redis unavailable while keeping an approval token: the node is a read-only replica"


class FailingOverGate:
    """Approved by alice; keeping the token fails while ``down``."""

    def __init__(self) -> None:
        self.approved = False
        self.down = False

    async def review(self, run: GateRun, indexed: Any, now: Any) -> GateVerdict:
        ref = ObjectRef(name=run.name, uid="approval-uid")
        if not self.approved:
            return GateVerdict(GateState.WAITING, ref, "waiting for a decision")
        if self.down:
            raise RedisUnavailableError(READ_ONLY)
        return GateVerdict(GateState.APPROVED, ref, "approved by alice", decider="alice", token_id="token-1")

    async def withdraw(self, run: GateRun, why: str, now: Any) -> None:
        return None

    async def authorise(self, run: GateRun, now: Any) -> None:
        return None


def gated() -> tuple[Harness, FailingOverGate]:
    h = Harness(run_body(requiresApproval=True))
    gate = FailingOverGate()
    h.controller = RunController(
        run_policy(FlywheelSettings()),
        h.repairs,
        RunStores(workloads=h.workloads, incidents=h.incidents, attempts=h.attempts, approvals=gate),  # type: ignore[arg-type]
    )
    return h, gate


async def test_an_approved_run_waits_out_its_gate_store_and_then_starts() -> None:
    h, gate = gated()
    assert (await h.step()).state is RunState.WAITING_APPROVAL
    gate.approved, gate.down = True, True

    status = await h.step(1)
    assert status.state is RunState.WAITING_APPROVAL, "no token kept: nothing may act"
    assert status.approval_token_id is None
    waiting = next(c for c in status.conditions if c.type == "AwaitingApproval")
    assert (waiting.status.value, waiting.reason) == ("True", "ApprovalRequired"), "the reason it waits is kept"
    assert "read-only replica" in waiting.message and "retrying" in waiting.message
    assert h.outcomes[-1].requeue_after == GATE_RETRY_SECONDS
    await h.step(5)
    assert h.events().count("ApprovalGateUnavailable") == 1, "said once while the outage lasts"
    assert h.workloads.applied == [], "the workload is untouched"

    gate.down = False
    status = await h.step(5)
    assert status.state is RunState.RUNNING
    assert status.approval_token_id == "token-1"
    assert condition(status, "AwaitingApproval") == ("False", "Approved"), "no longer waiting once it runs"
