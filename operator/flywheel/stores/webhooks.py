"""The admission webhooks' certificates and configurations.

In a cluster the webhook configurations ship with ``manifests/``; the certificate is the
operator's own (``FLYWHEEL_WEBHOOK_CERT_SOURCE=managed``: :mod:`flywheel.stores.webhook_certificate`,
its CA bundle injected here) or files in a directory, e.g. a cert-manager Secret
(``directory``; ``flywheel webhook-cert`` writes such files). On a local control
plane (``FLYWHEEL_WEBHOOK_MODE=loopback``) the operator makes a CA and a certificate for
127.0.0.1 itself and registers configurations that cover only the namespaces it watches,
so that several operators (developers, tests) share one API server without stepping on
each other; it removes them again when it stops.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from flywheel.errors import ConfigurationError, KubernetesApiError
from flywheel.logs import get_logger
from flywheel.stores.kube import GROUP, KubeApi, resource_path
from flywheel.stores.webhook_certificate import FIELD_MANAGER, KeyPair, issue_serving, new_authority

log = get_logger(__name__)

CA_FILE: Final = "ca.crt"
CERT_FILE: Final = "tls.crt"
KEY_FILE: Final = "tls.key"
CERT_VALIDITY: Final = timedelta(days=365)


@dataclass(frozen=True)
class WebhookSpec:
    """One webhook: the Kopf handler id (= URL path), the resource and the operations it sees."""

    handler_id: str
    plural: str
    operations: tuple[str, ...]
    mutating: bool
    subresources: tuple[str, ...] = ()
    # Only writes by others matter (it refuses everyone but the operator): the API server skips
    # the operator's own writes, every Run status write of every pass among them.
    skips_own_writes: bool = False


# Must match the handler ids in flywheel.handlers.admission and manifests/base.
WEBHOOKS: Final = (
    WebhookSpec("stamp-approver", "approvals", ("UPDATE",), mutating=True),
    WebhookSpec("stamp-incident-creator", "incidents", ("CREATE", "UPDATE"), mutating=True),
    WebhookSpec("approval-policy", "approvals", ("CREATE", "UPDATE"), mutating=False),
    WebhookSpec("incident-creator", "incidents", ("CREATE", "UPDATE"), mutating=False),
    # The status subresource too: a forged Run status must never reach the executor.
    WebhookSpec(
        "run-writer", "runs", ("CREATE", "UPDATE"), mutating=False, subresources=("status",), skips_own_writes=True
    ),
)


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class WebhookCertificate:
    directory: Path
    ca_pem: bytes

    @property
    def cert_file(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.directory / KEY_FILE


def write_certificate(directory: Path, dns_names: Sequence[str], ip_addresses: Sequence[str] = ()) -> WebhookCertificate:
    """A new CA and a serving certificate signed by it, written as ca.crt, tls.crt, tls.key."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    authority = new_authority(now, CERT_VALIDITY)
    serving = issue_serving(authority, dns_names, now=now, not_after=now + CERT_VALIDITY, ip_addresses=ip_addresses)
    (directory / CA_FILE).write_bytes(authority.cert_pem)
    (directory / CERT_FILE).write_bytes(serving.cert_pem)
    key_path = directory / KEY_FILE
    key_path.touch(mode=0o600)
    key_path.write_bytes(serving.key_pem)
    return WebhookCertificate(directory=directory, ca_pem=authority.cert_pem)


def read_serving_pair(directory: Path, setting: str = "FLYWHEEL_WEBHOOK_CERT_DIR") -> KeyPair:
    """tls.crt and tls.key from ``directory`` (a mounted Secret); a clear error when either is missing."""
    missing = [name for name in (CERT_FILE, KEY_FILE) if not (directory / name).is_file()]
    if missing:
        raise ConfigurationError(
            f"{setting}={directory}: {', '.join(missing)} not found (mount the certificate Secret there)"
        )
    return KeyPair((directory / CERT_FILE).read_bytes(), (directory / KEY_FILE).read_bytes())


# --------------------------------------------------------------------------- configurations


def loopback_configuration_name(namespaces: Sequence[str]) -> str:
    """One name per scope, so operators watching other namespaces keep their own."""
    if not namespaces:
        return "flywheel-loopback"
    if len(namespaces) == 1 and len(namespaces[0]) <= 50:
        return f"flywheel-{namespaces[0]}"
    return "flywheel-" + hashlib.sha256(",".join(sorted(namespaces)).encode()).hexdigest()[:12]


def not_written_by(username: str) -> list[dict[str, str]]:
    """matchConditions that send a request to the webhook unless ``username`` makes it."""
    return [{"name": "not-flywheel-itself", "expression": f"request.userInfo.username != {json.dumps(username)}"}]


def webhook_entries(
    *, base_url: str, ca_pem: bytes, namespaces: Sequence[str], mutating: bool, version: str,
    operator_identity: str | None = None,
) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for spec in WEBHOOKS:
        if spec.mutating is not mutating:
            continue
        entry: dict[str, Any] = {
            "name": f"{spec.handler_id}.{GROUP}",
            "clientConfig": {"url": f"{base_url}/{spec.handler_id}", "caBundle": base64.b64encode(ca_pem).decode()},
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "apiVersions": [version],
                    "resources": [spec.plural, *(f"{spec.plural}/{sub}" for sub in spec.subresources)],
                    "operations": list(spec.operations),
                    "scope": "Namespaced",
                }
            ],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "matchPolicy": "Equivalent",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }
        if spec.skips_own_writes and operator_identity:
            entry["matchConditions"] = not_written_by(operator_identity)
        if namespaces:
            entry["namespaceSelector"] = {
                "matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": sorted(namespaces)}
                ]
            }
        entries.append(entry)
    return entries


async def own_identity(kube: KubeApi) -> str:
    """The username this process authenticates as (a SelfSubjectReview: no permission needed)."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    review = await kube.request(
        "POST", resource_path("authentication.k8s.io", "v1", "selfsubjectreviews"), "who am I (SelfSubjectReview)",
        body=body,
    )
    return str(review["status"]["userInfo"]["username"])


STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"


class WebhookConfigurations:
    """The loopback configurations (create, replace, delete), and the CA bundle of the shipped ones."""

    def __init__(self, kube: KubeApi) -> None:
        self._kube = kube

    async def inject_ca_bundle(self, name: str, ca_bundle: bytes) -> None:
        """Set ``caBundle`` of Flywheel's own webhooks in the configurations ``name``, and nothing else.

        A strategic merge patch keyed by webhook name (the list's merge key): the rest of each
        webhook, and any webhook that is not Flywheel's, stays as installed; an unchanged bundle
        is a no-op write. A webhook missing from the configuration is an error (422): the
        installation is not the one this operator serves.
        """
        encoded = base64.b64encode(ca_bundle).decode()
        for flavour in ("mutating", "validating"):
            webhooks = [
                {"name": f"{spec.handler_id}.{GROUP}", "clientConfig": {"caBundle": encoded}}
                for spec in WEBHOOKS
                if spec.mutating is (flavour == "mutating")
            ]
            await self._kube.request(
                "PATCH", _configurations(flavour, name), f"inject the CA bundle into {flavour} webhook configuration {name}",
                body={"webhooks": webhooks}, query={"fieldManager": FIELD_MANAGER}, content_type=STRATEGIC_MERGE_PATCH,
            )

    async def apply(
        self, name: str, *, base_url: str, ca_pem: bytes, namespaces: Sequence[str], version: str,
        operator_identity: str | None = None,
    ) -> None:
        labels = {"app.kubernetes.io/name": "flywheel", "app.kubernetes.io/managed-by": "flywheel-loopback"}
        for flavour in ("mutating", "validating"):
            body: dict[str, Any] = {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": f"{flavour.capitalize()}WebhookConfiguration",
                "metadata": {"name": name, "labels": labels},
                "webhooks": webhook_entries(
                    base_url=base_url, ca_pem=ca_pem, namespaces=list(namespaces), mutating=flavour == "mutating",
                    version=version, operator_identity=operator_identity,
                ),
            }
            await self._apply_one(flavour, name, body)
        log.info("webhook_configurations_applied", name=name, url=base_url, namespaces=list(namespaces) or "all")

    async def _apply_one(self, flavour: str, name: str, body: dict[str, Any]) -> None:
        """Create the ``flavour`` (mutating|validating) configuration, or replace the one there."""
        what = f"apply {body['kind']} {name}"
        try:
            await self._kube.request("POST", _configurations(flavour), what, body=body)
            return
        except KubernetesApiError as exc:
            if exc.status != 409:
                raise
        existing = await self._kube.request("GET", _configurations(flavour, name), what)
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        await self._kube.request("PUT", _configurations(flavour, name), what, body=body)

    async def delete(self, name: str) -> None:
        for flavour in ("mutating", "validating"):
            try:
                await self._kube.request(
                    "DELETE", _configurations(flavour, name), f"delete {flavour} webhook configuration {name}"
                )
            except KubernetesApiError as exc:
                if exc.status != 404:
                    raise
        log.info("webhook_configurations_deleted", name=name)


def _configurations(flavour: str, name: str | None = None) -> str:
    return resource_path("admissionregistration.k8s.io", "v1", f"{flavour}webhookconfigurations", name=name)


__all__ = [
    "CA_FILE",
    "CERT_FILE",
    "KEY_FILE",
    "WEBHOOKS",
    "WebhookCertificate",
    "WebhookConfigurations",
    "loopback_configuration_name",
    "own_identity",
    "read_serving_pair",
    "webhook_entries",
    "write_certificate",
]
