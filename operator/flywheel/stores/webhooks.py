"""The admission webhooks' certificates and configurations.

In a cluster the webhook configurations ship with ``manifests/`` and the certificate comes
from cert-manager or a Secret (``flywheel webhook-cert`` writes one). On a local control
plane (``FLYWHEEL_WEBHOOK_MODE=loopback``) the operator makes a CA and a certificate for
127.0.0.1 itself and registers configurations that cover only the namespaces it watches,
so that several operators (developers, tests) share one API server without stepping on
each other; it removes them again when it stops.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flywheel.errors import KubernetesApiError
from flywheel.logs import get_logger
from flywheel.stores.kube import GROUP, KubeApi, resource_path

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


# Must match the handler ids in flywheel.handlers.admission and manifests/base.
WEBHOOKS: Final = (
    WebhookSpec("stamp-approver", "approvals", ("UPDATE",), mutating=True),
    WebhookSpec("stamp-incident-creator", "incidents", ("CREATE", "UPDATE"), mutating=True),
    WebhookSpec("approval-policy", "approvals", ("CREATE", "UPDATE"), mutating=False),
    WebhookSpec("incident-creator", "incidents", ("CREATE", "UPDATE"), mutating=False),
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


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_certificate(directory: Path, dns_names: Sequence[str], ip_addresses: Sequence[str] = ()) -> WebhookCertificate:
    """A new CA and a serving certificate signed by it, written as ca.crt, tls.crt, tls.key.

    ECDSA P-256: small, fast, and accepted by every API server version we support.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("flywheel-webhook-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alternative_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alternative_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name((list(dns_names) + list(ip_addresses))[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    (directory / CA_FILE).write_bytes(ca_pem)
    (directory / CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / KEY_FILE
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return WebhookCertificate(directory=directory, ca_pem=ca_pem)


# --------------------------------------------------------------------------- configurations


def loopback_configuration_name(namespaces: Sequence[str]) -> str:
    """One name per scope, so operators watching other namespaces keep their own."""
    if not namespaces:
        return "flywheel-loopback"
    if len(namespaces) == 1 and len(namespaces[0]) <= 50:
        return f"flywheel-{namespaces[0]}"
    return "flywheel-" + hashlib.sha256(",".join(sorted(namespaces)).encode()).hexdigest()[:12]


def webhook_entries(
    *, base_url: str, ca_pem: bytes, namespaces: Sequence[str], mutating: bool, version: str
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
                    "resources": [spec.plural],
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


class WebhookConfigurations:
    """Create, replace and delete the loopback webhook configurations."""

    def __init__(self, kube: KubeApi) -> None:
        self._kube = kube

    async def apply(self, name: str, *, base_url: str, ca_pem: bytes, namespaces: Sequence[str], version: str) -> None:
        labels = {"app.kubernetes.io/name": "flywheel", "app.kubernetes.io/managed-by": "flywheel-loopback"}
        for flavour in ("mutating", "validating"):
            body: dict[str, Any] = {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": f"{flavour.capitalize()}WebhookConfiguration",
                "metadata": {"name": name, "labels": labels},
                "webhooks": webhook_entries(
                    base_url=base_url, ca_pem=ca_pem, namespaces=list(namespaces), mutating=flavour == "mutating",
                    version=version,
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
    "webhook_entries",
    "write_certificate",
]
