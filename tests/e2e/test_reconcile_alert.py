"""Failing passes seen by a real Prometheus, and the shipped FlywheelReconcileErrors alert firing.

A cluster policy (a real ValidatingAdmissionPolicy, ``reason: Forbidden``) refuses every Run
created in the test's namespace with 403, so the Incident's pass fails on each try — not an
invalid write (those stall), but a refusal that may be lifted. The operator's metrics are
scraped every second by /usr/bin/prometheus loaded with the shipped PrometheusRule, its
``for: 15m`` shortened to 1 s (the expression is the shipped one; ``for`` is Prometheus' own
semantics).

Scenario matrix:
- the failing Incident: ``flywheel_reconcile_failing_objects{kind="incidents"}`` 1, its
  passes counted as ``deferred`` more than once (retried with backoff) with reason
  ``ForbiddenError``, retries counted, the pass-duration histogram filled, and the
  FlywheelReconcileErrors alert firing for kind ``incidents``;
- the policy lifted: the next try creates the Run, the failing count drops to 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import OperatorFactory
from tests.e2e.test_invalid_writes import frozen_runs_policy, wait_until_runs_are
from tests.e2e.test_runs import apply_incident, get
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.prometheus import PrometheusServer, free_port, prometheus_server
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_RULE = ROOT / "manifests" / "monitoring" / "prometheusrule.yaml"
DEADLINE = 90.0


@pytest.fixture()
def rules_with_short_for(tmp_path: Path) -> Path:
    groups = yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"]
    for group in groups:
        for rule in group["rules"]:
            if rule.get("alert") == "FlywheelReconcileErrors":
                assert rule["for"] == "15m"
                rule["for"] = "1s"
    path = tmp_path / "flywheel-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def firing(prometheus: PrometheusServer, alert: str) -> list[dict[str, Any]]:
    alerts = prometheus.api("/api/v1/alerts")["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == alert and a["state"] == "firing"]


def test_failing_passes_are_counted_and_fire_the_reconcile_errors_alert(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory,
    rules_with_short_for: Path,
) -> None:
    policy = f"flywheel-test-{namespace}-forbidden-runs"
    test_cluster.kubectl("apply", "-f", "-", input=frozen_runs_policy(policy, namespace, reason="Forbidden"))
    try:
        wait_until_runs_are(test_cluster, namespace, refused=True)
        create_deployment(test_cluster, "checkout", namespace)
        port = free_port()
        start_operator(redis_url=clean_redis_url, metrics_port=str(port), metrics_interval_seconds="2",
                       metrics_bind_address="127.0.0.1")
        with prometheus_server([f"127.0.0.1:{port}"], rule_files=[rules_with_short_for]) as prometheus:
            apply_incident(test_cluster, namespace, "checkout-oom", "checkout")

            wait_for(lambda: prometheus.value('flywheel_reconcile_failing_objects{kind="incidents"}') == 1,
                     timeout=DEADLINE, what="the Incident counted as failing")
            wait_for(lambda: (prometheus.value('flywheel_reconcile_passes_total{kind="incidents",result="deferred"}')
                              or 0) >= 2, timeout=DEADLINE, what="the failing pass tried again")
            assert (prometheus.value('flywheel_reconcile_pass_errors_total{kind="incidents",reason="ForbiddenError"}')
                    or 0) >= 2
            assert (prometheus.value('flywheel_reconcile_retries_total{kind="incidents"}') or 0) >= 2
            assert (prometheus.value('flywheel_reconcile_pass_duration_seconds_count{kind="incidents"}') or 0) >= 2
            alerts = wait_for(lambda: firing(prometheus, "FlywheelReconcileErrors"), timeout=DEADLINE,
                              what="FlywheelReconcileErrors firing")
            assert alerts[0]["labels"]["kind"] == "incidents"
            assert alerts[0]["labels"]["severity"] == "warning"

            for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
                test_cluster.kubectl("delete", kind, policy)
            wait_until_runs_are(test_cluster, namespace, refused=False)
            wait_for(lambda: (get(test_cluster, namespace, "incident", "checkout-oom").get("status") or {})
                     .get("runRef"), timeout=DEADLINE, what="the Run created once the policy is lifted")
            wait_for(lambda: prometheus.value('flywheel_reconcile_failing_objects{kind="incidents"}') == 0,
                     timeout=DEADLINE, what="no failing Incident any more")
    finally:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            test_cluster.kubectl("delete", kind, policy, "--ignore-not-found", check=False)
