"""The Incident loop on the real control plane, driven with kubectl as an SRE would.

Scenario matrix:
- an Incident gets an anomaly key, counts, a decision (DEC-…, rules) and a Run owned by it;
- the same anomaly while the first is active → Duplicate, counted, no second Run;
- the anomaly claim (a Lease) is owned by the Incident that holds it: taken over by the
  next Incident once the first is resolved, and collected when its holder is deleted;
- recurrences escalate: ESCALATE → the Run requires approval; PERMANENT_FIX without a
  permanent fix → approval required and a Warning Event "needs a permanent fix";
- manual resolution → Resolved with disposition manual_resolved;
- remediation.mode Off → a decision but no Run;
- a P0 whose advisors disagree, or time out, falls back to the rules with the reason kept;
- Redis stopped mid-way → the Incident is still processed (degraded), and its
  occurrence is recorded exactly once when Redis is back.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from pytest_redis.executor import RedisExecutor

from tests.conftest import OperatorFactory
from tests.e2e.workloads import create_deployment
from tests.harness.advisor_server import AdvisorBehaviour, advisor_server
from tests.harness.cluster import TestCluster
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e


def incident_manifest(name: str, **spec: Any) -> str:
    body: dict[str, Any] = {
        "alertName": "KubePodOOMKilled",
        "service": "checkout",
        "errorType": "OOMKilled",
        "severity": "P2",
        "source": "alertmanager",
        "summary": "checkout pods were OOM-killed",
        "targetRef": {"kind": "Deployment", "name": "checkout"},
    }
    body.update(spec)
    return json.dumps({"apiVersion": "flywheel.dev/v1alpha1", "kind": "Incident",
                       "metadata": {"name": name}, "spec": body})


def apply_incident(cluster: TestCluster, namespace: str, name: str, **spec: Any) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=incident_manifest(name, **spec))


def incident(cluster: TestCluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.kubectl_json("get", "incident", name, "-n", namespace)


def status_of(cluster: TestCluster, namespace: str, name: str) -> dict[str, Any]:
    return incident(cluster, namespace, name).get("status") or {}


def wait_for_phase(cluster: TestCluster, namespace: str, name: str, *phases: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        lambda: (s := status_of(cluster, namespace, name)).get("phase") in phases and s,
        timeout=timeout, what=f"incident {name} in phase {phases}",
    )


def condition(status: dict[str, Any], condition_type: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == condition_type)


def events_for(cluster: TestCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items = cluster.kubectl_json("get", "events", "-n", namespace,
                                 "--field-selector", f"involvedObject.name={name}")["items"]
    return items  # type: ignore[no-any-return]


@pytest.fixture()
def workload(test_cluster: TestCluster, namespace: str) -> str:
    create_deployment(test_cluster, "checkout", namespace, replicas=1)
    return "checkout"


def test_incident_gets_counts_a_decision_and_a_run(
    test_cluster: TestCluster, namespace: str, workload: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    start_operator(redis_url=clean_redis_url)
    apply_incident(test_cluster, namespace, "oom-1")
    status = wait_for_phase(test_cluster, namespace, "oom-1", "Mitigating")

    anomaly = status["anomaly"]
    assert len(anomaly["key"]) == 16
    assert (anomaly["count1h"], anomaly["count24h"], anomaly["count7d"], anomaly["count30d"]) == (1, 1, 1, 1)
    assert anomaly["degraded"] is False
    decision = status["decision"]
    assert decision["id"].startswith("DEC-") and len(decision["id"]) == 16
    assert (decision["source"], decision["matchedRule"], decision["action"]["type"]) == (
        "rules", "pod_crash", "RolloutRestart")
    assert decision["confidence"] == 0.75
    assert condition(status, "AnomalyRecorded")["status"] == "True"
    assert condition(status, "Decided")["observedGeneration"] == 1

    run = test_cluster.kubectl_json("get", "run", status["runRef"]["name"], "-n", namespace)
    owner = run["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Incident", "oom-1", True)
    action = run["spec"]["action"]
    assert (action["type"], action["target"]) == ("RolloutRestart", {"kind": "Deployment", "name": "checkout"})
    assert not action.get("params"), "a restart takes no parameters"
    assert run["spec"]["requiresApproval"] is False
    assert len(run["spec"]["traceId"]) == 32

    listing = test_cluster.kubectl("get", "flywheel", "-n", namespace).stdout
    assert "incident.flywheel.dev/oom-1" in listing and f"run.flywheel.dev/{status['runRef']['name']}" in listing
    described = test_cluster.kubectl("describe", "incident", "oom-1", "-n", namespace).stdout
    assert "DecisionReady" in described and "pod_crash" in described


def test_same_anomaly_while_active_is_a_duplicate_without_a_second_run(
    test_cluster: TestCluster, namespace: str, workload: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    start_operator(redis_url=clean_redis_url)
    apply_incident(test_cluster, namespace, "first")
    wait_for_phase(test_cluster, namespace, "first", "Mitigating")
    apply_incident(test_cluster, namespace, "second", source="oncall-alice")
    status = wait_for_phase(test_cluster, namespace, "second", "Duplicate")

    assert status["duplicateOf"] == "first"
    assert status["anomaly"]["count24h"] == 2, "the duplicate's signal is counted"
    assert "runRef" not in status or status["runRef"] is None
    runs = test_cluster.kubectl_json("get", "runs", "-n", namespace)["items"]
    assert [r["spec"]["incidentRef"]["name"] for r in runs] == ["first"]


def anomaly_lease(cluster: TestCluster, namespace: str, key: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", "lease", f"flywheel-anomaly-{key}", "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def test_the_anomaly_claim_goes_with_the_incident_that_holds_it(
    test_cluster: TestCluster, namespace: str, workload: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    start_operator(redis_url=clean_redis_url)
    apply_incident(test_cluster, namespace, "first", remediation={"mode": "Shadow"})
    key = wait_for_phase(test_cluster, namespace, "first", "Mitigating", "Resolved")["anomaly"]["key"]
    lease = anomaly_lease(test_cluster, namespace, key)
    assert lease is not None
    first_uid = incident(test_cluster, namespace, "first")["metadata"]["uid"]
    assert [(o["kind"], o["name"], o["uid"]) for o in lease["metadata"]["ownerReferences"]] == [
        ("Incident", "first", first_uid)]

    test_cluster.kubectl("patch", "incident", "first", "-n", namespace, "--type=merge",
                         "-p", json.dumps({"spec": {"resolution": {"note": "fixed by hand"}}}))
    wait_for_phase(test_cluster, namespace, "first", "Resolved")
    apply_incident(test_cluster, namespace, "second", remediation={"mode": "Shadow"})
    second = wait_for_phase(test_cluster, namespace, "second", "Mitigating", "Resolved", "Duplicate")
    assert second["phase"] != "Duplicate", "a resolved holder gives the claim up"
    second_uid = incident(test_cluster, namespace, "second")["metadata"]["uid"]
    lease = anomaly_lease(test_cluster, namespace, key)
    assert lease is not None and lease["spec"]["holderIdentity"] == second_uid
    assert [o["uid"] for o in lease["metadata"]["ownerReferences"]] == [second_uid]

    test_cluster.kubectl("delete", "incident", "first", "-n", namespace)
    test_cluster.kubectl("delete", "incident", "second", "-n", namespace)
    wait_for(lambda: anomaly_lease(test_cluster, namespace, key) is None, timeout=30,
             what="the claim Lease collected with its holder")


def test_escalation_requires_approval_and_permanent_fix_warns(
    test_cluster: TestCluster, namespace: str, workload: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    start_operator(redis_url=clean_redis_url, repeat_threshold="1", escalate_threshold="2", permanent_fix_threshold="3")
    levels = []
    for number in (1, 2, 3):
        name = f"oom-{number}"
        apply_incident(test_cluster, namespace, name)
        status = wait_for_phase(test_cluster, namespace, name, "Mitigating")
        levels.append(status["anomaly"]["escalationLevel"])
        run = test_cluster.kubectl_json("get", "run", status["runRef"]["name"], "-n", namespace)
        assert run["spec"]["requiresApproval"] is (number >= 2), (number, status["decision"]["reasoning"])
        # Resolve it by hand so the next one is not a duplicate of it.
        test_cluster.kubectl("patch", "incident", name, "-n", namespace, "--type=merge",
                             "-p", json.dumps({"spec": {"resolution": {"note": "restarted by hand"}}}))
        resolved = wait_for_phase(test_cluster, namespace, name, "Resolved")
        assert resolved["disposition"] == "manual_resolved"
    assert levels == ["REPEAT", "ESCALATE", "PERMANENT_FIX"]
    warnings = [e for e in events_for(test_cluster, namespace, "oom-3") if e["type"] == "Warning"]
    assert any(e["reason"] == "NeedsPermanentFix" and "needs a permanent fix" in e["message"] for e in warnings)


def test_mode_off_decides_but_starts_no_run(
    test_cluster: TestCluster, namespace: str, workload: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    start_operator(redis_url=clean_redis_url)
    apply_incident(test_cluster, namespace, "quiet", remediation={"mode": "Off"})
    status = wait_for(lambda: status_of(test_cluster, namespace, "quiet").get("decision") and
                      status_of(test_cluster, namespace, "quiet"), timeout=30, what="decision")
    assert status["phase"] == "Investigating"
    assert condition(status, "RemediationStarted")["reason"] == "RemediationOff"
    assert test_cluster.kubectl_json("get", "runs", "-n", namespace)["items"] == []


def test_p0_advisors_that_disagree_or_time_out_fall_back_to_rules(
    test_cluster: TestCluster, namespace: str, workload: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    scale = {"action": "Scale", "target": {"kind": "Deployment", "name": "checkout"},
             "params": {"replicas": 3}, "confidence": 0.9, "reasoning": "more capacity"}
    restart = {"action": "RolloutRestart", "target": {"kind": "Deployment", "name": "checkout"},
               "params": {}, "confidence": 0.8, "reasoning": "clear the leak"}
    slow = AdvisorBehaviour(proposal=scale, delay_seconds=8)
    with advisor_server(AdvisorBehaviour(proposal=scale)) as first, \
            advisor_server(AdvisorBehaviour(proposal=restart)) as second:
        operator = start_operator(
            redis_url=clean_redis_url, advisor_urls=f"{first},{second}", advisor_timeout_seconds="3"
        )
        apply_incident(test_cluster, namespace, "tie", severity="P0", alertName="CheckoutLatencyHigh")
        tie = wait_for_phase(test_cluster, namespace, "tie", "Mitigating")["decision"]
        assert tie["source"] == "rules" and tie["matchedRule"] == "high_latency"
        assert tie["error"], "the reason the advisors were not used is kept"
        operator.stop()

    with advisor_server(slow) as late:
        start_operator(redis_url=clean_redis_url, advisor_urls=late, advisor_timeout_seconds="2")
        apply_incident(test_cluster, namespace, "late", severity="P0", alertName="CheckoutErrorBudgetBurn",
                       service="payments")
        late_decision = wait_for_phase(test_cluster, namespace, "late", "Mitigating", timeout=40)["decision"]
        assert late_decision["source"] == "rules"
        assert "time" in late_decision["error"].lower()






def test_redis_down_then_back_records_exactly_once(
    test_cluster: TestCluster, namespace: str, workload: str, own_redis: RedisExecutor,
    start_operator: OperatorFactory,
) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    start_operator(redis_url=url, redis_timeout_seconds="0.5")
    own_redis.stop()

    apply_incident(test_cluster, namespace, "blind")
    status = wait_for_phase(test_cluster, namespace, "blind", "Mitigating")
    assert status["anomaly"]["degraded"] is True
    assert condition(status, "AnomalyRecorded") | {} and condition(status, "AnomalyRecorded")["reason"] == "RedisUnavailable"
    assert status["runRef"]["name"], "the Incident is processed without Redis"

    own_redis.start()
    recovered = wait_for(
        lambda: (s := status_of(test_cluster, namespace, "blind"))["anomaly"]["degraded"] is False and s,
        timeout=60, what="degraded flag cleared",
    )
    assert recovered["anomaly"]["count24h"] == 1
    assert condition(recovered, "AnomalyRecorded")["status"] == "True"
    client = redis.Redis.from_url(url)
    timelines = [k for k in client.scan_iter("*anomaly:timeline:*")]
    assert len(timelines) == 1 and client.zcard(timelines[0]) == 1, "recorded once, not twice"
    client.close()


def test_a_burst_of_the_same_anomaly_starts_exactly_one_run(
    test_cluster: TestCluster, namespace: str, workload: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    start_operator(redis_url=clean_redis_url)
    # One kubectl call: the three Incidents reach the operator faster than its cache fills.
    burst = "\n---\n".join(incident_manifest(f"burst-{n}", remediation={"mode": "RequireApproval"})
                           for n in (1, 2, 3))
    test_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=burst)
    phases = wait_for(
        lambda: (p := sorted(str(status_of(test_cluster, namespace, f"burst-{n}").get("phase")) for n in (1, 2, 3)))
        and "None" not in p and p,
        timeout=30, what="all three processed",
    )
    assert phases.count("Duplicate") == 2, phases
    runs = test_cluster.kubectl_json("get", "runs", "-n", namespace)["items"]
    assert len(runs) == 1
