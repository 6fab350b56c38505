"""Namespaces opt in to remediation (issue 17, item 7), on the real control plane.

Scenario matrix (one operator reconciling an unlabelled namespace and its own namespace, which
is labelled but protected and not listed):
- start-up logs the scope Flywheel acts in;
- an Incident in the unlabelled namespace is recorded and decided, its Run is Cancelled with
  E-NAMESPACE-NOT-ENABLED, a Warning Event says why, the Incident is marked not remediated and
  the Deployment is untouched; labelled afterwards, the next Incident's Run acts (the label comes
  from the namespace watch);
- an Incident in the operator's own namespace is refused although it carries the label;
- the intake refuses alerts for both namespaces with the reason, counted in
  flywheel_intake_alerts_refused_total{reason="namespace_not_enabled"} and logged.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_intake import INTAKE_PATH, TOKEN, alert, healthy, payload, post
from tests.e2e.test_runs import FINAL, apply_incident, condition, events_for, get, replica_sets, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.operator import OperatorProcess
from tests.harness.ports import free_port
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e


class Operator:
    def __init__(self, process: OperatorProcess, intake_url: str, metrics_url: str) -> None:
        self.process = process
        self.intake_url = intake_url
        self.metrics_url = metrics_url

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return str(response.read().decode())


@pytest.fixture()
def operator(
    test_cluster: TestCluster, flywheel_crds: None, namespace: str, unlabelled_namespace: str,
    clean_redis_url: str, tmp_path: Path,
) -> Iterator[Operator]:
    """An operator whose own namespace is ``namespace`` (labelled, protected), also reconciling the unlabelled one."""
    intake, metrics = free_port(), free_port()
    env = {
        "FLYWHEEL_REDIS_URL": clean_redis_url,
        "FLYWHEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'flywheel.db'}",
        "FLYWHEEL_LOG_LEVEL": "INFO",
        "FLYWHEEL_NAMESPACE": namespace,
        "FLYWHEEL_INTAKE_PORT": str(intake),
        "FLYWHEEL_INTAKE_TOKEN": TOKEN,
        "FLYWHEEL_METRICS_PORT": str(metrics),
        "FLYWHEEL_METRICS_BIND_ADDRESS": "127.0.0.1",
        "FLYWHEEL_METRICS_INTERVAL_SECONDS": "2",
        # As the shared operator fixture does: the symptom is checked as soon as the rollout completes.
        "FLYWHEEL_VERIFICATION_WINDOW_SECONDS": "0",
    }
    process = OperatorProcess(
        test_cluster, namespace, env, tmp_path / "operator-0.log",
        run_args=("--standalone", "--namespace", unlabelled_namespace),
    )
    process.start()
    base = f"http://127.0.0.1:{intake}"
    try:
        wait_for(lambda: healthy(base), timeout=30, what="the intake to listen")
        yield Operator(process, base + INTAKE_PATH, f"http://127.0.0.1:{metrics}/metrics")
    except BaseException:
        print(process.log()[-8000:])
        raise
    finally:
        process.stop()


def test_startup_says_where_flywheel_acts(operator: Operator, namespace: str) -> None:
    (line,) = [line for line in operator.process.log().splitlines() if "remediation_scope" in line]
    assert "flywheel.dev/remediation=enabled" in line
    assert namespace in line and "kube-system" in line, "the protected namespaces are named"


def test_a_run_in_a_namespace_that_did_not_opt_in_is_refused_until_it_is_labelled(
    test_cluster: TestCluster, unlabelled_namespace: str, operator: Operator
) -> None:
    ns = unlabelled_namespace
    create_deployment(test_cluster, "checkout", ns)
    create_deployment(test_cluster, "payments", ns)
    revisions = len(replica_sets(test_cluster, ns, "checkout"))
    apply_incident(test_cluster, ns, "checkout-oom", "checkout")

    status = wait_for_run(test_cluster, ns, "checkout-oom-1", *FINAL, timeout=60)
    assert (status["state"], status["errorCode"]) == ("Cancelled", "E-NAMESPACE-NOT-ENABLED"), status
    succeeded = condition(status, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "NamespaceNotEnabled")
    assert "flywheel.dev/remediation=enabled" in status["errorDetail"]
    warnings = [e for e in events_for(test_cluster, ns, "checkout-oom-1") if e["reason"] == "NamespaceNotEnabled"]
    assert warnings and warnings[0]["type"] == "Warning", warnings
    assert len(replica_sets(test_cluster, ns, "checkout")) == revisions, "the workload was not touched"
    deployment = get(test_cluster, ns, "deployment", "checkout")
    assert "flywheel.dev/run-uid" not in json.dumps(deployment), "no stamp of a Run"
    assert "flywheel.dev/actions" not in json.dumps(deployment)

    def not_remediated() -> dict[str, str] | None:
        incident = get(test_cluster, ns, "incident", "checkout-oom")
        resolved = [c for c in (incident.get("status") or {}).get("conditions") or [] if c["type"] == "Resolved"]
        return resolved[0] if resolved and resolved[0]["reason"] == "NotRemediated" else None

    resolved = wait_for(not_remediated, timeout=30, what="the Incident marked not remediated")
    assert "was refused" in resolved["message"]
    incident = get(test_cluster, ns, "incident", "checkout-oom")
    assert incident["status"]["decision"]["state"], "recorded and decided all the same"

    # The namespace owner opts in: the watch brings the label, the next Run acts.
    test_cluster.kubectl("label", "namespace", ns, "flywheel.dev/remediation=enabled")
    apply_incident(test_cluster, ns, "payments-oom", "payments")
    status = wait_for_run(test_cluster, ns, "payments-oom-1", *FINAL, timeout=90)
    assert status["state"] == "Succeeded", status
    assert 'remediation_namespace_enabled' in operator.process.log()


def test_the_operators_own_namespace_is_refused_although_labelled(
    test_cluster: TestCluster, namespace: str, operator: Operator
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    revisions = len(replica_sets(test_cluster, namespace, "checkout"))
    apply_incident(test_cluster, namespace, "checkout-oom", "checkout")
    status = wait_for_run(test_cluster, namespace, "checkout-oom-1", *FINAL, timeout=60)
    assert (status["state"], status["errorCode"]) == ("Cancelled", "E-NAMESPACE-NOT-ENABLED"), status
    assert "protected" in status["errorDetail"]
    assert len(replica_sets(test_cluster, namespace, "checkout")) == revisions


def test_the_intake_refuses_alerts_for_namespaces_that_did_not_opt_in(
    test_cluster: TestCluster, namespace: str, unlabelled_namespace: str, operator: Operator
) -> None:
    answer = post(operator.intake_url, payload(
        alert(unlabelled_namespace), alert(namespace, fingerprint="b1b2c3d4e5f60718"),
    ))
    assert answer.status == 200, answer.body
    assert answer.outcomes() == ["refused", "refused"]
    first, second = answer.body["alerts"]
    assert first["field"] == "alerts[0].labels.namespace"
    assert "has not opted in" in first["reason"] and "protected" in second["reason"]
    assert test_cluster.kubectl_json("get", "incidents", "-n", unlabelled_namespace)["items"] == []

    def counted() -> bool:
        return 'flywheel_intake_alerts_refused_total{reason="namespace_not_enabled"} 2.0' in operator.metrics()

    wait_for(counted, timeout=30, what="the refusals counted by reason")
    refusals = [line for line in operator.process.log().splitlines()
                if "alert_refused" in line and "namespace_not_enabled" in line]
    assert len(refusals) == 2, refusals
