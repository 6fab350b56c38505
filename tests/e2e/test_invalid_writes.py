"""Writes the API server refuses as invalid (422) stall the object instead of being retried.

A cluster policy (a real ValidatingAdmissionPolicy with ``reason: Invalid``, as a platform
team would write one) refuses every Run created in the test's namespace: the API server
answers 422, as it does for a write that breaks a CRD's schema.

Scenario matrix:
- the Incident whose Run is refused: condition ``Stalled=True`` reason ``InvalidWrite``
  quoting the API server's cause, one Warning Event ``InvalidWrite``, and no retry (the
  operator logs no ``pass_failed`` retry for it, only the one stall);
- the policy lifted and the Incident edited by a person: the next pass creates the Run, it
  succeeds, and ``Stalled`` is gone from the Incident;
- a Run whose Approval create is refused (the same policy on Approvals) does not wait forever:
  it ends Cancelled with ``E-INVALID-WRITE`` and a Warning Event, and its Incident says it was
  not remediated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import OperatorFactory
from tests.e2e.test_runs import FINAL, QUIET, apply_incident, events_for, get, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

REFUSAL = "Runs are frozen in this namespace during the change window"


def frozen_runs_policy(name: str, namespace: str, reason: str = "Invalid", resource: str = "runs") -> str:
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["flywheel.dev"], "apiVersions": ["*"], "operations": ["CREATE"],
                "resources": [resource],
            }]},
            "validations": [{"expression": "false", "reason": reason, "message": REFUSAL}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        },
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy, binding]})


@pytest.fixture()
def frozen_runs(test_cluster: TestCluster, namespace: str) -> Iterator[str]:
    """Runs refused with 422 in this test's namespace (only), until the test lifts it."""
    name = f"flywheel-test-{namespace}-frozen-runs"
    test_cluster.kubectl("apply", "-f", "-", input=frozen_runs_policy(name, namespace))
    yield name
    for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
        test_cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)


def wait_until_runs_are(cluster: TestCluster, namespace: str, *, refused: bool) -> None:
    """Until a Run create (dry run) is refused, or accepted: policies load and unload asynchronously."""
    probe = {
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "Run", "metadata": {"name": "policy-probe"},
        "spec": {
            "incidentRef": {"name": "none", "uid": "none"},
            "action": {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "none"}},
            "riskLevel": "low", "traceId": "1" * 32, "mode": "Shadow", "timeoutSeconds": 60, "maxAttempts": 1,
        },
    }

    def as_expected() -> bool:
        result = cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                                 input=json.dumps(probe), check=False)
        return (result.returncode != 0 and REFUSAL in result.stderr) if refused else result.returncode == 0

    wait_for(as_expected, timeout=30, what=f"Run creates {'refused' if refused else 'accepted'}")


def stalled(status: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == "Stalled"), None)


def test_a_refused_write_stalls_the_incident_until_a_person_changes_it(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory,
    frozen_runs: str,
) -> None:
    wait_until_runs_are(test_cluster, namespace, refused=True)
    create_deployment(test_cluster, "checkout", namespace)
    operator = start_operator(**QUIET, redis_url=clean_redis_url)
    apply_incident(test_cluster, namespace, "checkout-oom", "checkout")

    def incident_stalled() -> dict[str, Any] | None:
        return stalled(get(test_cluster, namespace, "incident", "checkout-oom").get("status") or {})

    condition = wait_for(incident_stalled, timeout=30, what="Stalled on the Incident")
    assert (condition["status"], condition["reason"]) == ("True", "InvalidWrite")
    assert REFUSAL in condition["message"]
    warnings = wait_for(
        lambda: [e for e in events_for(test_cluster, namespace, "checkout-oom") if e["reason"] == "InvalidWrite"],
        timeout=15, what="InvalidWrite event",
    )
    assert warnings[0]["type"] == "Warning" and REFUSAL in warnings[0]["message"]

    # A person lifts the policy and edits the Incident: that change brings the next pass.
    for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
        test_cluster.kubectl("delete", kind, frozen_runs)
    wait_until_runs_are(test_cluster, namespace, refused=False)
    log_before_edit = operator.log()
    apply_incident(test_cluster, namespace, "checkout-oom", "checkout", summary="checkout OOM, change window over")

    status = wait_for_run(test_cluster, namespace, "checkout-oom-1", *FINAL, timeout=90)
    assert status["state"] == "Succeeded", status
    assert wait_for(lambda: incident_stalled() is None, timeout=30, what="Stalled removed from the Incident")

    assert log_before_edit.count("pass_stalled_on_invalid_write") == 1, "reported once"
    assert "pass_failed" not in log_before_edit, "an invalid write is not retried"


def test_a_run_whose_approval_is_refused_ends_instead_of_waiting_forever(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    name = f"flywheel-test-{namespace}-frozen-approvals"
    test_cluster.kubectl("apply", "-f", "-", input=frozen_runs_policy(name, namespace, resource="approvals"))
    try:
        create_deployment(test_cluster, "payments", namespace)
        start_operator(**QUIET, redis_url=clean_redis_url)
        # The built-in catalogue makes a rollback critical: its Run asks for an Approval.
        apply_incident(
            test_cluster, namespace, "payments-errors", "payments", alertName="HighErrorRate", errorType="5xx"
        )
        status = wait_for_run(test_cluster, namespace, "payments-errors-1", *FINAL, timeout=60)
    finally:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            test_cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)

    assert status["state"] == "Cancelled", status
    assert status["errorCode"] == "E-INVALID-WRITE"
    assert REFUSAL in status["errorDetail"], status
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "InvalidWrite")
    warnings = [e for e in events_for(test_cluster, namespace, "payments-errors-1") if e["reason"] == "InvalidWrite"]
    assert warnings and warnings[0]["type"] == "Warning"

    def told() -> dict[str, Any] | None:
        conditions = (get(test_cluster, namespace, "incident", "payments-errors").get("status") or {}).get(
            "conditions"
        ) or []
        return next((c for c in conditions if c["type"] == "Resolved" and c["reason"] == "NotRemediated"), None)

    assert wait_for(told, timeout=30, what="the Incident told it was not remediated")["status"] == "False"
