"""A flapping alert escalates: repeat firings delivered to the real intake count, once each.

Scenario (real operator, real intake, real Redis, real Deployment on the local control plane):
the alert is KubePodCrashLooping with exactly the labels kube-prometheus-stack's Alertmanager
sends (kube-state-metrics series labels — the Pod's own ``pod``, ``container``, ``uid`` — the
ServiceMonitor's target labels, the rule's severity) and nothing shaped for Flywheel: the
intake finds the Deployment through the Pod's owner chain (Pod → ReplicaSet → Deployment).
The Deployment's new pods cannot be scheduled, so its restart never completes and the
Incident stays open (Mitigating) while the same Pod's alert resolves and fires again:
- five firing episodes → the same Incident, counted 5 in 24 h, escalation ESCALATE, a
  Warning AnomalyEscalated; re-sending every episode again changes nothing;
- a person resolves the Incident; the sixth episode opens the next Incident of the chain,
  whose Run requires approval because the anomaly is escalated, and waits for it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flywheel.intake import INTAKE_PATH
from tests.conftest import OperatorFactory
from tests.e2e.test_intake import TOKEN, healthy, payload, post, rfc3339
from tests.harness.cluster import TestCluster
from tests.harness.ports import free_port
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

FINGERPRINT = "5c7e9b1a2d3f4e60"
INCIDENT = f"am-kubepodcrashlooping-{FINGERPRINT}"


def crash_looping(namespace: str, pod: dict[str, Any], starts_at: datetime, status: str = "firing") -> dict[str, Any]:
    labels = {
        "alertname": "KubePodCrashLooping",
        "container": "app",
        "endpoint": "http",
        "instance": "10.244.0.17:8080",
        "job": "kube-state-metrics",
        "namespace": namespace,
        "pod": pod["metadata"]["name"],
        "reason": "CrashLoopBackOff",
        "service": "kube-prometheus-stack-kube-state-metrics",
        "severity": "warning",
        "uid": pod["metadata"]["uid"],
    }
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "Pod is crash looping."},
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(starts_at + timedelta(minutes=4)) if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example/graph",
        "fingerprint": FINGERPRINT,
    }


def unschedulable_deployment(namespace: str) -> str:
    labels = {"app": "checkout"}
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "checkout", "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "containers": [{"name": "app", "image": "registry.example/flywheel-sample:1.0"}],
                # No node carries this label: the pods stay Pending and no rollout ever completes.
                "nodeSelector": {"flywheel.dev/no-such-node": "true"},
            }},
        },
    })


def anomaly(cluster: TestCluster, namespace: str, name: str) -> dict[str, Any]:
    body = cluster.kubectl_json("get", "incident", name, "-n", namespace)
    return dict((body.get("status") or {}).get("anomaly") or {})


def test_a_flapping_alert_escalates_and_its_next_run_requires_approval(
    test_cluster: TestCluster, namespace: str, start_operator: OperatorFactory, clean_redis_url: str
) -> None:
    test_cluster.kubectl("apply", "-f", "-", input=unschedulable_deployment(namespace))
    # The Pod the alert is about: Pending for good, it is never replaced (the restart's new Pod
    # is Pending too, so the Deployment controller keeps the old one).
    pod = wait_for(lambda: next(iter(test_cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l", "app=checkout")["items"]), None), timeout=60, what="the Pod")
    port = free_port()
    start_operator(redis_url=clean_redis_url, intake_port=str(port), intake_token=TOKEN, metrics_port="0")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: healthy(base), timeout=30, what="the intake to listen")
    url = base + INTAKE_PATH

    now = datetime.now(UTC).replace(microsecond=0)
    starts = [now - timedelta(minutes=60 - 10 * episode) for episode in range(6)]
    answer = post(url, payload(crash_looping(namespace, pod, starts[0])))
    assert answer.status == 201, answer.body
    spec = test_cluster.kubectl_json("get", "incident", INCIDENT, "-n", namespace)["spec"]
    assert (spec["targetRef"], spec["service"]) == ({"kind": "Deployment", "name": "checkout"}, "checkout")
    wait_for(lambda: anomaly(test_cluster, namespace, INCIDENT).get("count24h") == 1, timeout=60,
             what="the first episode to be counted")
    for episode, starts_at in enumerate(starts[1:5], start=2):
        post(url, payload(crash_looping(namespace, pod, starts[episode - 2], status="resolved")))
        answer = post(url, payload(crash_looping(namespace, pod, starts_at)))
        assert answer.outcomes() == ["updated"], answer.body
        wait_for(lambda n=episode: anomaly(test_cluster, namespace, INCIDENT).get("count24h") == n, timeout=60,
                 what=f"episode {episode} to be counted")

    recorded = anomaly(test_cluster, namespace, INCIDENT)
    assert (recorded["count24h"], recorded["escalationLevel"]) == (5, "ESCALATE")
    body = test_cluster.kubectl_json("get", "incident", INCIDENT, "-n", namespace)
    assert body["status"]["phase"] == "Mitigating"
    events = test_cluster.kubectl_json("get", "events", "-n", namespace, "--field-selector",
                                       f"involvedObject.name={INCIDENT},reason=AnomalyEscalated")["items"]
    assert len(events) == 1 and "requires approval" in events[0]["message"]

    # Alertmanager re-sends every episode (repeat_interval): nothing more is counted.
    for starts_at in starts[:5]:
        assert post(url, payload(crash_looping(namespace, pod, starts_at))).outcomes() == ["unchanged"]
    assert anomaly(test_cluster, namespace, INCIDENT)["count24h"] == 5

    test_cluster.kubectl("patch", "incident", INCIDENT, "-n", namespace, "--type=merge",
                         "-p", '{"spec":{"resolution":{"note":"gave up on the restart"}}}')
    wait_for(lambda: (test_cluster.kubectl_json("get", "incident", INCIDENT, "-n", namespace).get("status") or {})
             .get("phase") == "Resolved", timeout=60, what="the manual resolution")

    answer = post(url, payload(crash_looping(namespace, pod, starts[5])))
    assert answer.outcomes() == ["created"], answer.body
    following = answer.body["alerts"][0]["incident"]
    assert following == f"{INCIDENT}-2"
    run = wait_for(lambda: next(iter(test_cluster.kubectl_json(
        "get", "runs", "-n", namespace, "-l", f"flywheel.dev/incident={following}")["items"]), None),
        timeout=60, what="the next Run")
    assert run["spec"]["requiresApproval"] is True
    # The Run is created before the pass that decided it records the anomaly and the decision on
    # the Incident's status (a conflict on that write makes the pass read again and repeat it).
    status = wait_for(lambda: (body := (test_cluster.kubectl_json("get", "incident", following, "-n", namespace)
                                        .get("status") or {})).get("decision") and body,
                      timeout=60, what="the next Incident's decision on its status")
    assert status["anomaly"]["escalationLevel"] == "ESCALATE"
    decision = status["decision"]
    assert "escalated (ESCALATE)" in decision["reasoning"]
    wait_for(lambda: (test_cluster.kubectl_json("get", "run", run["metadata"]["name"], "-n", namespace)
                      .get("status") or {}).get("state") == "WaitingApproval", timeout=60,
             what="the Run to wait for approval")
