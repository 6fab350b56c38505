"""The operator's own webhook certificates: X.509 material, and the Secret that keeps it.

``FLYWHEEL_WEBHOOK_CERT_SOURCE=managed`` keeps one Secret in the operator's namespace with

============== ====================================================================
``ca.crt``     the CA that signs serving certificates (``ca.key`` its key)
``ca-next.crt``  its successor while it is pending (``ca-next.key``), absent otherwise
``ca-retired.crt``  retired CAs not yet expired (certificates only, concatenated)
``ca-bundle.crt``  what the webhook configurations trust: the three above, concatenated
``tls.crt``    the serving certificate for ``<service>.<namespace>.svc`` (``tls.key``)
============== ====================================================================

Every replica reads the same Secret; writes carry the ``resourceVersion`` that was read, so
two replicas that decide the same rotation at once make one of them re-read and find it done.
When the schedule (:mod:`flywheel.domain.webhook_certificates`) is followed, the bundle only
ever grows before a new CA signs and shrinks after the old one expired.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flywheel.domain.webhook_certificates import (
    AuthorityFacts,
    CertificatePolicy,
    CertificateState,
    RotationPlan,
    ServingFacts,
    Step,
    Validity,
    backdate,
    serving_not_after,
    trusted_authorities,
)
from flywheel.errors import KubernetesApiError
from flywheel.logs import get_logger
from flywheel.stores.kube import KubeApi, resource_path

log = get_logger(__name__)

CA_CERT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
NEXT_CA_CERT: Final = "ca-next.crt"
NEXT_CA_KEY: Final = "ca-next.key"
RETIRED_CA_CERTS: Final = "ca-retired.crt"
CA_BUNDLE: Final = "ca-bundle.crt"
TLS_CERT: Final = "tls.crt"
TLS_KEY: Final = "tls.key"
FIELD_MANAGER: Final = "flywheel"
MANAGED_BY: Final = {"app.kubernetes.io/name": "flywheel-operator", "app.kubernetes.io/managed-by": "flywheel"}


# --------------------------------------------------------------------------- X.509


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def new_authority(now: datetime, validity: timedelta, common_name: str = "flywheel-webhook-ca") -> KeyPair:
    """A self-signed CA valid for ``validity`` from ``now`` (ECDSA P-256: small, fast, accepted everywhere)."""
    key = ec.generate_private_key(ec.SECP256R1())
    # A serial in the name: successive CAs must be told apart by people reading the bundle.
    name = _name(f"{common_name} {now:%Y%m%dT%H%M%SZ}")
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate(validity))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_serving(
    authority: KeyPair,
    dns_names: Sequence[str],
    *,
    now: datetime,
    not_after: datetime,
    ip_addresses: Sequence[str] = (),
) -> KeyPair:
    """A serving certificate for ``dns_names`` (and ``ip_addresses``) signed by ``authority``."""
    ca_certificate = authority.certificate
    ca_key = serialization.load_pem_private_key(authority.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the webhook CA key is not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name((list(dns_names) + list(ip_addresses))[0]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate(not_after - now))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER, hex: what ``openssl x509 -fingerprint -sha256`` shows."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _validity(certificate: x509.Certificate) -> Validity:
    return Validity(certificate.not_valid_before_utc, certificate.not_valid_after_utc)


def _key_id(certificate: x509.Certificate) -> str:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest.hex()


def _authority_facts(pem: bytes) -> AuthorityFacts:
    certificate = x509.load_pem_x509_certificate(pem)
    return AuthorityFacts(key_id=_key_id(certificate), validity=_validity(certificate))


def _serving_facts(pem: bytes) -> ServingFacts:
    certificate = x509.load_pem_x509_certificate(pem)
    try:
        issuer = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        issuer = None
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ServingFacts(
        issuer_key_id=issuer.hex() if issuer else "",
        dns_names=frozenset(names.get_values_for_type(x509.DNSName)),
        validity=_validity(certificate),
    )


def _split_pems(bundle: bytes) -> list[bytes]:
    return [certificate.public_bytes(serialization.Encoding.PEM) for certificate in x509.load_pem_x509_certificates(bundle)] if bundle.strip() else []


# --------------------------------------------------------------------------- what the Secret holds


@dataclass(frozen=True)
class CertificateMaterial:
    """The certificates and keys of the Secret; ``None`` where absent or unreadable."""

    signing: KeyPair | None = None
    pending: KeyPair | None = None
    retired: tuple[bytes, ...] = ()
    serving: KeyPair | None = None

    @classmethod
    def from_secret_data(cls, data: dict[str, str]) -> CertificateMaterial:
        """Read the Secret's ``data``; an entry that does not parse counts as absent (it gets replaced)."""
        raw = {key: base64.b64decode(value) for key, value in data.items()}

        def pair(cert_key: str, key_key: str) -> KeyPair | None:
            if cert_key not in raw or key_key not in raw:
                return None
            candidate = KeyPair(raw[cert_key], raw[key_key])
            try:
                public = candidate.certificate.public_key()
                private = serialization.load_pem_private_key(candidate.key_pem, password=None)
            except (ValueError, TypeError):
                return None
            return candidate if public == private.public_key() else None

        try:
            retired = tuple(_split_pems(raw.get(RETIRED_CA_CERTS, b"")))
        except ValueError:
            retired = ()
        return cls(
            signing=pair(CA_CERT, CA_KEY),
            pending=pair(NEXT_CA_CERT, NEXT_CA_KEY),
            retired=retired,
            serving=pair(TLS_CERT, TLS_KEY),
        )

    def state(self) -> CertificateState:
        """The facts the schedule plans from."""
        serving = None
        if self.serving is not None:
            try:
                serving = _serving_facts(self.serving.cert_pem)
            except (ValueError, x509.ExtensionNotFound):
                serving = None  # not one of ours: re-issued
        return CertificateState(
            signing=_authority_facts(self.signing.cert_pem) if self.signing else None,
            pending=_authority_facts(self.pending.cert_pem) if self.pending else None,
            retired=tuple(_authority_facts(pem) for pem in self.retired),
            serving=serving,
        )

    def bundle(self, now: datetime) -> bytes:
        """The CA bundle the API server must trust: signing, pending, retired-but-valid, in that order."""
        by_key_id: dict[str, bytes] = {}
        for pem in [p.cert_pem for p in (self.signing, self.pending) if p is not None] + list(self.retired):
            by_key_id.setdefault(_authority_facts(pem).key_id, pem)
        return b"".join(by_key_id[authority.key_id] for authority in trusted_authorities(self.state(), now))

    def apply(self, plan: RotationPlan, policy: CertificatePolicy, now: datetime) -> CertificateMaterial:
        """The material after the plan's steps, in order."""
        material = self
        for step in plan.steps:
            material = material._apply_step(step, policy, now)
        return material

    def _apply_step(self, step: Step, policy: CertificatePolicy, now: datetime) -> CertificateMaterial:
        if step is Step.NEW_AUTHORITY:
            return replace(self, signing=new_authority(now, policy.authority_validity), serving=None)
        if step is Step.PREPARE_SUCCESSOR:
            return replace(self, pending=new_authority(now, policy.authority_validity))
        if step is Step.PROMOTE_SUCCESSOR:
            retired = self.retired + ((self.signing.cert_pem,) if self.signing is not None else ())
            return replace(self, signing=self.pending, pending=None, retired=retired)
        if step is Step.DROP_PENDING:
            return replace(self, pending=None)
        if step is Step.ISSUE_SERVING:
            if self.signing is None:
                raise ValueError("no signing CA to issue the serving certificate with")
            not_after = serving_not_after(_validity(self.signing.certificate), policy, now)
            serving = issue_serving(self.signing, sorted(policy.dns_names), now=now, not_after=not_after)
            return replace(self, serving=serving)
        if step is Step.PRUNE_RETIRED:
            return replace(self, retired=tuple(pem for pem in self.retired if not _validity(
                x509.load_pem_x509_certificate(pem)).expired(now)))
        raise ValueError(f"unknown rotation step {step!r}")

    def secret_data(self, now: datetime) -> dict[str, str]:
        entries: dict[str, bytes] = {CA_BUNDLE: self.bundle(now)}
        if self.signing is not None:
            entries |= {CA_CERT: self.signing.cert_pem, CA_KEY: self.signing.key_pem}
        if self.pending is not None:
            entries |= {NEXT_CA_CERT: self.pending.cert_pem, NEXT_CA_KEY: self.pending.key_pem}
        if self.retired:
            entries[RETIRED_CA_CERTS] = b"".join(self.retired)
        if self.serving is not None:
            entries |= {TLS_CERT: self.serving.cert_pem, TLS_KEY: self.serving.key_pem}
        return {key: base64.b64encode(value).decode() for key, value in entries.items()}


# --------------------------------------------------------------------------- the Secret


@dataclass(frozen=True)
class StoredCertificates:
    material: CertificateMaterial
    resource_version: str


class CertificateSecret:
    """The one Secret holding the managed webhook certificates (get, create, update: nothing else)."""

    def __init__(self, kube: KubeApi, namespace: str, name: str) -> None:
        self._kube = kube
        self.namespace = namespace
        self.name = name

    def _path(self, name: str | None = None) -> str:
        return resource_path("", "v1", "secrets", namespace=self.namespace, name=name)

    async def read(self) -> StoredCertificates | None:
        try:
            secret = await self._kube.request("GET", self._path(self.name), f"get secret {self.namespace}/{self.name}")
        except KubernetesApiError as exc:
            if exc.status == 404:
                return None
            raise
        return _stored(secret)

    async def create_or_get(self, material: CertificateMaterial, now: datetime) -> tuple[StoredCertificates, bool]:
        """Create the Secret; if a peer created it first, return the peer's (and False)."""
        body = self._body(material, now)
        try:
            created = await self._kube.request(
                "POST", self._path(), f"create secret {self.namespace}/{self.name}", body=body,
                query={"fieldManager": FIELD_MANAGER},
            )
            return _stored(created), True
        except KubernetesApiError as exc:
            if exc.status != 409:
                raise
        existing = await self.read()
        if existing is None:  # deleted again in between: the next pass creates it
            raise KubernetesApiError(f"secret {self.namespace}/{self.name} vanished after a create conflict", status=409)
        return existing, False

    async def replace(self, material: CertificateMaterial, resource_version: str, now: datetime) -> StoredCertificates:
        """Write the material if nobody wrote the Secret since ``resource_version`` (else 409)."""
        body = self._body(material, now)
        body["metadata"]["resourceVersion"] = resource_version
        updated = await self._kube.request(
            "PUT", self._path(self.name), f"update secret {self.namespace}/{self.name}", body=body,
            query={"fieldManager": FIELD_MANAGER},
        )
        return _stored(updated)

    def _body(self, material: CertificateMaterial, now: datetime) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(MANAGED_BY)},
            # kubernetes.io/tls: tls.crt and tls.key are always there; the CA entries ride along.
            "type": "kubernetes.io/tls",
            "data": material.secret_data(now),
        }


def _stored(secret: dict[str, Any]) -> StoredCertificates:
    return StoredCertificates(
        material=CertificateMaterial.from_secret_data(secret.get("data") or {}),
        resource_version=str(secret["metadata"]["resourceVersion"]),
    )


__all__ = [
    "CA_BUNDLE",
    "CertificateMaterial",
    "CertificateSecret",
    "KeyPair",
    "StoredCertificates",
    "fingerprint",
    "issue_serving",
    "new_authority",
]
