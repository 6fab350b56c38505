"""DaemonSets as remediation targets, on the real control plane (KWOK's fake nodes run their Pods).

Scenario matrix:
- an Incident on a DaemonSet → its Run restarts it (the pod template stamped with the Run's
  uid, one entry in the workload's action log), the rollout is verified as ``kubectl rollout
  status daemonset`` judges it and the Incident is Resolved; the restart happened exactly once
  (one new ControllerRevision, one stamp);
- a rollback returns a DaemonSet with two ControllerRevisions to the previous one (the
  controller renumbers it), as ``kubectl rollout undo daemonset`` does;
- the store: a Shadow dry run changes nothing; the same attempt applied twice restarts once,
  the next attempt again; a DaemonSet with ``updateStrategy: OnDelete`` is refused;
- Scale on a DaemonSet: a Run asking for it is refused by the API server naming
  ``spec.action.type``; an Incident whose matching rule scales gets a Run that restarts instead;
- kube-prometheus-stack alerts through the real Alertmanager and the intake: pod-level ones
  (KubePodCrashLooping, KubeContainerWaiting, labels as the kubernetes-mixin rules leave them)
  about a DaemonSet's Pod and object-level ones (KubeDaemonSetRolloutStuck,
  KubeDaemonSetNotScheduled: the ``daemonset`` label beside kube-state-metrics' own pod) become
  Incidents on the DaemonSet, with its service.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import OperatorFactory
from tests.e2e.test_intake import (  # noqa: F401 - fixtures used by name
    Alertmanager,
    alertmanager,
    checkout,
    intake_incidents,
    intake_url,
    rfc3339,
)
from tests.e2e.test_runs import FINAL, QUIET, apply_incident, condition, get, steps, wait_for_run
from tests.harness.cluster import TestCluster
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


def daemonset_manifest(name: str, namespace: str, image: str = "registry.example/log-agent:1.0") -> str:
    labels = {"app.kubernetes.io/name": f"{name}-svc"}
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "containers": [{"name": "agent", "image": image}],
                "tolerations": [KWOK_TOLERATION],
            }},
        },
    })


def create_daemonset(cluster: TestCluster, name: str, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=daemonset_manifest(name, namespace))
    cluster.kubectl("rollout", "status", f"daemonset/{name}", "-n", namespace, "--timeout=120s")


def controller_revisions(cluster: TestCluster, namespace: str, name: str) -> dict[int, dict[str, Any]]:
    items = cluster.kubectl_json("get", "controllerrevisions", "-n", namespace,
                                 "-l", f"app.kubernetes.io/name={name}-svc")["items"]
    return {int(item["revision"]): item for item in items}


def image_of(body: dict[str, Any]) -> str:
    return str(body["spec"]["template"]["spec"]["containers"][0]["image"])


def resolved(cluster: TestCluster, namespace: str, name: str) -> dict[str, Any] | None:
    status = get(cluster, namespace, "incident", name).get("status") or {}
    return status if status.get("phase") == "Resolved" else None


def test_an_incident_on_a_daemonset_is_restarted_exactly_once_and_verified(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_daemonset(test_cluster, "log-agent", namespace)
    before = get(test_cluster, namespace, "daemonset", "log-agent")
    assert before["status"]["desiredNumberScheduled"] >= 1, "KWOK's fake nodes run the DaemonSet's Pods"
    start_operator(**QUIET, redis_url=clean_redis_url)
    apply_incident(test_cluster, namespace, "agent-crash", "log-agent", alertName="KubePodCrashLooping",
                   errorType="CrashLoopBackOff", targetRef={"kind": "DaemonSet", "name": "log-agent"})
    status = wait_for_run(test_cluster, namespace, "agent-crash-1", *FINAL, timeout=90)

    assert status["state"] == "Succeeded", status
    assert [step["name"] for step in steps(status)] == ["admit", "execute", "verify", "verify"]  # rollout complete, then the symptom gone
    assert "rollout complete" in steps(status, "verify")[0]["message"]
    run = get(test_cluster, namespace, "runs.flywheel.dev", "agent-crash-1")
    assert run["spec"]["action"] == {"type": "RolloutRestart", "target": {"kind": "DaemonSet", "name": "log-agent"}}

    daemonset = get(test_cluster, namespace, "daemonset", "log-agent")
    assert daemonset["spec"]["template"]["metadata"]["annotations"]["flywheel.dev/run-uid"] == run["metadata"]["uid"]
    log = json.loads(daemonset["metadata"]["annotations"]["flywheel.dev/actions"])
    assert [(entry["run"], entry["action"]) for entry in log] == [(run["metadata"]["uid"], "RolloutRestart")]
    assert daemonset["metadata"]["generation"] == before["metadata"]["generation"] + 1, "restarted once"
    assert sorted(controller_revisions(test_cluster, namespace, "log-agent")) == [1, 2]
    desired = daemonset["status"]["desiredNumberScheduled"]
    assert daemonset["status"]["updatedNumberScheduled"] == daemonset["status"]["numberAvailable"] == desired

    incident = wait_for(lambda: resolved(test_cluster, namespace, "agent-crash"), timeout=30, what="Resolved")
    assert incident["disposition"] == "auto_repair"
    assert condition(incident, "Resolved")["reason"] == "AutoRepaired"


def test_rollout_undo_returns_a_daemonset_to_its_previous_controller_revision(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory,
    tmp_path: Path,
) -> None:
    create_daemonset(test_cluster, "log-agent", namespace)
    test_cluster.kubectl("set", "image", "daemonset/log-agent", "agent=registry.example/log-agent:2.0",
                         "-n", namespace)
    test_cluster.kubectl("rollout", "status", "daemonset/log-agent", "-n", namespace, "--timeout=120s")
    assert sorted(controller_revisions(test_cluster, namespace, "log-agent")) == [1, 2]

    # The built-in catalogue makes a rollback critical (approval required); this one trusts it.
    rules = yaml.safe_load(Path("operator/flywheel/rules/default.yaml").read_text())
    for rule in rules:
        if rule["action"]["type"] == "RolloutUndo":
            rule["risk"] = "medium"
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules))
    start_operator(**QUIET, redis_url=clean_redis_url, rules_file=str(rules_file))
    apply_incident(test_cluster, namespace, "agent-errors", "log-agent", alertName="HighErrorRate",
                   errorType="5xx", targetRef={"kind": "DaemonSet", "name": "log-agent"})
    status = wait_for_run(test_cluster, namespace, "agent-errors-1", *FINAL, timeout=90)

    assert status["state"] == "Succeeded", status
    assert "from revision 2 to revision 1" in steps(status, "execute")[0]["message"]
    daemonset = get(test_cluster, namespace, "daemonset", "log-agent")
    assert image_of(daemonset) == "registry.example/log-agent:1.0"
    assert daemonset["metadata"]["annotations"]["flywheel.dev/undo-to-revision"] == "1"
    revisions = controller_revisions(test_cluster, namespace, "log-agent")
    # As after `kubectl rollout undo daemonset`: the first template's revision is renumbered, not copied.
    assert sorted(revisions) == [2, 3]
    assert revisions[3]["data"]["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.0")
    pods = test_cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app.kubernetes.io/name=log-agent-svc")
    assert {pod["spec"]["containers"][0]["image"] for pod in pods["items"]} == {"registry.example/log-agent:1.0"}


def test_scaling_a_daemonset_is_refused_by_the_schema_and_never_decided(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_daemonset(test_cluster, "log-agent", namespace)
    run = {
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "Run", "metadata": {"name": "scale-agent"},
        "spec": {
            "incidentRef": {"name": "agent-slow", "uid": "0b7c1e2d-0000-4000-8000-000000000000"},
            "action": {"type": "Scale", "target": {"kind": "DaemonSet", "name": "log-agent"},
                       "params": {"replicas": 3}},
            "riskLevel": "low", "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
        },
    }
    refused = test_cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(run), check=False)
    assert refused.returncode != 0
    assert "spec.action.type" in refused.stderr and "does not apply to a DaemonSet" in refused.stderr

    # The built-in catalogue scales on latency; for a DaemonSet that rule is no candidate.
    start_operator(**QUIET, redis_url=clean_redis_url)
    apply_incident(test_cluster, namespace, "agent-slow", "log-agent", alertName="HighLatencyP99",
                   errorType="Latency", targetRef={"kind": "DaemonSet", "name": "log-agent"})
    status = wait_for_run(test_cluster, namespace, "agent-slow-1", *FINAL, timeout=90)
    assert status["state"] == "Succeeded", status
    decided = get(test_cluster, namespace, "runs.flywheel.dev", "agent-slow-1")["spec"]["action"]
    assert decided["type"] == "RolloutRestart"
    reasoning = get(test_cluster, namespace, "incident", "agent-slow")["status"]["decision"]["reasoning"]
    assert "Not applicable to DaemonSet/log-agent: high_latency (Scale)" in reasoning


def test_kube_prometheus_alerts_about_a_daemonset_become_incidents_on_it(
    test_cluster: TestCluster, namespace: str, alertmanager: Alertmanager  # noqa: F811 - the fixture
) -> None:
    """Labels exactly as kube-prometheus-stack's rules (release "prometheus") emit them."""
    create_daemonset(test_cluster, "log-agent", namespace)
    pods = test_cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app.kubernetes.io/name=log-agent-svc")
    pod = pods["items"][0]["metadata"]["name"]
    # kube-state-metrics' scrape target (honorLabels keeps a series' own pod and container).
    ksm = {"job": "kube-state-metrics", "endpoint": "http", "instance": "10.244.0.7:8080",
           "service": "prometheus-kube-state-metrics"}
    ksm_own_pod = {"pod": "prometheus-kube-state-metrics-6d9f7c8b5-x2x9z", "container": "kube-state-metrics"}
    cases = {
        # max_over_time(kube_pod_container_status_waiting_reason{reason="CrashLoopBackOff"}[5m]) >= 1
        "KubePodCrashLooping": {"severity": "warning", "pod": pod, "container": "agent", "reason": "CrashLoopBackOff",
                                "uid": pods["items"][0]["metadata"]["uid"], **ksm},
        # sum by (namespace, pod, container, cluster) (kube_pod_container_status_waiting_reason) > 0
        "KubeContainerWaiting": {"severity": "warning", "pod": pod, "container": "agent"},
        "KubeDaemonSetRolloutStuck": {"severity": "warning", "daemonset": "log-agent", **ksm, **ksm_own_pod},
        "KubeDaemonSetNotScheduled": {"severity": "warning", "daemonset": "log-agent", **ksm, **ksm_own_pod},
    }
    started = rfc3339(datetime.now(UTC).replace(microsecond=0))
    alertmanager.post_alerts([
        {"labels": {"alertname": name, "namespace": namespace, **labels}, "startsAt": started,
         "generatorURL": "http://prometheus.example/graph"}
        for name, labels in cases.items()
    ])

    def by_alert() -> dict[str, dict[str, Any]] | None:
        found = {item["spec"]["alertName"]: item["spec"] for item in intake_incidents(test_cluster, namespace)}
        return found if set(found) == set(cases) else None

    specs = wait_for(by_alert, timeout=90, what="an Incident per alert from Alertmanager's webhook")
    for name in cases:
        assert specs[name]["targetRef"] == {"kind": "DaemonSet", "name": "log-agent"}, name
        assert specs[name]["service"] == "log-agent-svc", name


def test_the_store_restarts_a_daemonset_once_per_attempt_and_refuses_on_delete(
    test_cluster: TestCluster, namespace: str
) -> None:
    import asyncio

    from flywheel.api.enums import ActionType, TargetKind
    from flywheel.domain.actions import ProposedAction
    from flywheel.domain.run_state import ActionNotApplicableError
    from flywheel.stores.kube import KubeApi
    from flywheel.stores.workloads import ActionResult, ActionStamp, WorkloadStore

    create_daemonset(test_cluster, "log-agent", namespace)
    restart = ProposedAction(ActionType.ROLLOUT_RESTART, TargetKind.DAEMONSET, "log-agent")

    async def apply(attempt: int, *, dry_run: bool = False) -> ActionResult:
        # A client per event loop: each asyncio.run below is a loop of its own.
        kube = KubeApi(config_file=test_cluster.kubeconfig)
        try:
            stamp = ActionStamp(run_uid=f"test-{namespace}", attempt=attempt, at=datetime.now(UTC))
            return await WorkloadStore(kube).apply(namespace, restart, stamp, dry_run=dry_run, max_replicas=10)
        finally:
            await kube.close()

    generation = get(test_cluster, namespace, "daemonset", "log-agent")["metadata"]["generation"]
    shadow = asyncio.run(apply(1, dry_run=True))
    assert shadow.dry_run and shadow.generation_after == generation + 1
    assert get(test_cluster, namespace, "daemonset", "log-agent")["metadata"]["generation"] == generation

    first = asyncio.run(apply(1))
    assert first.changed and first.generation_after == generation + 1
    again = asyncio.run(apply(1))
    assert again.already_applied and not again.changed, "a retried attempt never restarts twice"
    assert get(test_cluster, namespace, "daemonset", "log-agent")["metadata"]["generation"] == generation + 1
    second = asyncio.run(apply(2))
    assert second.changed and second.generation_after == generation + 2, "the next attempt restarts again"

    test_cluster.kubectl("patch", "daemonset", "log-agent", "-n", namespace, "--type=merge",
                         "-p", '{"spec":{"updateStrategy":{"type":"OnDelete","rollingUpdate":null}}}')
    with pytest.raises(ActionNotApplicableError, match="updateStrategy OnDelete"):
        asyncio.run(apply(3))
