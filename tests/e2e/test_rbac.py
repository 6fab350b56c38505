"""The RBAC that manifests/ ships is enough for the operator, and no broader than that.

The test cluster's kube-apiserver enforces RBAC (``--authorization-mode=Node,RBAC``, as kwokctl
starts it), so a missing permission fails the request exactly as in a real cluster.

Scenario matrix:
- sufficiency: a ServiceAccount bound to exactly the rendered ClusterRole and Role rules runs the
  operator with Kopf peering (not standalone) and its webhook server in service mode, from a token
  kubeconfig; the manifests' webhook configurations point at it (only the client config changed).
  An OOM Incident on a real Deployment ends with its Run Succeeded and the Incident Resolved, the
  Deployment rolled (a new ReplicaSet), the anomaly Lease created, Events posted on the Incident and
  Run; a RequireApproval Incident gets its Approval from the operator, an approver approves, the
  Approval turns Approved (stamped decider), the signing-key Secret is created in FLYWHEEL_NAMESPACE
  and the Run succeeds; the operator's keep-alive record is in the KopfPeering; the operator log
  holds no refusal (403) at all (namespaces are watched for the opt-in label, so Kopf's listing of
  them succeeds too);
- least privilege: ``kubectl auth can-i --as`` the ServiceAccount says yes to the calls the
  operator makes and no to deleting or updating workloads, creating them, scaling through the
  subresource, watching or deleting pods (it may get one, for the intake's owner lookup, and list
  them, for the symptom check after a rollout), reading ConfigMaps or any Secret but the signing key, writing Secrets outside
  its namespace, updating status, touching another peering object, deleting Leases or Flywheel
  resources, changing CRDs, RBAC or webhook configurations, impersonating, and anything by wildcard.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import OperatorFactory
from tests.e2e.test_runs import FINAL, apply_incident, events_for, get, replica_sets, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.ports import free_port
from tests.harness.serviceaccount import (
    MANIFESTS,
    ServiceAccountIdentity,
    make_webhook_certificate,
    only,
    operator_service_account,
    render,
)
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

PEERING_CRDS = MANIFESTS / "base" / "kopf-peering-crds.yaml"
PEERING_NAME = "flywheel"  # the name the manifests' RBAC grants get/patch on
SIGNING_SECRET = "flywheel-approval-signing-key"
APPROVER = "alice"
APPROVER_GROUP = "flywheel-approvers"


@pytest.fixture()
def operator_account(
    test_cluster: TestCluster, namespace: str, tmp_path: Path
) -> Iterator[ServiceAccountIdentity]:
    with operator_service_account(test_cluster, namespace, tmp_path / "operator-kubeconfig") as identity:
        yield identity


def install_peering_crds(cluster: TestCluster, namespace: str) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(PEERING_CRDS))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "crd/clusterkopfpeerings.kopf.dev",
        "--timeout=60s",
    )


def can_i(cluster: TestCluster, identity: ServiceAccountIdentity, *args: str) -> bool:
    result = cluster.kubectl("auth", "can-i", "--as", identity.username, *args, check=False)
    answer = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert answer in ("yes", "no"), f"kubectl auth can-i {' '.join(args)}: {result.stdout}{result.stderr}"
    return answer == "yes"


@contextlib.contextmanager
def shipped_webhooks_at(cluster: TestCluster, namespace: str, port: int, ca_file: Path) -> Iterator[None]:
    """The manifests' webhook configurations, aimed at a local operator instead of the Service.

    Paths, operations, failure policy and the rest stay as shipped; only the client config
    becomes https://localhost:PORT/<path> (with the test's CA) and a namespaceSelector keeps them
    to the test's namespace on the shared cluster.
    """
    rendered = render(cluster, MANIFESTS / "base")
    ca_bundle = base64.b64encode(ca_file.read_bytes()).decode()
    names = []
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        configuration = only(rendered, kind, "flywheel")
        configuration["metadata"] = {"name": f"flywheel-rbac-test-{namespace}"}
        for webhook in configuration["webhooks"]:
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": f"https://localhost:{port}{path}", "caBundle": ca_bundle}
            webhook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(configuration))
        names.append((kind.lower(), configuration["metadata"]["name"]))
    try:
        yield
    finally:
        for kind, name in names:
            cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)


def wait_until_listening(port: int, timeout: float = 30) -> None:
    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, timeout=timeout, what=f"the webhook server on port {port}")


def test_the_shipped_rbac_is_enough_for_remediations_with_and_without_approval(
    test_cluster: TestCluster,
    namespace: str,
    clean_redis_url: str,
    postgres_url: str,
    start_operator: OperatorFactory,
    operator_account: ServiceAccountIdentity,
    tmp_path: Path,
) -> None:
    whoami = test_cluster.kubectl(
        "--kubeconfig", str(operator_account.kubeconfig), "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"
    )
    assert whoami.stdout == operator_account.username  # the operator below runs as the ServiceAccount
    install_peering_crds(test_cluster, namespace)
    create_deployment(test_cluster, "checkout", namespace)
    create_deployment(test_cluster, "payments", namespace)
    revisions_before = len(replica_sets(test_cluster, namespace, "checkout"))
    # Approvers may patch Approvals in this namespace (what a platform team grants its approvers).
    test_cluster.kubectl("create", "role", "approver", "-n", namespace, "--verb=get,list,watch,patch",
                         "--resource=approvals.flywheel.dev")
    test_cluster.kubectl("create", "rolebinding", "approver", "-n", namespace, "--role=approver",
                         f"--group={APPROVER_GROUP}")
    # The webhook server as in the cluster (service mode: a certificate from files, no API calls);
    # "localhost" among its names, because the test's API server calls it there.
    certificate = tmp_path / "webhook-tls"
    make_webhook_certificate(certificate, service="localhost")
    port = free_port()
    operator = start_operator(
        clean_redis_url,
        postgres_url,  # peering replicas share one history (SQLite is refused with peering)
        run_args=("--peering", PEERING_NAME),
        kubeconfig=str(operator_account.kubeconfig),
        namespace=namespace,  # FLYWHEEL_NAMESPACE: where the Role for the signing key is bound
        metrics_port="0",
        intake_port="0",
        webhook_mode="service",
        webhook_cert_dir=str(certificate),
        webhook_port=str(port),
        approver_groups=APPROVER_GROUP,
    )
    wait_until_listening(port)

    with shipped_webhooks_at(test_cluster, namespace, port, certificate / "ca.crt"):
        # Automatic: Incident → Run → action → verified.
        apply_incident(test_cluster, namespace, "checkout-oom", "checkout")
        status = wait_for_run(test_cluster, namespace, "checkout-oom-1", *FINAL, timeout=150)
        assert status["state"] == "Succeeded", status
        # With approval: the operator creates the Approval, an approver decides, the operator signs
        # the approval token with the key it keeps in a Secret, then acts.
        apply_incident(test_cluster, namespace, "payments-oom", "payments", remediation={"mode": "RequireApproval"})
        waiting = wait_for_run(test_cluster, namespace, "payments-oom-1", "WaitingApproval", *FINAL, timeout=60)
        assert waiting["state"] == "WaitingApproval", waiting
        wait_for(
            lambda: test_cluster.kubectl("get", "approvals.flywheel.dev", "payments-oom-1", "-n", namespace,
                                         check=False).returncode == 0,
            timeout=30, what="the Approval the operator creates",
        )
        test_cluster.kubectl(
            "--as", APPROVER, "--as-group", APPROVER_GROUP, "patch", "approvals.flywheel.dev", "payments-oom-1",
            "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {"decision": "Approve", "reason": "go"}}),
        )
        approved = wait_for_run(test_cluster, namespace, "payments-oom-1", *FINAL, timeout=60)

    incident = get(test_cluster, namespace, "incident", "checkout-oom")
    assert incident["status"]["phase"] == "Resolved"
    # The action really reached the Deployment: a rollout restart makes a new ReplicaSet.
    assert len(replica_sets(test_cluster, namespace, "checkout")) == revisions_before + 1
    # The anomaly claim: a Lease held by the Incident.
    lease_holders = {
        lease["metadata"]["annotations"]["flywheel.dev/incident"]: lease["spec"]["holderIdentity"]
        for lease in test_cluster.kubectl_json("get", "leases", "-n", namespace)["items"]
        if lease["metadata"]["name"].startswith("flywheel-anomaly-")
    }
    assert lease_holders["checkout-oom"] == incident["metadata"]["uid"]
    # Events, posted by the operator's identity (Kopf's and Flywheel's own).
    run_reasons = {event["reason"] for event in events_for(test_cluster, namespace, "checkout-oom-1")}
    assert {"Started", "Succeeded"} <= run_reasons, run_reasons
    incident_reasons = {event["reason"] for event in events_for(test_cluster, namespace, "checkout-oom")}
    assert "DecisionReady" in incident_reasons, incident_reasons
    # The approved Run: Approval decided (approvals/status), token signed with the Secret's key.
    assert approved["state"] == "Succeeded", approved
    approval_status = get(test_cluster, namespace, "approvals.flywheel.dev", "payments-oom-1")["status"]
    assert (approval_status["phase"], approval_status["decidedBy"]) == ("Approved", APPROVER)
    secret = test_cluster.kubectl_json("get", "secret", SIGNING_SECRET, "-n", namespace)
    assert len(base64.b64decode(secret["data"]["signing-key"])) >= 32
    # Peering: the operator created its KopfPeering and keeps its keep-alive record there.
    peers = test_cluster.kubectl_json("get", "kopfpeerings.kopf.dev", PEERING_NAME, "-n", namespace).get("status")
    assert any(isinstance(record, dict) and "priority" in record for record in (peers or {}).values()), peers

    refusals = [
        line for line in operator.log().splitlines()
        if re.search(r"\b403\b|[Ff]orbidden", line)
    ]
    assert refusals == [], "\n".join(refusals[:20])


# (verb, resource, scope): "resource[sub]" asks about a subresource, "resource/name" about one object;
# scope "OWN" is the operator's namespace, "" a cluster-scoped check.
ALLOWED = [
    # What the operator does, anywhere in the cluster (the ClusterRole).
    ("watch", "incidents.flywheel.dev", "--all-namespaces"),
    ("create", "runs.flywheel.dev", "-n=default"),
    ("create", "approvals.flywheel.dev", "-n=default"),
    ("patch", "runs.flywheel.dev[status]", "-n=default"),
    ("patch", "approvals.flywheel.dev[status]", "-n=default"),
    ("patch", "incidents.flywheel.dev[status]", "-n=default"),
    ("patch", "deployments.apps", "-n=default"),
    ("patch", "statefulsets.apps", "-n=default"),
    ("patch", "daemonsets.apps", "-n=default"),
    ("get", "daemonsets.apps", "-n=default"),
    ("list", "replicasets.apps", "-n=default"),
    ("list", "controllerrevisions.apps", "-n=default"),
    ("get", "pods", "-n=default"),
    # The symptom check of a kubectl-filed Incident lists its target's Pods (issue #16).
    ("list", "pods", "-n=default"),
    ("get", "replicasets.apps", "-n=default"),
    ("update", "leases.coordination.k8s.io", "-n=default"),
    ("create", "events", "-n=default"),
    ("patch", f"clusterkopfpeerings.kopf.dev/{PEERING_NAME}", ""),
    ("create", "clusterkopfpeerings.kopf.dev", ""),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", ""),
    # The namespace opt-in label, from a watch.
    ("watch", "namespaces", ""),
    ("get", "namespaces", ""),
    # The signing key, in its own namespace only (the Role).
    ("get", f"secrets/{SIGNING_SECRET}", "OWN"),
    ("create", "secrets", "OWN"),
    # Retention deletes finished Incidents; their dependents go to the garbage collector.
    ("delete", "incidents.flywheel.dev", "-n=default"),
]
DENIED = [
    ("delete", "deployments.apps", "-n=default"),
    # It reads the opt-in label; it never sets it (opting in is the namespace owner's call).
    ("patch", "namespaces", ""),
    ("update", "namespaces", ""),
    ("update", "deployments.apps", "-n=default"),
    ("create", "deployments.apps", "-n=default"),
    ("delete", "statefulsets.apps", "-n=default"),
    ("delete", "daemonsets.apps", "-n=default"),
    ("update", "daemonsets.apps", "-n=default"),
    ("watch", "daemonsets.apps", "-n=default"),
    ("patch", "deployments.apps[scale]", "-n=default"),
    ("update", "runs.flywheel.dev[status]", "-n=default"),
    ("watch", "pods", "-n=default"),
    ("delete", "pods", "-n=default"),
    ("watch", "replicasets.apps", "-n=default"),
    ("create", "pods/exec", "-n=default"),
    ("get", "configmaps", "-n=default"),
    ("list", "secrets", "OWN"),
    ("get", "secrets/some-other-secret", "OWN"),
    ("get", f"secrets/{SIGNING_SECRET}", "-n=default"),
    ("create", "secrets", "-n=default"),
    ("delete", "secrets", "OWN"),
    ("update", f"secrets/{SIGNING_SECRET}", "OWN"),
    ("update", "incidents.flywheel.dev", "-n=default"),
    ("deletecollection", "incidents.flywheel.dev", "-n=default"),
    ("delete", "runs.flywheel.dev", "-n=default"),
    ("delete", "approvals.flywheel.dev", "-n=default"),
    ("delete", "leases.coordination.k8s.io", "-n=default"),
    ("list", "leases.coordination.k8s.io", "-n=default"),
    ("patch", "clusterkopfpeerings.kopf.dev/another-operator", ""),
    ("delete", "clusterkopfpeerings.kopf.dev", ""),
    ("delete", "events", "-n=default"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("create", "clusterroles.rbac.authorization.k8s.io", ""),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
    ("create", "rolebindings.rbac.authorization.k8s.io", "OWN"),
    ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io", ""),
    ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io", ""),
    ("delete", "namespaces", ""),
    ("get", "nodes", ""),
    ("impersonate", "users", ""),
    ("create", "serviceaccounts/token", "OWN"),
    ("*", "*", "--all-namespaces"),
]


def test_the_operator_may_make_its_calls_and_nothing_else(
    test_cluster: TestCluster, namespace: str, operator_account: ServiceAccountIdentity
) -> None:
    def answer(verb: str, resource: str, where: str) -> bool:
        scope = [f"-n={namespace}"] if where == "OWN" else [where] if where else []
        if resource.endswith("]"):
            resource, subresource = resource[:-1].split("[")
            scope.append(f"--subresource={subresource}")
        return can_i(test_cluster, operator_account, verb, resource, *scope)

    refused = [case for case in ALLOWED if not answer(*case)]
    granted = [case for case in DENIED if answer(*case)]
    assert refused == [], f"the operator lacks permissions it uses: {refused}"
    assert granted == [], f"the operator holds permissions it never uses: {granted}"
