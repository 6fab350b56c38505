"""The operator SIGKILLed mid-Run, for Scale and RolloutUndo (RolloutRestart: tests/e2e/test_runs.py).

Each Run is caught in Verifying (the Deployment's pods become available only 15 s after they
are ready), the operator is killed with SIGKILL, and the Run's status is rewound to Running
— as if the operator had died after acting but before storing Verifying. The restarted
operator finds the action's stamp on the workload and does not act again:

- Scale 1 → 3: the execute steps are Succeeded then AlreadyApplied, one stamp, the Deployment's
  generation moved once (a second scale would bump it again, to nothing new);
- RolloutUndo from revision 2 (image 2.0) to 1: one undo, revision 3 with image 1.0 (a second
  undo would roll back again, to revision 4 with image 2.0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import OperatorFactory
from tests.e2e.test_runs import (
    FINAL,
    QUIET,
    apply_deployment,
    apply_incident,
    get,
    replica_sets,
    steps,
    wait_for_run,
)
from tests.harness.cluster import TestCluster

pytestmark = pytest.mark.e2e


def rewind_to_running(cluster: TestCluster, namespace: str, run: str) -> None:
    cluster.kubectl(
        "patch", "runs.flywheel.dev", run, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"state": "Running"}}),
    )


def trusted_rollbacks(tmp_path: Path) -> str:
    """The built-in catalogue with rollbacks approval-free (it makes them critical)."""
    rules = yaml.safe_load(Path("operator/flywheel/rules/default.yaml").read_text())
    for rule in rules:
        if rule["action"]["type"] == "RolloutUndo":
            rule["risk"] = "medium"
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules))
    return str(rules_file)


def kill_in_verifying_and_restart(
    cluster: TestCluster, namespace: str, operator: Any, run: str
) -> dict[str, Any]:
    wait_for_run(cluster, namespace, run, "Verifying", timeout=40)
    operator.kill()
    rewind_to_running(cluster, namespace, run)
    operator.start()
    return wait_for_run(cluster, namespace, run, *FINAL, timeout=60)


def test_killed_mid_scale_scales_once(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    apply_deployment(test_cluster, namespace, "search", replicas=1, minReadySeconds=15)
    test_cluster.kubectl("rollout", "status", "deployment/search", "-n", namespace, "--timeout=60s")
    generation_before = get(test_cluster, namespace, "deployment", "search")["metadata"]["generation"]
    operator = start_operator(**QUIET, redis_url=clean_redis_url)
    apply_incident(test_cluster, namespace, "search-slow", "search", alertName="HighLatencyP99", errorType="Latency")

    status = kill_in_verifying_and_restart(test_cluster, namespace, operator, "search-slow-1")

    assert status["state"] == "Succeeded", status
    assert [step["result"] for step in steps(status, "execute")] == ["Succeeded", "AlreadyApplied"]
    deployment = get(test_cluster, namespace, "deployment", "search")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["metadata"]["generation"] == generation_before + 1, "one scale, one generation"
    assert len(json.loads(deployment["metadata"]["annotations"]["flywheel.dev/actions"])) == 1


def test_killed_mid_rollout_undo_rolls_back_once(
    test_cluster: TestCluster,
    namespace: str,
    clean_redis_url: str,
    start_operator: OperatorFactory,
    tmp_path: Path,
) -> None:
    apply_deployment(test_cluster, namespace, "payments", minReadySeconds=15)
    test_cluster.kubectl("rollout", "status", "deployment/payments", "-n", namespace, "--timeout=60s")
    test_cluster.kubectl(
        "set", "image", "deployment/payments", "app=registry.example/flywheel-sample:2.0", "-n", namespace
    )
    test_cluster.kubectl("rollout", "status", "deployment/payments", "-n", namespace, "--timeout=60s")
    operator = start_operator(**QUIET, redis_url=clean_redis_url, rules_file=trusted_rollbacks(tmp_path))
    apply_incident(
        test_cluster, namespace, "payments-errors", "payments", alertName="HighErrorRate", errorType="5xx"
    )

    status = kill_in_verifying_and_restart(test_cluster, namespace, operator, "payments-errors-1")

    assert status["state"] == "Succeeded", status
    assert [step["result"] for step in steps(status, "execute")] == ["Succeeded", "AlreadyApplied"]
    deployment = get(test_cluster, namespace, "deployment", "payments")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example/flywheel-sample:1.0", "rolled back once, not back again to 2.0"
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert len(json.loads(deployment["metadata"]["annotations"]["flywheel.dev/actions"])) == 1
    assert len(replica_sets(test_cluster, namespace, "payments")) == 2
