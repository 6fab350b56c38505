"""A Redis failover while a Run waits for its approval, on the real control plane.

The operator's Redis is demoted into a read-only replica of another Redis (``REPLICAOF``, as
a Sentinel failover does to the old primary) between the Approval's creation and the
approver's decision, so the first write the Run needs — spending the approval token id
(``SET NX``) — is refused with ``READONLY``.

Scenario matrix:
- demoted: the approved Run stays Running with ``Succeeded=Unknown`` (ActionRetrying) naming
  the read-only replica, the workload untouched, and no pass crashes (no traceback);
- promoted back: the same Run spends its token, restarts the workload exactly once, and
  succeeds.
"""

from __future__ import annotations

import pytest
from pytest_redis.executor import RedisExecutor

from tests.conftest import OperatorFactory
from tests.e2e.test_approvals import (
    APPROVER,
    APPROVERS,
    FINAL,
    decide,
    restart_count,
    start_with_webhooks,
    wait_for_webhooks,
    waiting_run,
)
from tests.e2e.test_runs import events_for, run_status, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.redis_failover import Failover
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e


def test_an_approved_run_waits_out_a_redis_failover_then_acts_once(
    test_cluster: TestCluster,
    namespace: str,
    own_redis: RedisExecutor,
    redis_failover: Failover,
    start_operator: OperatorFactory,
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    redis_url = f"redis://127.0.0.1:{own_redis.port}/0"
    operator = start_with_webhooks(start_operator, redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)
    waiting_run(test_cluster, namespace, "checkout-oom", "checkout")

    redis_failover.demote()
    decide(test_cluster, namespace, "checkout-oom-1", "Approve", "known OOM, restart is safe", APPROVER, APPROVERS)

    def held() -> dict[str, object] | None:
        status = run_status(test_cluster, namespace, "checkout-oom-1")
        waiting = [c for c in status.get("conditions") or [] if c["type"] == "AwaitingApproval"]
        if waiting and "read-only replica" in waiting[0]["message"]:
            return status
        return None

    # The approval's token cannot be kept on a read-only Redis: the Run keeps waiting and says why.
    status = wait_for(held, timeout=30, what="the approved Run held while Redis is read-only")
    assert status["state"] == "WaitingApproval", status
    assert not status.get("approvalTokenId"), status
    approval = test_cluster.kubectl_json("get", "approval", "checkout-oom-1", "-n", namespace)
    assert (approval.get("status") or {}).get("phase") != "Approved", "no Approved phase without a kept token"
    assert restart_count(test_cluster, namespace, "checkout") == 1, "nothing happens without a kept token"
    warnings = [e for e in events_for(test_cluster, namespace, "checkout-oom-1")
                if e["reason"] == "ApprovalGateUnavailable"]
    assert [e["type"] for e in warnings] == ["Warning"], "said once, not on every retry"
    log = operator.log()
    assert "run_approval_gate_unavailable" in log
    assert "Traceback" not in log, "a pass crashed on the failover"

    redis_failover.promote()
    final = wait_for_run(test_cluster, namespace, "checkout-oom-1", *FINAL, timeout=60)
    assert final["state"] == "Succeeded", final
    assert restart_count(test_cluster, namespace, "checkout") == 2, "restarted exactly once"
    assert "Traceback" not in operator.log()
