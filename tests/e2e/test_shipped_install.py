"""The shipped installation's certificate path on the real API server: nothing generated first.

The manifests ship the managed webhook certificate (FLYWHEEL_WEBHOOK_CERT_SOURCE=managed). Here the
operator runs as a ServiceAccount bound to exactly the rendered RBAC, with the shipped settings,
and the shipped webhook configurations (named ``flywheel``, as shipped) carry no CA bundle until the
operator injects its own.

What differs from a cluster, and why: the local control plane has no kubelet or Service network
(KWOK fakes the pods), so the operator runs as a process on this host and the configurations'
``clientConfig`` becomes ``https://localhost:PORT/<path>`` instead of the Service (paths, rules,
failure policy unchanged); the managed certificate therefore also names ``localhost``
(FLYWHEEL_WEBHOOK_CERT_DNS_NAMES, the setting for webhooks reached by URL). A namespaceSelector
keeps the configurations to the test's namespace on the shared cluster, and the certificate's
lifetimes are shortened so that a rotation happens during the test.

Scenario matrix:
- before the operator starts: the configurations have no caBundle and an Approval decision is
  refused (the webhooks fail closed);
- the operator creates the Secret flywheel-webhook-certs and injects its CA into every Flywheel
  webhook; an approver's decision passes the mutating webhook (the decider is stamped) and the Run
  acts;
- the serving certificate and then the CA rotate on their own (short lifetimes): a second approval
  round trip through the webhooks still works, with a new serving certificate signed by a new CA.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from flywheel.stores.webhook_certificate import CA_BUNDLE, TLS_CERT
from tests.conftest import OperatorFactory
from tests.e2e.test_manifests import settings_data
from tests.e2e.test_rbac import (
    APPROVER,
    APPROVER_GROUP,
    PEERING_NAME,
    install_peering_crds,
    operator_account,  # noqa: F401  (fixture)
    wait_until_listening,
)
from tests.e2e.test_runs import FINAL, apply_incident, get, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.ports import free_port
from tests.harness.serviceaccount import MANIFESTS, ServiceAccountIdentity, only, render
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
CERTIFICATE_SECRET = "flywheel-webhook-certs"


@pytest.fixture()
def shipped(test_cluster: TestCluster) -> list[dict[str, Any]]:
    return render(test_cluster, MANIFESTS)


@pytest.fixture()
def shipped_configurations(
    test_cluster: TestCluster, namespace: str, shipped: list[dict[str, Any]]
) -> Iterator[dict[str, int]]:
    """The shipped configurations, aimed at localhost:PORT; yields {"port": PORT}."""
    port = free_port()
    for kind in KINDS:
        configuration = only(shipped, kind, "flywheel")
        assert all("caBundle" not in webhook["clientConfig"] for webhook in configuration["webhooks"])
        configuration["metadata"] = {"name": "flywheel", "labels": configuration["metadata"].get("labels", {})}
        for webhook in configuration["webhooks"]:
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": f"https://localhost:{port}{path}"}
            webhook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        test_cluster.kubectl("apply", "-f", "-", input=json.dumps(configuration))
    try:
        yield {"port": port}
    finally:
        for kind in KINDS:
            test_cluster.kubectl("delete", kind.lower(), "flywheel", "--ignore-not-found", check=False)


def ca_bundles(cluster: TestCluster) -> list[str | None]:
    bundles = []
    for kind in KINDS:
        configuration = cluster.kubectl_json("get", kind.lower(), "flywheel")
        bundles += [webhook["clientConfig"].get("caBundle") for webhook in configuration["webhooks"]]
    return bundles


def certificate_secret(cluster: TestCluster, namespace: str) -> dict[str, bytes] | None:
    result = cluster.kubectl("get", "secret", CERTIFICATE_SECRET, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    return {key: base64.b64decode(value) for key, value in json.loads(result.stdout)["data"].items()}


def signing_key_id(certificate_pem: bytes) -> bytes | None:
    """The key identifier of the CA that signed a certificate (its AuthorityKeyIdentifier)."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    return certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


def decide(cluster: TestCluster, namespace: str, name: str) -> Any:
    return cluster.kubectl(
        "--as", APPROVER, "--as-group", APPROVER_GROUP, "patch", "approvals.flywheel.dev", name, "-n", namespace,
        "--type=merge", "-p", json.dumps({"spec": {"decision": "Approve", "reason": "shipped install"}}), check=False,
    )


def approval_round_trip(cluster: TestCluster, namespace: str, incident: str, target: str) -> dict[str, Any]:
    apply_incident(cluster, namespace, incident, target, remediation={"mode": "RequireApproval"})
    name = f"{incident}-1"
    wait_for_run(cluster, namespace, name, "WaitingApproval", timeout=90)
    wait_for(lambda: cluster.kubectl("get", "approvals.flywheel.dev", name, "-n", namespace, check=False).returncode == 0,
             timeout=30, what=f"the Approval {name}")
    decided = decide(cluster, namespace, name)
    assert decided.returncode == 0, decided.stderr
    run = wait_for_run(cluster, namespace, name, *FINAL, timeout=90)
    assert run["state"] == "Succeeded", run
    approval = get(cluster, namespace, "approvals.flywheel.dev", name)
    assert (approval["status"]["phase"], approval["status"]["decidedBy"]) == ("Approved", APPROVER)
    return approval


def test_the_shipped_install_serves_its_own_certificate_and_keeps_approvals_working_across_a_rotation(
    test_cluster: TestCluster,
    namespace: str,
    clean_redis_url: str,
    postgres_url: str,
    start_operator: OperatorFactory,
    operator_account: ServiceAccountIdentity,  # noqa: F811
    shipped: list[dict[str, Any]],
    shipped_configurations: dict[str, int],
    tmp_path: Path,
) -> None:
    settings = settings_data(shipped)
    assert settings["FLYWHEEL_WEBHOOK_CERT_SOURCE"] == "managed"
    install_peering_crds(test_cluster, namespace)
    for target in ("checkout", "payments"):
        create_deployment(test_cluster, target, namespace)
    test_cluster.kubectl("create", "role", "approver", "-n", namespace, "--verb=get,list,watch,patch",
                         "--resource=approvals.flywheel.dev")
    test_cluster.kubectl("create", "rolebinding", "approver", "-n", namespace, "--role=approver",
                         f"--group={APPROVER_GROUP}")

    # Nothing is served yet: the webhooks fail closed, nobody's decision gets in.
    assert ca_bundles(test_cluster) == [None] * len(ca_bundles(test_cluster))
    refused = test_cluster.kubectl(
        "create", "-n", namespace, "-f", "-", check=False,
        input=json.dumps({"apiVersion": "flywheel.dev/v1alpha1", "kind": "Incident", "metadata": {"name": "too-early"},
                          "spec": {"alertName": "KubePodOOMKilled", "service": "checkout", "errorType": "OOMKilled",
                                   "severity": "P2", "source": "alertmanager", "summary": "checkout is unwell",
                                   "targetRef": {"kind": "Deployment", "name": "checkout"}}}),
    )
    assert refused.returncode != 0 and "failed calling webhook" in refused.stderr, refused.stderr

    port = shipped_configurations["port"]
    shipped_env = {key.removeprefix("FLYWHEEL_").lower(): value for key, value in settings.items()
                   if key.startswith("FLYWHEEL_") and value}
    for in_cluster_only in ("redis_url", "rules_file", "history_spool_dir", "log_format", "metrics_port", "intake_port"):
        shipped_env.pop(in_cluster_only, None)  # paths and endpoints of the pod, replaced below
    operator = start_operator(
        clean_redis_url,
        postgres_url,
        run_args=("--peering", PEERING_NAME),
        kubeconfig=str(operator_account.kubeconfig),
        **{
            **shipped_env,
            "namespace": namespace,
            "remediation_namespaces": namespace,
            "metrics_port": "0",
            "intake_port": "0",
            "webhook_port": str(port),
            "webhook_cert_dns_names": "localhost",
            # Short lifetimes so the rotation happens within the test: the serving pair is reissued
            # at 20 s, a successor CA joins at 30 s and signs from 40 s.
            "webhook_cert_validity_seconds": "30",
            "webhook_ca_validity_seconds": "60",
        },
    )
    wait_until_listening(port)
    wait_for(lambda: all(ca_bundles(test_cluster)), timeout=60, what="the operator's CA in every webhook")
    first = certificate_secret(test_cluster, namespace)
    assert first is not None
    assert base64.b64decode(ca_bundles(test_cluster)[0] or "") == first[CA_BUNDLE]

    approval_round_trip(test_cluster, namespace, "checkout-oom", "checkout")

    first_authority = signing_key_id(first[TLS_CERT])

    def rotated_to_a_new_authority() -> bool:
        current = certificate_secret(test_cluster, namespace)
        return current is not None and signing_key_id(current[TLS_CERT]) != first_authority

    wait_for(rotated_to_a_new_authority, timeout=90, what="a serving certificate signed by the successor CA")
    rotated = certificate_secret(test_cluster, namespace)
    assert rotated is not None and rotated[TLS_CERT] != first[TLS_CERT]
    wait_for(lambda: base64.b64decode(ca_bundles(test_cluster)[0] or "") == rotated[CA_BUNDLE], timeout=30,
             what="the rotated bundle in the webhooks")

    approval_round_trip(test_cluster, namespace, "payments-oom", "payments")
    assert "webhook_certificate_rotated" in operator.log()
