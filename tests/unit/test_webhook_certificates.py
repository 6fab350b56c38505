"""The managed webhook certificate's schedule, with an injected clock (pure), and the keeper's pass.

Scenario matrix:
- first start: a CA and a serving pair; nothing more is due right after;
- serving renewal at 2/3 of its life, not before; re-issued when the SANs change or another CA signed it;
- CA rotation: successor pending at 1/2 (bundle grows, signing CA unchanged), promoted at 2/3, the
  old CA retired and still trusted until it expires, then pruned; an expired CA with a pending
  successor promotes it at once, without one is replaced;
- the keeper against in-memory stand-ins: two keepers sharing one Secret serve one certificate,
  the bundle is injected before a successor signs, a lost update (409) re-reads the peer's work.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flywheel.controllers.webhook_certificate import ManagedCertificateKeeper
from flywheel.domain.webhook_certificates import CertificatePolicy, CertificateState, Step, plan_rotation
from flywheel.errors import ConfigurationError, KubernetesApiError
from flywheel.stores.webhook_certificate import CertificateMaterial, KeyPair, StoredCertificates, fingerprint

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = CertificatePolicy(
    dns_names=frozenset({"flywheel.flywheel-system.svc"}),
    serving_validity=timedelta(days=90),
    authority_validity=timedelta(days=900),
)


def fresh(now: datetime = T0) -> CertificateMaterial:
    material = CertificateMaterial()
    return material.apply(plan_rotation(CertificateState(), POLICY, now), POLICY, now)


def advance(material: CertificateMaterial, now: datetime) -> tuple[CertificateMaterial, tuple[Step, ...]]:
    plan = plan_rotation(material.state(), POLICY, now)
    return material.apply(plan, POLICY, now), plan.steps


def test_first_start_makes_a_ca_and_a_serving_pair_and_then_nothing_is_due() -> None:
    assert plan_rotation(CertificateState(), POLICY, T0).steps == (Step.NEW_AUTHORITY, Step.ISSUE_SERVING)
    material = fresh()
    assert material.signing is not None and material.serving is not None
    assert not plan_rotation(material.state(), POLICY, T0 + timedelta(days=1))
    assert material.bundle(T0) == material.signing.cert_pem


def test_the_serving_certificate_is_renewed_at_two_thirds_of_its_life() -> None:
    material = fresh()
    assert not plan_rotation(material.state(), POLICY, T0 + timedelta(days=59))
    renewed, steps = advance(material, T0 + timedelta(days=61))
    assert steps == (Step.ISSUE_SERVING,)
    assert renewed.signing == material.signing  # same CA: the bundle does not change
    assert renewed.serving is not None and material.serving is not None
    assert fingerprint(renewed.serving.cert_pem) != fingerprint(material.serving.cert_pem)


def test_other_names_are_a_reason_to_reissue() -> None:
    other = CertificatePolicy(dns_names=frozenset({"other.ns.svc"}), serving_validity=POLICY.serving_validity,
                              authority_validity=POLICY.authority_validity)
    assert plan_rotation(fresh().state(), other, T0).steps == (Step.ISSUE_SERVING,)


def test_a_ca_rotation_never_lets_a_served_certificate_go_untrusted() -> None:
    material = fresh()
    old_ca = material.signing
    assert old_ca is not None
    # Half way: a successor joins the bundle, but nothing is signed by it yet.
    material, steps = advance(material, T0 + timedelta(days=451))
    assert Step.PREPARE_SUCCESSOR in steps
    assert material.signing == old_ca and material.pending is not None
    assert material.bundle(T0 + timedelta(days=451)).count(b"BEGIN CERTIFICATE") == 2
    # Two thirds: the successor signs, the old CA is retired but still in the bundle.
    promoted, steps = advance(material, T0 + timedelta(days=601))
    assert Step.PROMOTE_SUCCESSOR in steps and Step.ISSUE_SERVING in steps
    assert promoted.signing == material.pending
    assert old_ca.cert_pem in promoted.bundle(T0 + timedelta(days=601))
    # Once the old CA expired, it leaves the bundle.
    pruned, steps = advance(promoted, T0 + timedelta(days=901))
    assert Step.PRUNE_RETIRED in steps
    assert old_ca.cert_pem not in pruned.bundle(T0 + timedelta(days=901))
    assert pruned.signing is not None and pruned.signing.cert_pem in pruned.bundle(T0 + timedelta(days=901))


def test_an_expired_ca_is_replaced_at_once() -> None:
    replaced, steps = advance(fresh(), T0 + timedelta(days=1000))
    assert steps[0] in (Step.NEW_AUTHORITY, Step.PREPARE_SUCCESSOR) or Step.PROMOTE_SUCCESSOR in steps
    assert not plan_rotation(replaced.state(), POLICY, T0 + timedelta(days=1000))


def test_a_ca_shorter_than_the_serving_certificate_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="WEBHOOK_CA_VALIDITY_SECONDS"):
        CertificatePolicy(dns_names=frozenset({"a"}), serving_validity=timedelta(days=2),
                          authority_validity=timedelta(days=1))


# --------------------------------------------------------------------------- the keeper


class MemorySecret:
    def __init__(self) -> None:
        self.stored: StoredCertificates | None = None
        self.version = 0

    async def read(self) -> StoredCertificates | None:
        return self.stored

    async def create_or_get(self, material: CertificateMaterial, now: datetime) -> tuple[StoredCertificates, bool]:
        if self.stored is not None:
            return self.stored, False
        self.version += 1
        self.stored = StoredCertificates(material, str(self.version))
        return self.stored, True

    async def replace(self, material: CertificateMaterial, resource_version: str, now: datetime) -> StoredCertificates:
        assert self.stored is not None
        if resource_version != self.stored.resource_version:
            raise KubernetesApiError("conflict", status=409)
        self.version += 1
        self.stored = StoredCertificates(material, str(self.version))
        return self.stored


class MemoryConfigurations:
    def __init__(self) -> None:
        self.bundle = b""

    async def inject_ca_bundle(self, name: str, ca_bundle: bytes) -> None:
        self.bundle = ca_bundle


class MemoryServer:
    def __init__(self) -> None:
        self.serving_fingerprint: str | None = None

    def load(self, pair: KeyPair) -> None:
        self.serving_fingerprint = fingerprint(pair.cert_pem)


async def test_two_keepers_on_one_secret_serve_one_certificate_through_a_rotation() -> None:
    now = [T0]
    secret, configurations = MemorySecret(), MemoryConfigurations()
    servers = [MemoryServer(), MemoryServer()]
    keepers = [ManagedCertificateKeeper(secret, configurations, "flywheel", POLICY, server, clock=lambda: now[0])
               for server in servers]
    for keeper in keepers:
        await keeper.reconcile()
    assert secret.version == 1
    assert servers[0].serving_fingerprint == servers[1].serving_fingerprint is not None
    for day in range(0, 1000, 5):
        now[0] = T0 + timedelta(days=day)
        for keeper in keepers:
            await keeper.reconcile()
            stored = secret.stored
            assert stored is not None and stored.material.signing is not None
            # Whatever a replica serves is signed by a CA the configurations trust.
            assert stored.material.signing.cert_pem in configurations.bundle
    assert servers[0].serving_fingerprint == servers[1].serving_fingerprint
