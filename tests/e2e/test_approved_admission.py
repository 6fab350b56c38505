"""An approval is no way around the safety limits (issue 17, item 4), on the real control plane.

Scenario matrix (webhooks on, an approver approves through ``kubectl --as``):
- the circuit breaker open on the target (one remediation within the window): the approved Run
  stays WaitingApproval with Throttled=True (CircuitBreakerOpen) and a Warning Event, the
  workload untouched, and acts once the window has passed;
- another Run executing on the target (its rollout stuck): the approved Run waits with
  Throttled=True (TargetLimitReached), and acts once the other one finished.
"""

from __future__ import annotations

import pytest

from tests.conftest import OperatorFactory
from tests.e2e.test_approvals import (
    APPROVER,
    APPROVERS,
    approval,
    create_incident,
    decide,
    start_with_webhooks,
    wait_for_webhooks,
)
from tests.e2e.test_runs import FINAL, apply_deployment, condition, events_for, get, run_status, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e


def revision(cluster: TestCluster, namespace: str, name: str) -> str:
    return str(get(cluster, namespace, "deployment", name)["metadata"]["annotations"]["deployment.kubernetes.io/revision"])


def throttled(cluster: TestCluster, namespace: str, run: str, reason: str) -> dict[str, object]:
    def held() -> dict[str, object] | None:
        status = run_status(cluster, namespace, run)
        found = [c for c in status.get("conditions") or [] if c["type"] == "Throttled"]
        return status if found and found[0]["status"] == "True" and found[0]["reason"] == reason else None

    return wait_for(held, timeout=45, what=f"{run} Throttled ({reason})")


def test_an_open_circuit_breaker_holds_an_approved_run_until_its_window_passes(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "cart", namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url, circuit_breaker_max_remediations="1",
                                   circuit_breaker_window_seconds="25")
    wait_for_webhooks(test_cluster, namespace, operator)
    create_incident(test_cluster, namespace, "cart-a", "cart", errorType="OOMKilled", remediation={"mode": "Auto"})
    assert wait_for_run(test_cluster, namespace, "cart-a-1", *FINAL, timeout=60)["state"] == "Succeeded"
    before = revision(test_cluster, namespace, "cart")

    create_incident(test_cluster, namespace, "cart-b", "cart", errorType="CrashLoopBackOff")
    wait_for_run(test_cluster, namespace, "cart-b-1", "WaitingApproval")
    approval(test_cluster, namespace, "cart-b-1")
    decide(test_cluster, namespace, "cart-b-1", "Approve", "go", APPROVER, APPROVERS)

    held = throttled(test_cluster, namespace, "cart-b-1", "CircuitBreakerOpen")
    assert held["state"] == "WaitingApproval" and held.get("attempt", 0) == 0
    message = condition(held, "Throttled")["message"]
    assert message.startswith(f"approved by {APPROVER}") and "remediated 1 times" in message
    warnings = wait_for(lambda: [e for e in events_for(test_cluster, namespace, "cart-b-1")
                                 if e["reason"] == "Throttled" and e["type"] == "Warning"],
                        timeout=15, what="the Throttled Warning")
    assert "approval required" in warnings[0]["message"] or "remediated" in warnings[0]["message"]
    assert revision(test_cluster, namespace, "cart") == before, "the approved Run did not act"

    final = wait_for_run(test_cluster, namespace, "cart-b-1", *FINAL, timeout=90)
    assert final["state"] == "Succeeded", final
    assert condition(final, "Throttled")["status"] == "False"
    assert revision(test_cluster, namespace, "cart") != before


def test_an_approved_run_waits_for_the_run_executing_on_its_target(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "queue", namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)
    apply_deployment(test_cluster, namespace, "queue", schedulable=False)  # rollouts now never finish
    create_incident(test_cluster, namespace, "queue-a", "queue", errorType="OOMKilled", remediation={"mode": "Auto"})
    wait_for_run(test_cluster, namespace, "queue-a-1", "Verifying", timeout=60)
    create_incident(test_cluster, namespace, "queue-b", "queue", errorType="CrashLoopBackOff")
    wait_for_run(test_cluster, namespace, "queue-b-1", "WaitingApproval")
    approval(test_cluster, namespace, "queue-b-1")
    decide(test_cluster, namespace, "queue-b-1", "Approve", "go", APPROVER, APPROVERS)

    held = throttled(test_cluster, namespace, "queue-b-1", "TargetLimitReached")
    assert held["state"] == "WaitingApproval" and held.get("attempt", 0) == 0
    assert "on Deployment/queue (limit 1)" in condition(held, "Throttled")["message"]
    assert run_status(test_cluster, namespace, "queue-a-1")["state"] in ("Running", "Verifying")

    apply_deployment(test_cluster, namespace, "queue")  # schedulable again: the first Run's rollout completes
    assert wait_for_run(test_cluster, namespace, "queue-a-1", *FINAL, timeout=120)["state"] == "Succeeded"
    assert wait_for_run(test_cluster, namespace, "queue-b-1", *FINAL, timeout=120)["state"] == "Succeeded"
