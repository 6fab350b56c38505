"""Runs on the real control plane: real rollouts, real scaling, real rollbacks.

Scenario matrix:
- an OOM Incident → its Run restarts the Deployment (a new ReplicaSet, the pod template
  stamped with the Run's uid) and succeeds; the Incident is Resolved (auto_repair) and
  the repair attempt and disposition are counted in Redis;
- a latency Incident scales 1 → 3, and never lowers a Deployment already at 5;
- a rollback (approval-free through a rule catalogue) returns a Deployment with two
  revisions to the previous ReplicaSet; the store rolls a StatefulSet back through its
  ControllerRevisions and refuses a rollback without an earlier revision;
- Shadow mode changes nothing (same generation, one ReplicaSet) and journals a "would" step;
- the operator SIGKILLed mid-Run, even with the Run's last status write lost, restarts and
  finishes the Run with the action applied exactly once;
- a target that never becomes ready → the Run retries, then fails with E-VERIFY-TIMEOUT, and
  the Incident, still Mitigating, says so (Resolved=False, NotRemediated);
- two Incidents on one target at once → one waits Throttled; after two remediations the
  circuit breaker makes the next Run wait for approval, with a condition and a Warning Event;
- four Incidents on one target created in one request → their Runs act one after the other,
  never two at once (a Run started moments ago counts before the watch brings it back);
- remediation turned Off on the Incident → its waiting Run is Cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.conftest import OperatorFactory
from tests.e2e.workloads import create_deployment, deployment_manifest
from tests.harness.cluster import TestCluster
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

FINAL = ("Succeeded", "Failed", "Cancelled", "TimedOut")
# These tests need neither the metrics server nor the intake; without fixed ports they never
# collide with another operator running on this machine.
QUIET = {"metrics_port": "0", "intake_port": "0"}


# --------------------------------------------------------------------------- helpers


def apply_incident(cluster: TestCluster, namespace: str, name: str, target: str, **spec: Any) -> None:
    body: dict[str, Any] = {
        "alertName": "KubePodOOMKilled",
        "service": target,
        "errorType": "OOMKilled",
        "severity": "P2",
        "source": "alertmanager",
        "summary": f"{target} is unwell",
        "targetRef": {"kind": "Deployment", "name": target},
    }
    body.update(spec)
    manifest = {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "Incident",
        "metadata": {"name": name},
        "spec": body,
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def get(cluster: TestCluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return cluster.kubectl_json("get", kind, name, "-n", namespace)


def run_status(cluster: TestCluster, namespace: str, name: str) -> dict[str, Any]:
    result = cluster.kubectl("get", "runs.flywheel.dev", name, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        return {}
    return json.loads(result.stdout).get("status") or {}


def wait_for_run(
    cluster: TestCluster, namespace: str, name: str, *states: str, timeout: float = 45
) -> dict[str, Any]:
    def in_state() -> dict[str, Any] | None:
        status = run_status(cluster, namespace, name)
        return status if status.get("state") in states else None

    return wait_for(in_state, timeout=timeout, what=f"run {name} in {states}")


def condition(status: dict[str, Any], condition_type: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == condition_type)


def steps(status: dict[str, Any], name: str | None = None) -> list[dict[str, Any]]:
    return [step for step in status.get("steps") or [] if name is None or step["name"] == name]


def replica_sets(cluster: TestCluster, namespace: str, app: str) -> list[dict[str, Any]]:
    items = cluster.kubectl_json("get", "replicasets", "-n", namespace, "-l", f"app={app}")["items"]
    return items  # type: ignore[no-any-return]


def events_for(cluster: TestCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items = cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )
    return items["items"]  # type: ignore[no-any-return]


def apply_deployment(cluster: TestCluster, namespace: str, name: str, **changes: Any) -> None:
    """A sample Deployment with spec changes, without waiting for its rollout.

    ``schedulable=False`` gives its pods a node selector no node matches: they stay Pending.
    """
    manifest = json.loads(deployment_manifest(name, namespace))
    if changes.pop("schedulable", True) is False:
        manifest["spec"]["template"]["spec"]["nodeSelector"] = {"flywheel.dev/test-no-such-node": "true"}
    manifest["spec"].update(changes)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


# --------------------------------------------------------------------------- scenarios


def test_restart_run_rolls_the_deployment_and_resolves_the_incident(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    start_operator(**QUIET, redis_url=clean_redis_url)
    apply_incident(test_cluster, namespace, "checkout-oom", "checkout")
    status = wait_for_run(test_cluster, namespace, "checkout-oom-1", *FINAL)

    assert status["state"] == "Succeeded", status
    run = get(test_cluster, namespace, "runs.flywheel.dev", "checkout-oom-1")
    assert status["attempt"] == 1
    assert "errorCode" not in status or status["errorCode"] is None
    assert status["startedAt"] <= status["completedAt"]
    # The rollout, then the symptom (issue #16): a kubectl-filed Incident is judged by its Pods.
    assert [step["name"] for step in steps(status)] == ["admit", "execute", "verify", "verify"]
    assert [step["result"] for step in steps(status, "verify")] == ["RolloutComplete", "Succeeded"]
    assert steps(status, "verify")[-1]["message"].startswith("evidence pods: Pods: 1 Ready"), status
    assert [step["seq"] for step in steps(status)] == [1, 2, 3, 4]
    assert condition(status, "Succeeded")["status"] == "True"
    assert condition(status, "OutcomeRecorded")["status"] == "True"

    deployment = get(test_cluster, namespace, "deployment", "checkout")
    template_annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert template_annotations["flywheel.dev/run-uid"] == run["metadata"]["uid"]
    assert "flywheel.dev/restartedAt" in template_annotations
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert len(replica_sets(test_cluster, namespace, "checkout")) == 2
    assert deployment["status"]["updatedReplicas"] == deployment["status"]["availableReplicas"] == 1

    incident = wait_for(
        lambda: (
            (s := get(test_cluster, namespace, "incident", "checkout-oom").get("status") or {}).get("phase")
            == "Resolved"
            and s
        ),
        timeout=20,
        what="incident resolved",
    )
    assert incident["disposition"] == "auto_repair"
    assert incident["decision"]["state"] == "Completed"
    resolved = condition(incident, "Resolved")
    assert (resolved["status"], resolved["reason"]) == ("True", "AutoRepaired")
    assert "checkout-oom-1" in resolved["message"]

    key = incident["anomaly"]["key"]
    client = redis.Redis.from_url(clean_redis_url, decode_responses=True)
    outcomes = client.hgetall(f"{namespace}:anomaly:repair_outcomes:{key}")
    assert outcomes == {"RolloutRestart": "1"}
    assert client.hget(f"{namespace}:anomaly:disposition:{key}", "auto_repair") == "1"
    client.close()


def test_scale_adds_replicas_and_never_lowers_them(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "search", namespace, replicas=1)
    create_deployment(test_cluster, "catalog", namespace, replicas=5)
    spec_before = get(test_cluster, namespace, "deployment", "catalog")["spec"]
    start_operator(**QUIET, redis_url=clean_redis_url)
    apply_incident(
        test_cluster, namespace, "search-slow", "search", alertName="HighLatencyP99", errorType="Latency"
    )
    apply_incident(
        test_cluster, namespace, "catalog-slow", "catalog", alertName="HighLatencyP99", errorType="Latency"
    )

    search = wait_for_run(test_cluster, namespace, "search-slow-1", *FINAL)
    catalog = wait_for_run(test_cluster, namespace, "catalog-slow-1", *FINAL)
    assert search["state"] == catalog["state"] == "Succeeded", (search, catalog)

    scaled = get(test_cluster, namespace, "deployment", "search")
    assert scaled["spec"]["replicas"] == 3
    assert scaled["status"]["availableReplicas"] == 3
    assert "from 1 to 3 replicas" in steps(search, "execute")[0]["message"]

    kept = get(test_cluster, namespace, "deployment", "catalog")
    assert kept["spec"] == spec_before, "only the stamp was written"
    assert kept["spec"]["replicas"] == 5
    assert kept["metadata"]["annotations"]["flywheel.dev/run-attempt"] == "1"
    assert len(replica_sets(test_cluster, namespace, "catalog")) == 1
    assert "at 5 replicas" in steps(catalog, "execute")[0]["message"]


def test_rollout_undo_returns_to_the_previous_replicaset(
    test_cluster: TestCluster,
    namespace: str,
    clean_redis_url: str,
    start_operator: OperatorFactory,
    tmp_path: Path,
) -> None:
    create_deployment(test_cluster, "payments", namespace)
    test_cluster.kubectl(
        "set", "image", "deployment/payments", "app=registry.example/flywheel-sample:2.0", "-n", namespace
    )
    test_cluster.kubectl("rollout", "status", "deployment/payments", "-n", namespace, "--timeout=60s")
    assert len(replica_sets(test_cluster, namespace, "payments")) == 2

    # The built-in catalogue makes a rollback critical (approval required); this one trusts it.
    rules = yaml.safe_load(Path("operator/flywheel/rules/default.yaml").read_text())
    for rule in rules:
        if rule["action"]["type"] == "RolloutUndo":
            rule["risk"] = "medium"
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules))
    start_operator(**QUIET, redis_url=clean_redis_url, rules_file=str(rules_file))
    apply_incident(
        test_cluster, namespace, "payments-errors", "payments", alertName="HighErrorRate", errorType="5xx"
    )
    status = wait_for_run(test_cluster, namespace, "payments-errors-1", *FINAL)

    assert status["state"] == "Succeeded", status
    assert "from revision 2 to revision 1" in steps(status, "execute")[0]["message"]
    deployment = get(test_cluster, namespace, "deployment", "payments")
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        == "registry.example/flywheel-sample:1.0"
    )
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert deployment["metadata"]["annotations"]["flywheel.dev/undo-to-revision"] == "1"
    sets = replica_sets(test_cluster, namespace, "payments")
    assert len(sets) == 2, "the previous ReplicaSet is reused, not copied"
    revisions = {rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]: rs for rs in sets}
    assert revisions["3"]["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.0")
    assert revisions["3"]["status"]["readyReplicas"] == 1


def test_statefulset_undo_through_controller_revisions_and_refusal_without_history(
    test_cluster: TestCluster, namespace: str
) -> None:
    from flywheel.api.enums import ActionType, TargetKind
    from flywheel.domain.actions import ProposedAction
    from flywheel.domain.run_state import ActionNotApplicableError
    from flywheel.stores.kube import KubeApi
    from flywheel.stores.workloads import ActionStamp, WorkloadStore

    manifest = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "ledger", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "serviceName": "ledger",
            "selector": {"matchLabels": {"app": "ledger"}},
            "template": {
                "metadata": {"labels": {"app": "ledger"}},
                "spec": {
                    "containers": [{"name": "app", "image": "registry.example/ledger:1.0"}],
                    "tolerations": [
                        {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                },
            },
        },
    }
    test_cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    test_cluster.kubectl("rollout", "status", "statefulset/ledger", "-n", namespace, "--timeout=60s")
    undo = ProposedAction(ActionType.ROLLOUT_UNDO, TargetKind.STATEFULSET, "ledger")

    async def apply(attempt: int) -> Any:
        # A client per event loop: each asyncio.run below is a loop of its own.
        kube = KubeApi(config_file=test_cluster.kubeconfig)
        try:
            stamp = ActionStamp(run_uid=f"test-{namespace}", attempt=attempt, at=datetime.now(UTC))
            return await WorkloadStore(kube).apply(namespace, undo, stamp, dry_run=False, max_replicas=10)
        finally:
            await kube.close()

    with pytest.raises(ActionNotApplicableError, match="no revision before"):
        asyncio.run(apply(1))

    test_cluster.kubectl(
        "set", "image", "statefulset/ledger", "app=registry.example/ledger:2.0", "-n", namespace
    )
    test_cluster.kubectl("rollout", "status", "statefulset/ledger", "-n", namespace, "--timeout=60s")
    result = asyncio.run(apply(1))
    assert result.changed and "back from revision 2 to revision 1" in result.summary
    test_cluster.kubectl("rollout", "status", "statefulset/ledger", "-n", namespace, "--timeout=60s")
    statefulset = get(test_cluster, namespace, "statefulset", "ledger")
    assert statefulset["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/ledger:1.0"

    again = asyncio.run(apply(2))
    assert again.already_applied, "a later attempt of the same Run never rolls back twice"
    assert (
        get(test_cluster, namespace, "statefulset", "ledger")["metadata"]["generation"]
        == (statefulset["metadata"]["generation"])
    )


def test_shadow_mode_changes_nothing_and_journals_what_it_would_do(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "orders", namespace)
    before = get(test_cluster, namespace, "deployment", "orders")
    start_operator(**QUIET, redis_url=clean_redis_url)
    apply_incident(test_cluster, namespace, "orders-oom", "orders", remediation={"mode": "Shadow"})
    status = wait_for_run(test_cluster, namespace, "orders-oom-1", *FINAL)

    assert status["state"] == "Succeeded", status
    dry_run = steps(status, "dry-run")
    assert len(dry_run) == 1 and dry_run[0]["result"] == "WouldChange"
    assert dry_run[0]["message"].startswith("would restart Deployment/orders")
    assert "generation 1 → 2" in dry_run[0]["message"]
    assert steps(status, "verify")[0]["result"] == "Skipped"
    after = get(test_cluster, namespace, "deployment", "orders")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert len(replica_sets(test_cluster, namespace, "orders")) == 1
    incident = get(test_cluster, namespace, "incident", "orders-oom")["status"]
    assert incident["phase"] == "Mitigating", "a dry run resolves nothing"


def test_operator_killed_mid_run_applies_the_action_exactly_once(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    # Pods become available 15 s after they are ready: the Run stays in Verifying long enough.
    apply_deployment(test_cluster, namespace, "basket", minReadySeconds=15)
    test_cluster.kubectl("rollout", "status", "deployment/basket", "-n", namespace, "--timeout=60s")
    operator = start_operator(**QUIET, redis_url=clean_redis_url)
    apply_incident(test_cluster, namespace, "basket-oom", "basket")
    wait_for_run(test_cluster, namespace, "basket-oom-1", "Verifying", timeout=30)
    operator.kill()

    # As if the operator had died after acting but before storing "Verifying": rewind the status.
    test_cluster.kubectl(
        "patch",
        "runs.flywheel.dev",
        "basket-oom-1",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"state": "Running"}}),
    )
    operator.start()
    status = wait_for_run(test_cluster, namespace, "basket-oom-1", *FINAL, timeout=50)

    assert status["state"] == "Succeeded", status
    assert [step["result"] for step in steps(status, "execute")] == ["Succeeded", "AlreadyApplied"]
    deployment = get(test_cluster, namespace, "deployment", "basket")
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert len(json.loads(deployment["metadata"]["annotations"]["flywheel.dev/actions"])) == 1
    assert len(replica_sets(test_cluster, namespace, "basket")) == 2


def test_a_target_that_never_becomes_ready_fails_verification_after_retrying(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    apply_deployment(test_cluster, namespace, "stuck", schedulable=False)
    start_operator(**QUIET, redis_url=clean_redis_url, run_timeout_seconds="10", run_max_attempts="2")
    apply_incident(test_cluster, namespace, "stuck-oom", "stuck")
    status = wait_for_run(test_cluster, namespace, "stuck-oom-1", *FINAL, timeout=40)

    assert (status["state"], status["errorCode"]) == ("Failed", "E-VERIFY-TIMEOUT"), status
    assert status["attempt"] == 2
    assert [step["name"] for step in steps(status)] == ["admit", "execute", "retry", "execute", "verify"]
    failed = condition(status, "Succeeded")
    assert (failed["status"], failed["reason"]) == ("False", "VerifyTimeout")
    deployment = get(test_cluster, namespace, "deployment", "stuck")
    assert json.loads(deployment["metadata"]["annotations"]["flywheel.dev/actions"])[-1]["attempt"] == 2
    incident = get(test_cluster, namespace, "incident", "stuck-oom")["status"]
    assert incident["phase"] == "Mitigating"
    not_remediated = condition(incident, "Resolved")
    assert (not_remediated["status"], not_remediated["reason"]) == ("False", "NotRemediated")
    assert not_remediated["message"].startswith("Run stuck-oom-1 failed: E-VERIFY-TIMEOUT: ")
    client = redis.Redis.from_url(clean_redis_url, decode_responses=True)
    assert client.hgetall(f"{namespace}:anomaly:repair_outcomes:{incident['anomaly']['key']}") == {
        "RolloutRestart": "0"
    }
    client.close()
    reasons = {event["reason"] for event in events_for(test_cluster, namespace, "stuck-oom-1")}
    assert {"Retrying", "Failed", "IncidentNotRemediated"} <= reasons


def test_throttling_and_the_circuit_breaker(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "cart", namespace)
    start_operator(**QUIET, redis_url=clean_redis_url, circuit_breaker_max_remediations="2")
    # Different anomalies (error types) on one workload: no deduplication, one target.
    apply_incident(test_cluster, namespace, "cart-a", "cart", errorType="OOMKilled")
    apply_incident(test_cluster, namespace, "cart-b", "cart", errorType="CrashLoopBackOff")
    first = wait_for_run(test_cluster, namespace, "cart-a-1", *FINAL)
    second = wait_for_run(test_cluster, namespace, "cart-b-1", *FINAL)
    assert first["state"] == second["state"] == "Succeeded", (first, second)
    throttled = [s for s in (first, second) if steps(s, "throttle")]
    assert len(throttled) == 1, "one Run on the target at a time: the other one waited"
    assert condition(throttled[0], "Throttled")["status"] == "False"
    assert "on Deployment/cart (limit 1)" in steps(throttled[0], "throttle")[0]["message"]

    apply_incident(test_cluster, namespace, "cart-c", "cart", errorType="Evicted")
    third = wait_for_run(test_cluster, namespace, "cart-c-1", "WaitingApproval", *FINAL)
    assert third["state"] == "WaitingApproval", third
    waiting = condition(third, "AwaitingApproval")
    assert (waiting["status"], waiting["reason"]) == ("True", "CircuitBreakerOpen")
    assert "remediated 2 times" in waiting["message"]
    assert third.get("attempt", 0) == 0 and "startedAt" not in third
    events = wait_for(
        lambda: [
            e for e in events_for(test_cluster, namespace, "cart-c-1") if e["reason"] == "CircuitBreakerOpen"
        ],
        timeout=10,
        what="CircuitBreakerOpen event",
    )
    assert events[0]["type"] == "Warning"
    assert (
        get(test_cluster, namespace, "deployment", "cart")["metadata"]["annotations"][
            "deployment.kubernetes.io/revision"
        ]
        == "3"
    ), "the third Run did not touch the target"


def test_runs_created_together_on_one_target_act_one_after_the_other(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "basket", namespace)
    start_operator(**QUIET, redis_url=clean_redis_url, circuit_breaker_max_remediations="10")
    # Applied in this order, each Run queues ahead of the ones before it by name (same second):
    # only a Run that counts its started peers before the watch echoes them waits.
    names = [f"basket-{index}" for index in reversed(range(4))]
    incidents = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "flywheel.dev/v1alpha1",
                "kind": "Incident",
                "metadata": {"name": name},
                "spec": {
                    "alertName": "KubePodOOMKilled",
                    "service": "basket",
                    "errorType": f"OOMKilled-{name}",  # one anomaly each: no deduplication
                    "severity": "P2",
                    "source": "alertmanager",
                    "summary": "basket is unwell",
                    "targetRef": {"kind": "Deployment", "name": "basket"},
                },
            }
            for name in names
        ],
    }
    test_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(incidents))
    runs = {name: wait_for_run(test_cluster, namespace, f"{name}-1", *FINAL, timeout=120) for name in names}

    assert {name: status["state"] for name, status in runs.items()} == dict.fromkeys(names, "Succeeded")
    spans = sorted(
        (datetime.fromisoformat(status["startedAt"]), datetime.fromisoformat(status["completedAt"]), name)
        for name, status in runs.items()
    )
    for (_, previous_end, previous), (start, _, name) in itertools.pairwise(spans):
        assert start >= previous_end, f"{name}-1 started at {start} while {previous}-1 ran until {previous_end}"
    assert sum(1 for status in runs.values() if steps(status, "throttle")) >= len(names) - 1
    annotations = get(test_cluster, namespace, "deployment", "basket")["metadata"]["annotations"]
    assert annotations["deployment.kubernetes.io/revision"] == str(1 + len(names)), "one restart per Run"


def test_remediation_off_cancels_a_waiting_run(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "profile", namespace)
    start_operator(**QUIET, redis_url=clean_redis_url)
    apply_incident(test_cluster, namespace, "profile-oom", "profile", remediation={"mode": "RequireApproval"})
    waiting = wait_for_run(test_cluster, namespace, "profile-oom-1", "WaitingApproval")
    assert condition(waiting, "AwaitingApproval")["reason"] == "ApprovalRequired"

    test_cluster.kubectl(
        "patch",
        "incident",
        "profile-oom",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"remediation": {"mode": "Off"}}}),
    )
    status = wait_for_run(test_cluster, namespace, "profile-oom-1", *FINAL, timeout=20)
    assert (status["state"], status["errorCode"]) == ("Cancelled", "E-CANCELLED")
    assert "remediation Off" in status["errorDetail"]
    assert condition(status, "AwaitingApproval")["status"] == "False"
    assert len(replica_sets(test_cluster, namespace, "profile")) == 1
