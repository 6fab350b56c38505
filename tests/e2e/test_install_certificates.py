"""Managed webhook certificates against the real API server (the store and the keeper, no mocks).

Scenario matrix:
- two keepers (two API clients, as two replicas) start at once on no Secret: one Secret is
  created, both serve its one serving certificate;
- the shipped webhook configurations (renamed and limited to the test's namespace, the shared
  cluster's other tests must not pass through them) get the Secret's CA bundle on every Flywheel
  webhook, and nothing else of them changes.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from flywheel.controllers.webhook_certificate import ManagedCertificateKeeper
from flywheel.domain.webhook_certificates import CertificatePolicy
from flywheel.handlers.admission import ServingContext
from flywheel.stores.kube import KubeApi
from flywheel.stores.webhook_certificate import CA_BUNDLE, TLS_CERT, CertificateSecret, fingerprint
from flywheel.stores.webhooks import WebhookConfigurations
from tests.harness.cluster import TestCluster
from tests.harness.serviceaccount import MANIFESTS, only, render

pytestmark = pytest.mark.e2e

KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


@pytest.fixture()
def configurations(test_cluster: TestCluster, namespace: str) -> Iterator[str]:
    rendered = render(test_cluster, MANIFESTS / "base")
    name = f"flywheel-cert-test-{namespace}"
    for kind in KINDS:
        configuration = only(rendered, kind, "flywheel")
        configuration["metadata"] = {"name": name}
        for webhook in configuration["webhooks"]:
            webhook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        test_cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(configuration))
    yield name
    for kind in KINDS:
        test_cluster.kubectl("delete", kind.lower(), name, "--ignore-not-found", check=False)


async def test_two_replicas_starting_at_once_share_one_certificate_and_inject_its_bundle(
    test_cluster: TestCluster, namespace: str, configurations: str
) -> None:
    policy = CertificatePolicy(
        dns_names=frozenset({f"flywheel.{namespace}.svc"}), serving_validity=timedelta(days=90),
        authority_validity=timedelta(days=900),
    )
    clients = [KubeApi(config_file=test_cluster.kubeconfig) for _ in range(2)]
    servers = [ServingContext() for _ in clients]
    keepers = [
        ManagedCertificateKeeper(CertificateSecret(kube, namespace, "flywheel-webhook-certs"),
                                 WebhookConfigurations(kube), configurations, policy, server,
                                 clock=lambda: datetime.now(UTC))
        for kube, server in zip(clients, servers, strict=True)
    ]
    try:
        await asyncio.gather(*(keeper.reconcile() for keeper in keepers))
    finally:
        for kube in clients:
            await kube.close()

    secret = test_cluster.kubectl_json("get", "secret", "flywheel-webhook-certs", "-n", namespace)
    served = fingerprint(base64.b64decode(secret["data"][TLS_CERT]))
    assert servers[0].serving_fingerprint == servers[1].serving_fingerprint == served
    bundle = secret["data"][CA_BUNDLE]
    for kind in KINDS:
        configuration = test_cluster.kubectl_json("get", kind.lower(), configurations)
        for webhook in configuration["webhooks"]:
            assert webhook["clientConfig"]["caBundle"] == bundle, webhook["name"]
            assert webhook["failurePolicy"] == "Fail"
            assert webhook["clientConfig"]["service"]["name"] == "flywheel"
