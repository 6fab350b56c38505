"""Repair history written by the older system, shown on an Approval, on the real control plane.

The older anomaly counter shares Flywheel's Redis keys; its repair-history entries name
actions its own way (``restart_pod``, ``scale_up``, a kubectl command line) and carry no
attempt id. The CRD's ``previousOutcomes[].action`` is an enum of today's action types.

Scenario matrix:
- history with older names that have a counterpart (restart_pod, scale_up, kubectl rollout
  undo) and names that have none (clear_cache, scale_down): the Approval is created at once,
  its previousOutcomes name RolloutRestart, Scale and RolloutUndo with the older outcomes
  counted, and nothing of the names without a counterpart.
"""

from __future__ import annotations

import json
import re

import pytest
import redis

from flywheel.domain.signature import anomaly_key
from tests.conftest import OperatorFactory
from tests.e2e.test_approvals import approval, start_with_webhooks, wait_for_webhooks, waiting_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster

pytestmark = pytest.mark.e2e

# As the older counter's record_repair_attempt wrote them (newest first after LPUSH).
LEGACY_HISTORY = [
    ("restart_pod", True),
    ("restart_pod", False),
    ("restart_pod", False),
    ("scale_up", True),
    ("kubectl rollout undo deployment/checkout", True),
    ("clear_cache", True),
    ("scale_down", False),
]


def write_legacy_history(redis_url: str, tenant: str, key: str) -> None:
    client = redis.Redis.from_url(redis_url)
    history_key = f"{tenant}:anomaly:repair_history:{key}"
    for action, success in LEGACY_HISTORY:
        client.lpush(history_key, json.dumps({"action": action, "success": success,
                                              "timestamp": "2026-04-07T10:00:00.000000"}))
    client.close()


def test_older_action_names_become_today_s_on_the_approval_and_the_rest_is_left_out(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    # The Incident waiting_run creates (alert, service, namespace, error type), keyed as Flywheel keys it.
    write_legacy_history(clean_redis_url, namespace, anomaly_key("KubePodOOMKilled", "checkout", namespace, "OOMKilled"))
    operator = start_with_webhooks(start_operator, clean_redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)

    waiting_run(test_cluster, namespace, "checkout-oom", "checkout")
    proposal = approval(test_cluster, namespace, "checkout-oom-1")

    assert proposal["spec"]["previousOutcomes"] == [
        {"action": "RolloutRestart", "attempts": 3, "successes": 1},
        {"action": "RolloutUndo", "attempts": 1, "successes": 1},
        {"action": "Scale", "attempts": 1, "successes": 1},
    ]
    log = operator.log()
    # A 422 as the API server answers it (not digits inside a timestamp, a port or a hex id).
    assert not re.search(r"(?<![\w.:])422(?!\w)", log) and "Unprocessable" not in log
    assert "Unsupported value" not in log
