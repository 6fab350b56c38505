"""The generated CRDs on the real API server, used with kubectl as an SRE would.

Scenario matrix:
- crds/ applies server-side (structural schemas, CEL cost estimation passes) and the
  three CRDs become Established; ``kubectl get flywheel`` lists all three kinds;
- a valid Incident is accepted and defaulted (severity P2, source manual);
- malformed Incidents are refused at apply time with a message naming the field:
  unknown severity, missing targetRef.name, a targetRef in another namespace, an
  oversized summary, signals of the wrong type, a missing service;
- immutable fields cannot change afterwards (Incident alertName/service/errorType/
  targetRef, Run incidentRef/traceId/mode) while mutable ones can (Run action);
- an Approval decision is final once set; the status subresource feeds the
  printer columns.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cluster import TestCluster
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

CRD_DIRECTORY = Path(__file__).resolve().parents[2] / "crds"
CRD_NAMES = ("incidents.flywheel.dev", "runs.flywheel.dev", "approvals.flywheel.dev")
API_VERSION = "flywheel.dev/v1alpha1"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def applied_crds(test_cluster: TestCluster) -> str:
    """crds/ applied server-side and Established; returns kubectl's apply output."""
    applied = test_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIRECTORY))
    test_cluster.kubectl(
        "wait", "--for=condition=Established", *(f"crd/{name}" for name in CRD_NAMES), "--timeout=60s"
    )
    return applied.stdout


# --------------------------------------------------------------------------- helpers


def incident(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "alertName": "KubePodCrashLooping",
        "service": "checkout",
        "errorType": "CrashLoopBackOff",
        "targetRef": {"kind": "Deployment", "name": "checkout"},
    }
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "Incident", "metadata": {"name": name}, "spec": body}


def run(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "incidentRef": {"name": "inc-1", "uid": "0b1c6c1e-7f0e-4c39-9a51-3f1a2b4c5d6e"},
        "action": {
            "type": "Scale",
            "target": {"kind": "Deployment", "name": "checkout"},
            "params": {"replicas": 3},
        },
        "riskLevel": "low",
        "traceId": TRACE_ID,
    }
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "Run", "metadata": {"name": name}, "spec": body}


def approval(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "runRef": {"name": "run-1", "uid": "7d1f4c2a-1111-4a2b-8c3d-4e5f6a7b8c9d"},
        "action": {"type": "RolloutUndo", "target": {"kind": "Deployment", "name": "checkout"}},
        "riskLevel": "critical",
        "reasoning": "error rate above 5% since the last rollout",
        "escalationLevel": "ESCALATE",
        "anomaly": {"key": "0123456789abcdef", "count24h": 5, "count7d": 9},
        "previousOutcomes": [{"action": "RolloutRestart", "attempts": 3, "successes": 0}],
        "expiresAt": "2099-01-01T00:00:00Z",
    }
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "Approval", "metadata": {"name": name}, "spec": body}


def apply(cluster: TestCluster, namespace: str, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``kubectl apply`` of one object, returning the result instead of failing on refusal."""
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)


def patch(
    cluster: TestCluster, namespace: str, target: str, change: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "patch", target, "-n", namespace, "--type", "merge", "-p", json.dumps(change), check=False
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr + result.stdout


def spec_of(cluster: TestCluster, namespace: str, target: str) -> dict[str, Any]:
    spec: dict[str, Any] = cluster.kubectl_json("get", target, "-n", namespace)["spec"]
    return spec


def assert_refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, f"expected a refusal, got: {output(result)}"
    for fragment in fragments:
        assert fragment in output(result), f"{fragment!r} not in: {output(result)}"


# --------------------------------------------------------------------------- installation


def test_crds_apply_server_side_and_are_established(test_cluster: TestCluster, applied_crds: str) -> None:
    for name in CRD_NAMES:
        assert name in applied_crds
        crd = test_cluster.kubectl_json("get", "crd", name)
        established = [c for c in crd["status"]["conditions"] if c["type"] == "Established"]
        assert established and established[0]["status"] == "True"
    # Applying the same files again is accepted unchanged (what CI and `make demo` do).
    test_cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", str(CRD_DIRECTORY)
    )


def test_get_flywheel_lists_all_three_kinds(
    test_cluster: TestCluster, applied_crds: str, namespace: str
) -> None:
    for body in (incident("inc-listed"), run("run-listed"), approval("appr-listed")):
        assert apply(test_cluster, namespace, body).returncode == 0

    expected = {
        "incident.flywheel.dev/inc-listed",
        "run.flywheel.dev/run-listed",
        "approval.flywheel.dev/appr-listed",
    }

    def listed() -> set[str] | None:
        # Discovery of a new category can lag behind Established by a moment.
        result = test_cluster.kubectl("get", "flywheel", "-n", namespace, "-o", "name", check=False)
        names = set(result.stdout.split())
        return names if result.returncode == 0 and expected <= names else None

    wait_for(listed, timeout=30, what="kubectl get flywheel to list an Incident, a Run and an Approval")
    for short_name, name in (("inc", "inc-listed"), ("fwrun", "run-listed"), ("appr", "appr-listed")):
        assert name in test_cluster.kubectl("get", short_name, "-n", namespace).stdout


# --------------------------------------------------------------------------- Incident


def test_valid_incident_is_accepted_and_defaulted(
    test_cluster: TestCluster, applied_crds: str, namespace: str
) -> None:
    body = incident(
        "inc-valid",
        signals=[
            {
                "alertName": "KubePodCrashLooping",
                "labels": {"pod": "checkout-7d9f", "namespace": namespace},
                "startsAt": "2025-03-01T12:00:00Z",
                "fingerprint": "a1b2c3d4e5f60718",
            }
        ],
        summary="checkout pods restart in a loop",
    )
    result = apply(test_cluster, namespace, body)
    assert result.returncode == 0, output(result)
    spec = spec_of(test_cluster, namespace, "incident/inc-valid")
    assert spec["severity"] == "P2"
    assert spec["source"] == "manual"
    assert spec["signals"][0]["status"] == "firing"
    assert spec["targetRef"] == {"kind": "Deployment", "name": "checkout"}


MALFORMED_INCIDENTS = [
    pytest.param({"severity": "P7"}, ("spec.severity", "P7"), id="unknown-severity"),
    pytest.param(
        {"targetRef": {"kind": "Deployment"}},
        ("spec.targetRef.name", "Required value"),
        id="missing-target-name",
    ),
    pytest.param(
        {"targetRef": {"kind": "Deployment", "name": "checkout", "namespace": "production"}},
        ("spec.targetRef.namespace", "Flywheel only acts in the Incident's own namespace"),
        id="cross-namespace-target",
    ),
    pytest.param({"summary": "x" * 2049}, ("spec.summary", "2048"), id="oversized-summary"),
    pytest.param({"signals": "KubePodCrashLooping"}, ("spec.signals", "array"), id="signals-not-a-list"),
    pytest.param({"service": None}, ("spec.service", "Required value"), id="missing-service"),
    pytest.param(
        {"targetRef": {"kind": "CronJob", "name": "checkout"}},
        ("spec.targetRef.kind", "CronJob"),
        id="unknown-kind",
    ),
]


@pytest.mark.parametrize(("change", "fragments"), MALFORMED_INCIDENTS)
def test_malformed_incident_is_refused_naming_the_field(
    test_cluster: TestCluster,
    applied_crds: str,
    namespace: str,
    change: dict[str, Any],
    fragments: tuple[str, ...],
) -> None:
    body = incident("inc-malformed", **change)
    body["spec"] = {key: value for key, value in body["spec"].items() if value is not None}
    assert_refused(apply(test_cluster, namespace, body), *fragments)
    assert (
        test_cluster.kubectl("get", "incident", "inc-malformed", "-n", namespace, check=False).returncode != 0
    )


IMMUTABLE_INCIDENT_CHANGES = [
    pytest.param({"service": "payments"}, "spec.service", id="service"),
    pytest.param({"alertName": "KubePodOOMKilled"}, "spec.alertName", id="alertName-changed"),
    pytest.param({"alertName": None}, "spec.alertName", id="alertName-removed"),
    pytest.param({"errorType": "OOMKilled"}, "spec.errorType", id="errorType"),
    pytest.param({"targetRef": {"name": "payments"}}, "spec.targetRef", id="targetRef"),
]


@pytest.mark.parametrize(("change", "field"), IMMUTABLE_INCIDENT_CHANGES)
def test_immutable_incident_fields_cannot_change(
    test_cluster: TestCluster, applied_crds: str, namespace: str, change: dict[str, Any], field: str
) -> None:
    assert apply(test_cluster, namespace, incident("inc-immutable")).returncode == 0
    assert_refused(
        patch(test_cluster, namespace, "incident/inc-immutable", {"spec": change}), field, "immutable"
    )
    spec = spec_of(test_cluster, namespace, "incident/inc-immutable")
    assert spec["service"] == "checkout"
    assert spec["alertName"] == "KubePodCrashLooping"
    assert spec["targetRef"]["name"] == "checkout"


def test_an_optional_immutable_field_cannot_be_added_later(
    test_cluster: TestCluster, applied_crds: str, namespace: str
) -> None:
    body = incident("inc-no-error-type")
    del body["spec"]["errorType"]
    assert apply(test_cluster, namespace, body).returncode == 0
    result = patch(
        test_cluster, namespace, "incident/inc-no-error-type", {"spec": {"errorType": "OOMKilled"}}
    )
    assert_refused(result, "spec.errorType", "immutable")


def test_mutable_incident_fields_can_change(
    test_cluster: TestCluster, applied_crds: str, namespace: str
) -> None:
    assert apply(test_cluster, namespace, incident("inc-mutable")).returncode == 0
    change = {
        "spec": {"summary": "root cause found", "resolution": {"note": "bumped memory", "rootCause": "leak"}}
    }
    result = patch(test_cluster, namespace, "incident/inc-mutable", change)
    assert result.returncode == 0, output(result)
    assert spec_of(test_cluster, namespace, "incident/inc-mutable")["resolution"]["rootCause"] == "leak"


def test_status_subresource_feeds_the_printer_columns(
    test_cluster: TestCluster, applied_crds: str, namespace: str
) -> None:
    assert apply(test_cluster, namespace, incident("inc-status")).returncode == 0
    status = {
        "status": {
            "phase": "Mitigating",
            "anomaly": {"key": "0123456789abcdef", "count24h": 5, "escalationLevel": "ESCALATE"},
            "runRef": {"name": "run-status", "uid": "0b1c6c1e-7f0e-4c39-9a51-3f1a2b4c5d6e"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "Unknown",
                    "reason": "Deciding",
                    "message": "",
                    "lastTransitionTime": "2025-03-01T12:00:00Z",
                }
            ],
        }
    }
    result = test_cluster.kubectl(
        "patch",
        "incident/inc-status",
        "-n",
        namespace,
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        json.dumps(status),
        check=False,
    )
    assert result.returncode == 0, output(result)
    table = test_cluster.kubectl("get", "incident", "inc-status", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "ALERT", "SERVICE", "ESCALATION", "24H", "RUN", "AGE"]
    assert row.split()[:7] == [
        "inc-status",
        "Mitigating",
        "KubePodCrashLooping",
        "checkout",
        "ESCALATE",
        "5",
        "run-status",
    ]


# --------------------------------------------------------------------------- Run


def test_scale_without_replicas_is_refused(
    test_cluster: TestCluster, applied_crds: str, namespace: str
) -> None:
    body = run(
        "run-no-replicas", action={"type": "Scale", "target": {"kind": "Deployment", "name": "checkout"}}
    )
    assert_refused(
        apply(test_cluster, namespace, body), "spec.action.params.replicas", "required when type is Scale"
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"traceId": "0af7651916cd43dd8448eb211c80319c"}, "spec.traceId", id="traceId"),
        pytest.param({"mode": "Shadow"}, "spec.mode", id="mode"),
        pytest.param({"incidentRef": {"name": "inc-2"}}, "spec.incidentRef", id="incidentRef"),
    ],
)
def test_immutable_run_fields_cannot_change(
    test_cluster: TestCluster, applied_crds: str, namespace: str, change: dict[str, Any], field: str
) -> None:
    assert apply(test_cluster, namespace, run("run-immutable")).returncode == 0
    assert_refused(patch(test_cluster, namespace, "run/run-immutable", {"spec": change}), field, "immutable")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"action": {"params": {"replicas": 5}}}, "spec.action", id="action"),
        pytest.param({"riskLevel": "high"}, "spec.riskLevel", id="riskLevel"),
        pytest.param({"maxAttempts": 5}, "spec", id="maxAttempts"),
        pytest.param({"requiresApproval": False}, "spec", id="requiresApproval"),
        pytest.param({"verificationWindowSeconds": 0}, "spec", id="verificationWindowSeconds"),
    ],
)
def test_what_decides_a_run_cannot_be_edited_after_its_decision(
    test_cluster: TestCluster, applied_crds: str, namespace: str, change: dict[str, Any], field: str
) -> None:
    # Flywheel binds these to its decision when it creates the Run: an edit is refused here already.
    body = run("run-decided")
    body["spec"]["requiresApproval"] = True
    assert apply(test_cluster, namespace, body).returncode == 0
    assert_refused(patch(test_cluster, namespace, "run/run-decided", {"spec": change}), field, "immutable")
    spec = spec_of(test_cluster, namespace, "run/run-decided")
    assert (spec["mode"], spec["timeoutSeconds"], spec["maxAttempts"]) == ("Auto", 600, 2)


# --------------------------------------------------------------------------- Approval


def test_approval_decision_is_final_once_set(
    test_cluster: TestCluster, applied_crds: str, namespace: str
) -> None:
    assert apply(test_cluster, namespace, approval("appr-final")).returncode == 0
    decided = patch(
        test_cluster, namespace, "approval/appr-final", {"spec": {"decision": "Approve", "reason": "ok"}}
    )
    assert decided.returncode == 0, output(decided)

    changed = patch(test_cluster, namespace, "approval/appr-final", {"spec": {"decision": "Reject"}})
    assert_refused(changed, "spec.decision", "immutable")
    removed = patch(test_cluster, namespace, "approval/appr-final", {"spec": {"decision": None}})
    assert_refused(removed, "spec.decision", "immutable")
    retargeted = patch(
        test_cluster, namespace, "approval/appr-final", {"spec": {"runRef": {"name": "run-2"}}}
    )
    assert_refused(retargeted, "spec.runRef", "immutable")

    assert spec_of(test_cluster, namespace, "approval/appr-final")["decision"] == "Approve"


def test_approval_with_an_unknown_decision_is_refused(
    test_cluster: TestCluster, applied_crds: str, namespace: str
) -> None:
    assert_refused(
        apply(test_cluster, namespace, approval("appr-maybe", decision="Maybe")), "spec.decision", "Maybe"
    )
