"""Incidents with the longest names Kubernetes allows, on the real control plane.

The name is 253 characters, and its first 63 end in ``-`` — the label value ``name[:63]``
made of it was refused by the API server (422), so the Run was never created and the
Incident never remediated.

Scenario matrix:
- Auto: the Incident is remediated (its Run, named within 253 characters, succeeds and the
  Incident is Resolved), and ``kubectl get runs -l flywheel.dev/incident=<value>`` finds the
  Run by the label value Flywheel derives from the name;
- RequireApproval: the Approval of that Run is created, labelled with the Run's label value.
"""

from __future__ import annotations

from typing import Any

import pytest

from flywheel.domain.names import label_value
from tests.conftest import OperatorFactory
from tests.e2e.test_approvals import approval, start_with_webhooks, wait_for_webhooks
from tests.e2e.test_runs import FINAL, QUIET, apply_incident, get, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

LONG_NAME = "checkout-oom-" + "a" * 49 + "-" + "b" * 190
assert len(LONG_NAME) == 253 and LONG_NAME[:63].endswith("-")


def run_of(cluster: TestCluster, namespace: str, incident: str) -> str:
    def run_ref() -> str | None:
        status = get(cluster, namespace, "incident", incident).get("status") or {}
        return (status.get("runRef") or {}).get("name")

    name: str = wait_for(run_ref, timeout=30, what=f"a Run for incident {incident[:20]}…")
    return name


def test_an_incident_with_a_253_character_name_is_remediated(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    start_operator(**QUIET, redis_url=clean_redis_url)
    apply_incident(test_cluster, namespace, LONG_NAME, "checkout")

    run = run_of(test_cluster, namespace, LONG_NAME)
    assert len(run) <= 253 and run.endswith("-1")
    status = wait_for_run(test_cluster, namespace, run, *FINAL, timeout=60)
    assert status["state"] == "Succeeded", status

    def resolved() -> dict[str, Any] | None:
        incident_status = get(test_cluster, namespace, "incident", LONG_NAME).get("status") or {}
        return incident_status if incident_status.get("phase") == "Resolved" else None

    assert wait_for(resolved, timeout=30, what="the long-named Incident resolved")["disposition"] == "auto_repair"

    value = label_value(LONG_NAME)
    assert len(value) <= 63
    listed = test_cluster.kubectl_json("get", "runs.flywheel.dev", "-n", namespace, "-l", f"flywheel.dev/incident={value}")
    assert [item["metadata"]["name"] for item in listed["items"]] == [run]


def test_the_approval_of_a_long_named_run_is_created(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)
    apply_incident(test_cluster, namespace, LONG_NAME, "checkout", remediation={"mode": "RequireApproval"})

    run = run_of(test_cluster, namespace, LONG_NAME)
    wait_for_run(test_cluster, namespace, run, "WaitingApproval")
    proposal = approval(test_cluster, namespace, run)
    labels = proposal["metadata"]["labels"]
    assert labels["flywheel.dev/run"] == label_value(run)
    assert labels["flywheel.dev/incident"] == label_value(LONG_NAME)
