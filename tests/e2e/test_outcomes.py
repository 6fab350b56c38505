"""Outcomes that count, on the real chain: an application metric → Prometheus alert rule →
Alertmanager → the intake → Incident → decision → Run → the workload → verification of the symptom.

The test serves the application's metric over HTTP (``checkout_crashing``, 1 while the
application is unwell); a real Prometheus scrapes it every second and evaluates the alert rule
``CheckoutCrashing`` every second; the real Alertmanager (group_wait and group_interval 1 s)
notifies the intake of the real operator, which also asks that Prometheus for ``ALERTS`` at
the end of each verification window (a short window, set through the environment):

(a) the metric heals once the Deployment was restarted → the alert resolves → Run Succeeded,
    the journal's verify step naming its evidence;
(b) it does not heal → Failed E-SYMPTOM-PERSISTS → the Incident's second decision, whose Run
    waits for approval; (c) the alert then resolves while it waits, and an approver approves →
    Cancelled E-ALREADY-RESOLVED, the Deployment untouched;
(d) failures up to FLYWHEEL_MAX_DECISIONS_PER_INCIDENT → NotRemediated and a Warning Event.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import OperatorFactory
from tests.e2e.test_approvals import APPROVER, APPROVERS, NotificationReceiver, decide, wait_for_webhooks
from tests.e2e.test_intake import TOKEN, Alertmanager, healthy
from tests.e2e.test_intake import alertmanager as alertmanager_fixture
from tests.e2e.test_runs import events_for, get, run_status, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.operator import OperatorProcess
from tests.harness.ports import free_port
from tests.harness.prometheus import PrometheusServer, prometheus_server
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

ALERT = "CheckoutCrashing"
WINDOW_SECONDS = "20"
DEADLINE = 120.0
alertmanager = alertmanager_fixture  # the real Alertmanager routing to the intake (test_intake's fixture)


class AppMetric:
    """The application's own metric, served over HTTP for Prometheus to scrape."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.crashing = 1
        metric = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (
                    "# TYPE checkout_crashing gauge\n"
                    f'checkout_crashing{{namespace="{metric.namespace}",deployment="checkout"}} {metric.crashing}\n'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                """Quiet: the stdlib would print every scrape to stderr."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Chain:
    operator: OperatorProcess
    metric: AppMetric
    prometheus_port: int


@pytest.fixture()
def prometheus_port() -> int:
    return free_port()


@pytest.fixture()
def operator_settings() -> dict[str, str]:
    return {}


@pytest.fixture()
def notifications() -> Iterator[NotificationReceiver]:
    """A real HTTP receiver for the operator's notification webhook (JSON format)."""
    receiver = NotificationReceiver()
    yield receiver
    receiver.close()


@pytest.fixture()
def intake_url(
    start_operator: OperatorFactory, clean_redis_url: str, test_cluster: TestCluster, namespace: str,
    prometheus_port: int, operator_settings: dict[str, str], notifications: NotificationReceiver,
) -> Iterator[str]:
    """The operator (intake, webhooks for approvals, Prometheus for the symptom), before Alertmanager."""
    create_deployment(test_cluster, "checkout", namespace)
    port = free_port()
    operator = start_operator(
        redis_url=clean_redis_url, intake_port=str(port), intake_token=TOKEN, metrics_port="0",
        webhook_mode="loopback", webhook_port="0", approver_groups=APPROVERS,
        prometheus_url=f"http://127.0.0.1:{prometheus_port}", notify_webhook_url=notifications.url,
        **{"verification_window_seconds": WINDOW_SECONDS, **operator_settings},
    )
    wait_for_webhooks(test_cluster, namespace, operator)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: healthy(base), timeout=30, what="the intake to listen")
    yield base + "/intake/alertmanager"


@pytest.fixture()
def chain(
    alertmanager: Alertmanager, namespace: str, prometheus_port: int, tmp_path: Path
) -> Iterator[tuple[AppMetric, PrometheusServer]]:
    metric = AppMetric(namespace)
    rules = tmp_path / "app-rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "checkout", "interval": "1s", "rules": [{
        "alert": ALERT, "expr": "checkout_crashing > 0", "for": "0s",
        "labels": {"severity": "warning"},
        "annotations": {"summary": "checkout pods keep crashing"},
    }]}]}))
    with prometheus_server([metric.address], rule_files=[rules], job="checkout", port=prometheus_port,
                           alertmanagers=[alertmanager.url.removeprefix("http://")]) as prometheus:
        try:
            yield metric, prometheus
        finally:
            metric.close()


def the_incident(cluster: TestCluster, namespace: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        items = cluster.kubectl_json("get", "incidents", "-n", namespace)["items"]
        return next((i for i in items if i["spec"].get("alertName") == ALERT and (i.get("status") or {}).get("runRef")),
                    None)

    return wait_for(found, timeout=DEADLINE, what=f"an Incident for {ALERT} with a Run")


def signals_resolved(cluster: TestCluster, namespace: str, name: str) -> bool:
    """Every firing episode has its resolved signal (the intake appends one beside the firing one)."""
    signals = get(cluster, namespace, "incident", name)["spec"].get("signals") or []
    episodes = {(s["fingerprint"], s["startsAt"]) for s in signals}
    resolved = {(s["fingerprint"], s["startsAt"]) for s in signals if s["status"] == "resolved"}
    return bool(episodes) and episodes == resolved


def verify_step(status: dict[str, Any]) -> dict[str, Any]:
    return [s for s in status["steps"] if s["name"] == "verify"][-1]


def restarted(cluster: TestCluster, namespace: str) -> bool:
    annotations = get(cluster, namespace, "deployment", "checkout")["spec"]["template"]["metadata"].get("annotations")
    return bool(annotations and "flywheel.dev/restartedAt" in annotations)


def test_a_healed_metric_resolves_the_alert_and_the_run_succeeds(
    test_cluster: TestCluster, namespace: str, chain: tuple[AppMetric, PrometheusServer]
) -> None:
    metric, prometheus = chain
    incident = the_incident(test_cluster, namespace)
    run = incident["status"]["runRef"]["name"]
    wait_for(lambda: restarted(test_cluster, namespace), timeout=DEADLINE, what="checkout restarted")
    metric.crashing = 0  # the restart fixed it
    wait_for(lambda: not prometheus.query(f'ALERTS{{alertname="{ALERT}",alertstate="firing"}}'), timeout=DEADLINE,
             what="the alert to resolve in Prometheus")
    status = wait_for_run(test_cluster, namespace, run, "Succeeded", "Failed", timeout=DEADLINE)
    assert status["state"] == "Succeeded", status
    step = verify_step(status)
    assert step["result"] == "Succeeded" and step["message"].startswith("evidence prometheus"), step
    assert [s["result"] for s in status["steps"] if s["name"] == "verify"] == ["RolloutComplete", "Succeeded"]
    resolved = get(test_cluster, namespace, "incident", incident["metadata"]["name"])["status"]
    assert resolved["phase"] == "Resolved" and resolved["decision"]["state"] == "Completed", resolved


def test_a_persisting_symptom_climbs_the_ladder_and_a_resolved_alert_is_not_acted_on(
    test_cluster: TestCluster, namespace: str, chain: tuple[AppMetric, PrometheusServer]
) -> None:
    metric, _ = chain
    incident = the_incident(test_cluster, namespace)
    name = incident["metadata"]["name"]
    first = wait_for_run(test_cluster, namespace, f"{name}-1", "Succeeded", "Failed", timeout=DEADLINE)
    assert (first["state"], first["errorCode"]) == ("Failed", "E-SYMPTOM-PERSISTS"), first
    assert "still firing" in verify_step(first)["message"]

    # (b) the second decision, which waits for a person.
    wait_for_run(test_cluster, namespace, f"{name}-2", "WaitingApproval", timeout=DEADLINE)
    second = wait_for(lambda: (s := run_status(test_cluster, namespace, f"{name}-2")).get("approvalRef") and s,
                      timeout=DEADLINE, what="the second Run's Approval")
    status = get(test_cluster, namespace, "incident", name)["status"]
    assert (status["decision"]["sequence"], status["runRef"]["name"]) == (2, f"{name}-2"), status
    assert get(test_cluster, namespace, "run", f"{name}-2")["spec"]["requiresApproval"] is True
    assert second["approvalRef"]["name"] == f"{name}-2"

    # (c) the alert resolves while the Run waits; then an approver approves.
    metric.crashing = 0
    wait_for(lambda: signals_resolved(test_cluster, namespace, name), timeout=DEADLINE,
             what="Alertmanager's resolved notification on the Incident")
    before = get(test_cluster, namespace, "deployment", "checkout")
    decide(test_cluster, namespace, f"{name}-2", "Approve", "restart it again", APPROVER, APPROVERS)
    cancelled = wait_for_run(test_cluster, namespace, f"{name}-2", "Cancelled", "Verifying", "Succeeded",
                             "Failed", timeout=DEADLINE)
    assert (cancelled["state"], cancelled["errorCode"]) == ("Cancelled", "E-ALREADY-RESOLVED"), cancelled
    after = get(test_cluster, namespace, "deployment", "checkout")
    assert after["metadata"]["generation"] == before["metadata"]["generation"], "the workload is not touched"
    assert after["spec"]["template"] == before["spec"]["template"]
    decision = get(test_cluster, namespace, "incident", name)["status"]["decision"]
    assert decision["state"] == "Error" and "E-ALREADY-RESOLVED" in decision["error"], decision


@pytest.mark.parametrize(
    "operator_settings",
    [{"max_decisions_per_incident": "2", "ladder_requires_approval": "false", "verification_window_seconds": "5"}],
)
def test_failures_up_to_the_cap_leave_the_incident_not_remediated(
    test_cluster: TestCluster, namespace: str, chain: tuple[AppMetric, PrometheusServer],
    operator_settings: dict[str, str], notifications: NotificationReceiver,
) -> None:
    incident = the_incident(test_cluster, namespace)
    name = incident["metadata"]["name"]
    for sequence in (1, 2):
        status = wait_for_run(test_cluster, namespace, f"{name}-{sequence}", "Succeeded", "Failed", "WaitingApproval",
                              timeout=DEADLINE)
        assert (status["state"], status.get("errorCode")) == ("Failed", "E-SYMPTOM-PERSISTS"), status

    def not_remediated() -> dict[str, Any] | None:
        status = get(test_cluster, namespace, "incident", name)["status"]
        return status if status.get("phase") == "NotRemediated" else None

    status = wait_for(not_remediated, timeout=DEADLINE, what="the Incident NotRemediated")
    started = next(c for c in status["conditions"] if c["type"] == "RemediationStarted")
    assert started["reason"] == "LadderExhausted", started
    events = wait_for(
        lambda: [e for e in events_for(test_cluster, namespace, name) if e["reason"] == "LadderExhausted"] or None,
        timeout=30, what="the LadderExhausted Warning Event",
    )
    assert events[0]["type"] == "Warning"
    runs = test_cluster.kubectl_json("get", "runs", "-n", namespace)["items"]
    assert sorted(r["metadata"]["name"] for r in runs) == [f"{name}-1", f"{name}-2"], "no third Run"

    # A real HTTP receiver got each step once: two decisions, two finished Runs, the exhausted ladder.
    def kinds() -> list[str]:
        return sorted(n["kind"] for n in notifications.received if n["details"].get("incident", name) == name)

    expected = sorted(["decision_ready"] * 2 + ["run_finished"] * 2 + ["ladder_exhausted"])
    wait_for(lambda: kinds() == expected or None, timeout=60, what=f"the notifications {expected}, got {kinds()}")
    finished = [n for n in notifications.received if n["kind"] == "run_finished"]
    assert sorted(n["details"]["errorCode"] for n in finished) == ["E-SYMPTOM-PERSISTS"] * 2
