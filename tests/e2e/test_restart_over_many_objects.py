"""An operator started over more existing objects than Kopf would give workers to still acts.

Kopf indexes every object of an indexed kind before any handler runs, and a worker that has
indexed its object waits, holding its slot, until all are indexed: with a worker limit below
the number of objects, the objects without a slot are never indexed and nothing ever runs
(Kopf issue #1243). Flywheel indexes Incidents and Runs, so a cluster with a few hundred of
them (the retention TTL keeps a week's worth) would hang an operator restart.

Scenario: 300 Incidents, resolved by hand, exist before the operator starts (more than the 256
workers an earlier version allowed); then a new Incident on a real Deployment gets its Run, which
succeeds, and the resolved ones are taken up (their phase written).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import OperatorFactory
from tests.e2e.test_runs import FINAL, apply_incident, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

EXISTING = 300


def resolved_incident(name: str) -> dict[str, object]:
    return {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "Incident",
        "metadata": {"name": name},
        "spec": {
            "alertName": "KubePodOOMKilled",
            "service": "archive",
            "errorType": "OOMKilled",
            "severity": "P3",
            "source": "manual",
            "summary": "handled by hand",
            "targetRef": {"kind": "Deployment", "name": "archive"},
            "resolution": {"note": "fixed by hand before the operator started"},
        },
    }


def test_an_operator_started_over_hundreds_of_incidents_still_acts(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    items = [resolved_incident(f"old-{index:03d}") for index in range(EXISTING)]
    test_cluster.kubectl("create", "-n", namespace, "-f", "-", timeout=300,
                         input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    create_deployment(test_cluster, "checkout", namespace)

    start_operator(clean_redis_url)
    apply_incident(test_cluster, namespace, "checkout-oom", "checkout")

    assert wait_for_run(test_cluster, namespace, "checkout-oom-1", *FINAL, timeout=180)["state"] == "Succeeded"

    def phases() -> list[str | None]:
        listed = test_cluster.kubectl_json("get", "incidents.flywheel.dev", "-n", namespace)["items"]
        return [item.get("status", {}).get("phase") for item in listed if item["metadata"]["name"].startswith("old-")]

    wait_for(lambda: all(phase is not None for phase in phases()), timeout=120,
             what="every Incident that existed before the start taken up")
    assert len(phases()) == EXISTING
