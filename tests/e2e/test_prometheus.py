"""A real Prometheus scrapes the real operator; PromQL sees what happened in the cluster.

Scenario: the operator runs with its metrics server on a free loopback port and a snapshot
every 2 s; /usr/bin/prometheus scrapes it every second and loads the shipped PrometheusRule.
Then, through kubectl as an SRE would:

- three Incidents of one anomaly: the first requires approval (its Run waits, so it stays
  active) and the next two become Duplicates; an Incident of a second anomaly remediated
  automatically; one Incident without an alertName whose remediation is Off (it waits);
- PromQL then returns: the first anomaly's 24 h occurrences (3) and its escalation level
  (REPEAT), Incidents opened (5, from the history projection), the one waiting without a
  Run, the two Duplicates as deduplication activity, the alertname-null rate (1 of 5), an
  execution success rate of NaN (too few executions), Redis and the database up, the
  replica active;
- the automatic Run restarts its Deployment and succeeds while the other waits for
  approval: Runs by state, the funnel's runs started / executed / passed / resolved stages,
  the run-duration histogram and the execution node's activity follow;
- the rules from the PrometheusRule load and evaluate without error in a real Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import OperatorFactory
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.prometheus import PrometheusServer, free_port, is_nan, prometheus_server
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_RULE = ROOT / "manifests" / "monitoring" / "prometheusrule.yaml"
# Snapshots every 2 s, scrapes every 1 s: a figure reaches PromQL within seconds of the
# cluster changing; the deadline covers a loaded machine.
DEADLINE = 90.0


def incident(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "alertName": "KubePodOOMKilled", "service": "checkout", "errorType": "OOMKilled", "severity": "P2",
        "source": "alertmanager", "summary": "checkout pods were OOM-killed",
        "targetRef": {"kind": "Deployment", "name": "checkout"},
    }
    body.update(spec)
    return {"apiVersion": "flywheel.dev/v1alpha1", "kind": "Incident", "metadata": {"name": name}, "spec": body}


def wait_for_value(prometheus: PrometheusServer, expr: str, expected: float) -> None:
    wait_for(lambda: prometheus.value(expr) == expected, timeout=DEADLINE,
             what=f"{expr} == {expected} (last: {prometheus.value(expr)})")


@pytest.fixture()
def rules_file(tmp_path: Path) -> Path:
    manifest = yaml.safe_load(PROMETHEUS_RULE.read_text())
    path = tmp_path / "flywheel-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}))
    return path


def apply(cluster: TestCluster, namespace: str, *documents: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input="\n---\n".join(json.dumps(document) for document in documents))


def test_prometheus_sees_incidents_anomalies_and_runs(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory,
    rules_file: Path,
) -> None:
    create_deployment(test_cluster, "checkout", namespace, replicas=1)
    create_deployment(test_cluster, "payments", namespace, replicas=1)
    port = free_port()
    start_operator(redis_url=clean_redis_url, metrics_port=str(port), metrics_interval_seconds="2",
                   metrics_bind_address="127.0.0.1")
    with prometheus_server([f"127.0.0.1:{port}"], rule_files=[rules_file]) as prometheus:
        wait_for_value(prometheus, "flywheel_active", 1)

        # The first OOM Incident's Run waits for approval, so the Incident stays active and the
        # next two of the same anomaly are Duplicates whatever the timing.
        apply(test_cluster, namespace, incident("oom-1", remediation={"mode": "RequireApproval"}))
        wait_for(lambda: (test_cluster.kubectl_json("get", "incident", "oom-1", "-n", namespace)
                          .get("status") or {}).get("runRef"), timeout=DEADLINE, what="oom-1 has a Run")
        apply(test_cluster, namespace, incident("oom-2"), incident("oom-3"))
        # A second anomaly on another workload is remediated automatically.
        apply(test_cluster, namespace, incident("crash-1", alertName="KubePodCrashLooping", service="payments",
                                                errorType="CrashLoopBackOff",
                                                targetRef={"kind": "Deployment", "name": "payments"}))
        # No alertName, remediation Off: it waits without a Run.
        apply(test_cluster, namespace, incident("latency-off", alertName=None, errorType="Timeout",
                                                summary="slow checkout", remediation={"mode": "Off"}))

        wait_for_value(prometheus, 'flywheel_anomaly_occurrences{window="24h",alertname="KubePodOOMKilled"}', 3)
        wait_for_value(prometheus, 'flywheel_anomaly_keys{level="REPEAT"}', 1)
        wait_for_value(prometheus, 'flywheel_funnel_stage{stage="opened"}', 5)
        wait_for_value(prometheus, "flywheel_funnel_open_waiting", 1)
        wait_for_value(prometheus, 'flywheel_node_activity{node="deduplication"}', 2)
        wait_for_value(prometheus, "flywheel_alertname_null_rate", 0.2)
        wait_for_value(prometheus, "flywheel_processed_today", 5)
        wait_for_value(prometheus, "flywheel_redis_up", 1)
        wait_for_value(prometheus, "flywheel_database_up", 1)
        assert prometheus.value("flywheel_playbooks") == 5
        assert is_nan(prometheus.value("flywheel_execution_success_rate")), "too few executions: NaN, not 0"
        assert prometheus.value("flywheel_snapshot_timestamp_seconds") is not None

        # crash-1's Run restarts payments, verifies the rollout and resolves its Incident;
        # oom-1's Run waits for a person.
        wait_for_value(prometheus, 'flywheel_runs{state="Succeeded"}', 1)
        wait_for_value(prometheus, 'flywheel_runs{state="WaitingApproval"}', 1)
        wait_for_value(prometheus, 'flywheel_funnel_stage{stage="runs_started"}', 2)
        wait_for_value(prometheus, 'flywheel_funnel_stage{stage="executed"}', 1)
        wait_for_value(prometheus, 'flywheel_funnel_stage{stage="verification_passed"}', 1)
        wait_for_value(prometheus, 'flywheel_funnel_stage{stage="resolved"}', 1)
        wait_for_value(prometheus, 'flywheel_run_duration_seconds_count{state="Succeeded"}', 1)
        wait_for_value(prometheus, 'flywheel_node_activity{node="execution"}', 1)
        # The attempt and the resolution reach the history: actions, learning, knowledge.
        wait_for_value(prometheus, 'flywheel_actions_total{type="RolloutRestart",mode="Auto",result="succeeded"}', 1)
        wait_for_value(prometheus, 'flywheel_node_activity{node="learning"}', 1)
        wait_for_value(prometheus, "flywheel_knowledge_entries", 1)
        # The success rate per action after one verified restart: 1 of 1.
        wait_for_value(prometheus, 'flywheel_repair_attempts{action="RolloutRestart"}', 1)
        assert prometheus.value('flywheel_repair_success_rate{action="RolloutRestart"}') == 1.0
        assert is_nan(prometheus.value('flywheel_repair_success_rate{action="Scale"}')), "never executed: NaN"
        assert prometheus.value('flywheel_funnel_stall{rule="RESOLVE_STALL"}') == 0
        assert prometheus.value("sum(flywheel_runs)") == 2  # the Duplicates never got a Run

        groups = prometheus.api("/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == sum(len(group["rules"]) for group in yaml.safe_load(rules_file.read_text())["groups"])
        assert all(rule["health"] == "ok" for rule in rules), [r for r in rules if r["health"] != "ok"]
        wait_for(lambda: all(rule.get("lastEvaluation", "").startswith("2")
                             and not rule["lastEvaluation"].startswith("0001")
                             for rule in (r for g in prometheus.api("/api/v1/rules")["groups"] for r in g["rules"])),
                 timeout=DEADLINE, what="every rule evaluated once")
