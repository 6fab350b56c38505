"""Run something as a ServiceAccount bound to the RBAC rules that manifests/ ships.

The rules are taken from the rendered manifests (``kubectl kustomize``), never retyped, so a
test proves what a platform team would install. The ClusterRole is re-created under a name
unique to the test and bound cluster-wide (as the manifests bind it); the Role for the
operator's own namespace is bound in the test's namespace (FLYWHEEL_NAMESPACE points there).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.cluster import TestCluster

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
OPERATOR_ROLE_NAME = "flywheel-operator"
RBAC_API = "rbac.authorization.k8s.io/v1"


def make_webhook_certificate(output_dir: Path, service: str, namespace: str = "flywheel-system") -> None:
    """ca.crt, tls.crt and tls.key by `flywheel webhook-cert` (the directory certificate source)."""
    subprocess.run(
        [sys.executable, "-m", "flywheel", "webhook-cert", "--service", service, "--namespace", namespace,
         "--output-dir", str(output_dir)],
        check=True, capture_output=True, text=True,
    )


def render(cluster: TestCluster, directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize DIRECTORY`` renders (the cluster's own kubectl and kustomize)."""
    output = cluster.kubectl("kustomize", str(directory)).stdout
    return [document for document in yaml.safe_load_all(output) if document]


def find(documents: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        document
        for document in documents
        if document["kind"] == kind and (name is None or document["metadata"]["name"] == name)
    ]


def only(documents: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(documents, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, rendered {len(found)}"
    return found[0]


@dataclass(frozen=True)
class ServiceAccountIdentity:
    namespace: str
    name: str
    kubeconfig: Path

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


def _apply(cluster: TestCluster, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def token_kubeconfig(cluster: TestCluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig with the test cluster's server and CA and a fresh token of ``account``."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": server}],  # server and certificate-authority-data
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "test", "user": account, "namespace": namespace}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def operator_service_account(
    cluster: TestCluster, namespace: str, kubeconfig_path: Path, *, manifests: Path = MANIFESTS / "base"
) -> Iterator[ServiceAccountIdentity]:
    """A ServiceAccount in ``namespace`` holding exactly the operator's rules from ``manifests``.

    Yields its identity with a token kubeconfig; removes the cluster-scoped role and binding after.
    """
    documents = render(cluster, manifests)
    cluster_rules = only(documents, "ClusterRole", OPERATOR_ROLE_NAME)["rules"]
    namespace_rules = only(documents, "Role", OPERATOR_ROLE_NAME)["rules"]
    account = only(documents, "ServiceAccount", OPERATOR_ROLE_NAME)["metadata"]["name"]
    unique = f"flywheel-rbac-test-{namespace}"
    subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    _apply(cluster, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": namespace}})
    try:
        _apply(cluster, {"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": {"name": unique}, "rules": cluster_rules})
        _apply(cluster, {
            "apiVersion": RBAC_API, "kind": "ClusterRoleBinding", "metadata": {"name": unique},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": unique},
            "subjects": [subject],
        })
        _apply(cluster, {
            "apiVersion": RBAC_API, "kind": "Role", "metadata": {"name": OPERATOR_ROLE_NAME, "namespace": namespace},
            "rules": namespace_rules,
        })
        _apply(cluster, {
            "apiVersion": RBAC_API, "kind": "RoleBinding",
            "metadata": {"name": OPERATOR_ROLE_NAME, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR_ROLE_NAME},
            "subjects": [subject],
        })
        yield ServiceAccountIdentity(
            namespace=namespace, name=account, kubeconfig=token_kubeconfig(cluster, namespace, account, kubeconfig_path)
        )
    finally:
        cluster.kubectl("delete", "clusterrolebinding", unique, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "clusterrole", unique, "--ignore-not-found", check=False)
