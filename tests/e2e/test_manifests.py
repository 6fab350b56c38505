"""manifests/ as a platform team uses it: `kubectl apply -k manifests/` on the real API server.

Every test works on a copy of the repository's manifests/, crds/ and rule catalogue, as they are:
nothing is generated before the apply (the operator manages its webhook certificate), and the
source tree is never written to.

Scenario matrix:
- ``kubectl kustomize manifests/`` renders the namespace, the generated CRDs and Kopf's peering
  CRDs (the operator creates its peering object itself), RBAC, the two ConfigMaps, the Service, the
  Deployment and both webhook configurations, no Secret, and nothing of the Prometheus Operator;
- no Role or ClusterRole rule uses "*" (verbs, resources, apiGroups) or an escalating verb; Secrets
  only in the operator's namespace, read and updated only by name (signing key, webhook
  certificate), the webhook configurations patched only by name;
- the Deployment: two replicas of `flywheel run --all-namespaces` with peering (never
  --standalone), Kopf's liveness endpoint probed, readiness on the metrics port, requests and
  limits, non-root with a read-only root and no capabilities, POD_NAME and FLYWHEEL_NAMESPACE from
  the downward API, credentials as optional secretKeyRefs, every FLYWHEEL_* key a real setting,
  the rule catalogue mounted where FLYWHEEL_RULES_FILE points and identical to the packaged one,
  the managed webhook certificate (no Secret mounted, the Secret and configurations the RBAC
  names are the ones the settings name);
- the webhooks reach the Service's 443 → the container's webhook port, on the handler paths, with
  no caBundle until the operator injects its CA (failing closed meanwhile), never on /status;
- ``kubectl apply -k manifests/ --dry-run=server`` is accepted by the API server (admission,
  schema validation, RBAC of the applying admin), with no Pod Security warning;
- the cert-manager and monitoring components render into an overlay: the operator reads the
  Certificate's Secret as a mounted directory (FLYWHEEL_WEBHOOK_CERT_SOURCE=directory), the CA
  injector annotation names the Certificate, the ServiceMonitor selects the Service's metrics port.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flywheel.settings import FlywheelSettings
from tests.harness.cluster import TestCluster
from tests.harness.serviceaccount import REPO_ROOT, find, only, render

pytestmark = pytest.mark.e2e

NAMESPACE = "flywheel-system"
SERVICE = "flywheel"
RULES = REPO_ROOT / "operator" / "flywheel" / "rules" / "default.yaml"
WEBHOOK_PATHS = {
    ("MutatingWebhookConfiguration", "/stamp-approver"): ("approvals", {"UPDATE"}),
    ("MutatingWebhookConfiguration", "/stamp-incident-creator"): ("incidents", {"CREATE", "UPDATE"}),
    ("ValidatingWebhookConfiguration", "/approval-policy"): ("approvals", {"CREATE", "UPDATE"}),
    ("ValidatingWebhookConfiguration", "/incident-creator"): ("incidents", {"CREATE", "UPDATE"}),
    ("ValidatingWebhookConfiguration", "/run-writer"): ("runs", {"CREATE", "UPDATE"}),
}
ESCALATING_VERBS = {"escalate", "bind", "impersonate"}


def copy_sources(destination: Path) -> Path:
    """manifests/, crds/ and the rule catalogue's directory, laid out as in the repository."""
    for relative in ("manifests", "crds", "operator/flywheel/rules"):
        shutil.copytree(REPO_ROOT / relative, destination / relative, ignore=shutil.ignore_patterns("__pycache__"))
    return destination / "manifests"


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of manifests/ as the repository has it."""
    return copy_sources(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def rendered(test_cluster: TestCluster, manifests: Path) -> list[dict[str, Any]]:
    return render(test_cluster, manifests)


def container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    pod = only(documents, "Deployment", "flywheel-operator")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["operator"]
    return pod["containers"][0]  # type: ignore[no-any-return]


def container_port(documents: list[dict[str, Any]], port: int | str) -> int:
    """A probe's or Service's target port as a number (named ports resolved)."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container(documents)["ports"] if p["name"] == port)  # type: ignore[no-any-return]


def settings_data(documents: list[dict[str, Any]]) -> dict[str, str]:
    name = container(documents)["envFrom"][0]["configMapRef"]["name"]
    return only(documents, "ConfigMap", name)["data"]  # type: ignore[no-any-return]


def env(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container(documents)["env"]}


def mount_of_volume(documents: list[dict[str, Any]], predicate: Any) -> tuple[dict[str, Any], str]:
    pod = only(documents, "Deployment", "flywheel-operator")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if predicate(v))
    mount = next(m for m in container(documents)["volumeMounts"] if m["name"] == volume["name"])
    return volume, mount["mountPath"]


# --------------------------------------------------------------------------- rendering


def test_kustomize_renders_the_whole_installation(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in rendered)
    names = {kind: sorted(name for k, name in kinds if k == kind) for kind, _ in kinds}
    assert names["Namespace"] == [NAMESPACE]
    assert names["CustomResourceDefinition"] == [
        "approvals.flywheel.dev", "clusterkopfpeerings.kopf.dev", "incidents.flywheel.dev",
        "kopfpeerings.kopf.dev", "runs.flywheel.dev",
    ]
    # The CRDs are the generated files themselves, not copies that could drift.
    incidents_crd = yaml.safe_load((REPO_ROOT / "crds" / "flywheel.dev_incidents.yaml").read_text())
    assert only(rendered, "CustomResourceDefinition", "incidents.flywheel.dev")["spec"] == incidents_crd["spec"]
    # Its CRD comes in the same apply; the operator creates the object at start (one apply installs).
    assert "ClusterKopfPeering" not in names
    for kind in ("ServiceAccount", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment"):
        assert names[kind] == ["flywheel-operator"], kind
    # The operator's own, and two for people (unbound: teams bind them in their namespaces).
    assert names["ClusterRole"] == ["flywheel-approver", "flywheel-operator", "flywheel-sre"]
    assert [name.rsplit("-", 1)[0] for name in names["ConfigMap"]] == ["flywheel-rules", "flywheel-settings"]
    # No certificate to generate first: the operator creates its Secrets itself.
    assert "Secret" not in names
    assert names["Service"] == [SERVICE]
    assert names["MutatingWebhookConfiguration"] == names["ValidatingWebhookConfiguration"] == ["flywheel"]
    # The Prometheus Operator's kinds stay out of the default install (their CRDs may not exist).
    assert not {"ServiceMonitor", "PrometheusRule"} & set(names)
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterKopfPeering", "ClusterRole",
                      "ClusterRoleBinding", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
    for doc in rendered:
        expected = None if doc["kind"] in cluster_scoped else NAMESPACE
        assert doc["metadata"].get("namespace") == expected, (doc["kind"], doc["metadata"])
    binding_subjects = [s for doc in find(rendered, "ClusterRoleBinding") + find(rendered, "RoleBinding")
                        for s in doc["subjects"]]
    assert binding_subjects == [{"kind": "ServiceAccount", "name": "flywheel-operator", "namespace": NAMESPACE}] * 2


def test_no_rule_grants_by_wildcard_or_escalates(rendered: list[dict[str, Any]]) -> None:
    rules = [rule for doc in find(rendered, "ClusterRole") + find(rendered, "Role") for rule in doc["rules"]]
    assert rules
    for rule in rules:
        for field in ("verbs", "resources", "apiGroups"):
            assert rule.get(field), (field, rule)
            assert not any("*" in value for value in rule[field]), (field, rule)
        assert not ESCALATING_VERBS & set(rule["verbs"]), rule
        assert "nonResourceURLs" not in rule, rule
    # Secrets only in the operator's own namespace, read (and, for the certificate, replaced) only by
    # the names the settings give.
    settings = settings_data(rendered)
    cluster_rules = only(rendered, "ClusterRole", "flywheel-operator")["rules"]
    assert not any("secrets" in rule["resources"] for rule in cluster_rules)
    secret_rules = only(rendered, "Role", "flywheel-operator")["rules"]
    named = [rule for rule in secret_rules if set(rule["verbs"]) - {"create"}]
    certificates = settings.get("FLYWHEEL_WEBHOOK_CERT_SECRET", FlywheelSettings.model_fields["webhook_cert_secret"].default)
    assert named == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
         "resourceNames": [settings["FLYWHEEL_APPROVAL_SIGNING_SECRET"]]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "update"], "resourceNames": [certificates]},
    ]
    # The CA bundle goes into Flywheel's own two webhook configurations, and no other.
    admission = [rule for rule in cluster_rules if rule["apiGroups"] == ["admissionregistration.k8s.io"]]
    configuration = settings.get("FLYWHEEL_WEBHOOK_CONFIGURATION", FlywheelSettings.model_fields["webhook_configuration"].default)
    assert admission == [{
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
        "resourceNames": [configuration], "verbs": ["patch"],
    }]


def test_the_deployment_runs_two_peering_replicas_safely(rendered: list[dict[str, Any]]) -> None:
    deployment = only(rendered, "Deployment", "flywheel-operator")
    pod = deployment["spec"]["template"]["spec"]
    operator = container(rendered)
    assert deployment["spec"]["replicas"] == 2
    args = operator["args"]
    assert "--standalone" not in args
    assert "--all-namespaces" in args
    assert "--peering=flywheel" in args
    assert "--liveness=http://0.0.0.0:8090/healthz" in args
    # Kopf's liveness endpoint, and readiness on the metrics server.
    liveness, readiness = operator["livenessProbe"]["httpGet"], operator["readinessProbe"]["httpGet"]
    assert (liveness["path"], container_port(rendered, liveness["port"])) == ("/healthz", 8090)
    settings = settings_data(rendered)
    assert readiness["path"] == "/healthz"
    assert container_port(rendered, readiness["port"]) == int(settings["FLYWHEEL_METRICS_PORT"]) == 8080
    for bound in ("requests", "limits"):
        assert set(operator["resources"][bound]) == {"cpu", "memory"}, bound
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = operator["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # A distinct peering priority per pod comes from POD_NAME; the signing key's namespace is the pod's.
    variables = env(rendered)
    assert variables["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    for name in ("POD_NAMESPACE", "FLYWHEEL_NAMESPACE"):
        assert variables[name]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    secret_refs = {name: entry["valueFrom"]["secretKeyRef"] for name, entry in variables.items()
                   if "secretKeyRef" in entry.get("valueFrom", {})}
    assert {"FLYWHEEL_DATABASE_URL", "FLYWHEEL_INTAKE_TOKEN"} <= set(secret_refs)
    # Two peering replicas need one shared PostgreSQL history: the database URL is required (the
    # operator refuses SQLite with peering), every other credential optional.
    assert "optional" not in secret_refs["FLYWHEEL_DATABASE_URL"]
    assert "FLYWHEEL_DATABASE_URL" not in settings
    assert all(ref["optional"] is True for name, ref in secret_refs.items() if name != "FLYWHEEL_DATABASE_URL")
    assert settings["FLYWHEEL_HISTORY_SPOOL_DIR"].startswith("/var/lib/flywheel/")
    # Every key, in the ConfigMap and in env, is a setting the operator reads.
    known = {f"FLYWHEEL_{field.upper()}" for field in FlywheelSettings.model_fields}
    assert {key for key in [*settings, *variables] if key.startswith("FLYWHEEL_")} <= known
    assert settings["FLYWHEEL_WEBHOOK_MODE"] == "service"
    assert settings["FLYWHEEL_WEBHOOK_CERT_SOURCE"] == "managed"


def test_the_rule_catalogue_is_mounted_where_the_settings_point_and_no_certificate_is(
    rendered: list[dict[str, Any]],
) -> None:
    settings = settings_data(rendered)
    rules_volume, rules_dir = mount_of_volume(rendered, lambda v: "configMap" in v)
    rules_map = only(rendered, "ConfigMap", rules_volume["configMap"]["name"])
    rules_dir_setting, rules_key = settings["FLYWHEEL_RULES_FILE"].rsplit("/", 1)
    assert rules_dir_setting == rules_dir
    assert rules_map["data"][rules_key] == RULES.read_text()

    # The managed certificate is read from its Secret through the API: no Secret volume that would
    # keep the pod from starting before the Secret exists.
    pod = only(rendered, "Deployment", "flywheel-operator")["spec"]["template"]["spec"]
    assert not [volume for volume in pod["volumes"] if "secret" in volume]


def test_the_webhooks_reach_the_operator_on_the_handler_paths(rendered: list[dict[str, Any]]) -> None:
    service = only(rendered, "Service", SERVICE)
    pod_labels = only(rendered, "Deployment", "flywheel-operator")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert {name: port["port"] for name, port in ports.items()} == {"metrics": 8080, "intake": 8081, "webhook": 443}
    settings = settings_data(rendered)
    assert container_port(rendered, ports["webhook"]["targetPort"]) == int(settings["FLYWHEEL_WEBHOOK_PORT"]) == 9443
    assert container_port(rendered, ports["intake"]["targetPort"]) == int(settings["FLYWHEEL_INTAKE_PORT"])

    seen = {}
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for webhook in only(rendered, kind, "flywheel")["webhooks"]:
            client = webhook["clientConfig"]
            assert {key: client["service"][key] for key in ("name", "namespace", "port")} == {
                "name": SERVICE, "namespace": NAMESPACE, "port": 443}
            assert "caBundle" not in client  # injected by the operator; until then every call fails
            assert (webhook["failurePolicy"], webhook["sideEffects"], webhook["timeoutSeconds"]) == ("Fail", "None", 10)
            assert webhook["admissionReviewVersions"] == ["v1"]
            [rule] = webhook["rules"]
            assert rule["apiGroups"] == ["flywheel.dev"]
            # Never a status subresource, except run-writer's: nobody but Flywheel writes a Run's status.
            subresources = [resource for resource in rule["resources"] if "/" in resource]
            assert subresources == (["runs/status"] if webhook["name"] == "run-writer.flywheel.dev" else [])
            seen[(kind, client["service"]["path"])] = (rule["resources"][0], set(rule["operations"]))
    assert seen == WEBHOOK_PATHS
    # run-writer refuses every Run write but the operator's: the operator's own (each pass's status
    # write) skip the call, matched by the ServiceAccount the Deployment runs as.
    pod = only(rendered, "Deployment", "flywheel-operator")["spec"]["template"]["spec"]
    operator_user = f"system:serviceaccount:{NAMESPACE}:{pod['serviceAccountName']}"
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for webhook in only(rendered, kind, "flywheel")["webhooks"]:
            expected = ([{"name": "not-flywheel-itself",
                          "expression": f'request.userInfo.username != "{operator_user}"'}]
                        if webhook["name"] == "run-writer.flywheel.dev" else None)
            assert webhook.get("matchConditions") == expected, webhook["name"]


# --------------------------------------------------------------------------- on the API server


@pytest.fixture(scope="module")
def operator_namespace(test_cluster: TestCluster) -> Iterator[str]:
    """flywheel-system must exist for a dry run of the objects in it (a dry run creates nothing).

    Created for real only when absent, and deleted again afterwards in that case.
    """
    exists = test_cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode == 0
    if not exists:
        test_cluster.kubectl("create", "namespace", NAMESPACE)
    yield NAMESPACE
    if not exists:
        test_cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def test_the_api_server_accepts_the_installation(
    test_cluster: TestCluster, manifests: Path, rendered: list[dict[str, Any]], operator_namespace: str
) -> None:
    result = test_cluster.kubectl("apply", "-k", str(manifests), "--dry-run=server", check=False)

    assert result.returncode == 0, result.stderr + result.stdout
    accepted = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(rendered), result.stdout
    assert "PodSecurity" not in result.stderr, result.stderr


# --------------------------------------------------------------------------- optional components


def test_cert_manager_and_monitoring_components_render_into_an_overlay(
    test_cluster: TestCluster, manifests: Path
) -> None:
    overlay = manifests.parent / "overlay-cert-manager"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../manifests/base"],
        "components": ["../manifests/components/cert-manager", "../manifests/components/monitoring"],
    }))
    documents = render(test_cluster, overlay)

    certificate = only(documents, "Certificate", None)
    assert certificate["metadata"]["namespace"] == NAMESPACE
    tls_volume, tls_dir = mount_of_volume(documents, lambda v: "secret" in v)
    assert tls_volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    settings = settings_data(documents)
    assert (settings["FLYWHEEL_WEBHOOK_CERT_SOURCE"], settings["FLYWHEEL_WEBHOOK_CERT_DIR"]) == ("directory", tls_dir)
    assert f"{SERVICE}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    issuer = only(documents, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert issuer["metadata"]["namespace"] == NAMESPACE
    assert not find(documents, "Secret")  # cert-manager writes it
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        configuration = only(documents, kind, "flywheel")
        assert configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
            f"{NAMESPACE}/{certificate['metadata']['name']}")
        assert all("caBundle" not in webhook["clientConfig"] for webhook in configuration["webhooks"])

    monitor = only(documents, "ServiceMonitor", None)
    service = only(documents, "Service", SERVICE)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= {
        port["name"] for port in service["spec"]["ports"]}
    assert find(documents, "PrometheusRule")
