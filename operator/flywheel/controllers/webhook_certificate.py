"""Keeps the webhook server's certificate current, on every replica.

``managed`` (:class:`ManagedCertificateKeeper`): each pass reads the Secret (creating it on the
first start: create-or-get, so replicas starting at once adopt one certificate), injects its CA
bundle into the operator's own webhook configurations, then applies the rotation due
(:func:`flywheel.domain.webhook_certificates.plan_rotation`) with the ``resourceVersion`` it read
— a replica that loses the race re-reads and finds the work done — and finally loads the
Secret's serving pair into the running server. The bundle is always injected before the Secret
can make a new CA sign, so the API server trusts a certificate before any replica serves it.

``directory`` (:class:`DirectoryCertificateWatcher`): the files of a mounted Secret (cert-manager
renews them in place), loaded again when they change.

Neither restarts the server: new TLS handshakes get the new pair, open connections finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, Protocol

from flywheel.api.times import format_time
from flywheel.domain.webhook_certificates import CertificatePolicy, CertificateState, plan_rotation
from flywheel.errors import FlywheelError, KubernetesApiError
from flywheel.logs import get_logger
from flywheel.stores.webhook_certificate import CertificateMaterial, KeyPair, StoredCertificates, fingerprint

log = get_logger(__name__)

# The bundle is patched again this often even when unchanged: a configuration re-created by
# hand (kubectl replace, a reinstall) gets its caBundle back without waiting for a rotation.
REINJECT_INTERVAL: Final = timedelta(minutes=5)


class ServingPairSink(Protocol):
    """The running webhook server's TLS context."""

    @property
    def serving_fingerprint(self) -> str | None: ...

    def load(self, pair: KeyPair) -> None: ...


class CertificateSecretStore(Protocol):
    async def read(self) -> StoredCertificates | None: ...

    async def create_or_get(self, material: CertificateMaterial, now: datetime) -> tuple[StoredCertificates, bool]: ...

    async def replace(
        self, material: CertificateMaterial, resource_version: str, now: datetime
    ) -> StoredCertificates: ...


class CaBundleInjector(Protocol):
    async def inject_ca_bundle(self, name: str, ca_bundle: bytes) -> None: ...


class ManagedCertificateKeeper:
    """One replica's view of the managed certificate Secret (see the module docstring)."""

    def __init__(
        self,
        secret: CertificateSecretStore,
        configurations: CaBundleInjector,
        configuration_name: str,
        policy: CertificatePolicy,
        serving: ServingPairSink,
        clock: Callable[[], datetime],
    ) -> None:
        self._secret = secret
        self._configurations = configurations
        self._configuration_name = configuration_name
        self.policy = policy
        self._serving = serving
        self._clock = clock
        self._injected: tuple[bytes, datetime] | None = None

    async def reconcile(self) -> None:
        now = self._clock()
        stored = await self._secret.read()
        if stored is None:
            first = CertificateMaterial()
            plan = plan_rotation(CertificateState(), self.policy, now)
            stored, created = await self._secret.create_or_get(first.apply(plan, self.policy, now), now)
            log.info("webhook_certificate_secret_created" if created else "webhook_certificate_secret_adopted")
        await self._inject(stored.material, now)
        plan = plan_rotation(stored.material.state(), self.policy, now)
        if plan:
            rotated = stored.material.apply(plan, self.policy, now)
            try:
                stored = await self._secret.replace(rotated, stored.resource_version, now)
                log.info("webhook_certificate_rotated", steps=[str(step) for step in plan.steps], reasons=list(plan.reasons))
            except KubernetesApiError as exc:
                if exc.status != 409:
                    raise
                # A peer rotated first (or the Secret was deleted): take what is there now.
                log.info("webhook_certificate_rotated_by_peer", steps=[str(step) for step in plan.steps])
                reread = await self._secret.read()
                if reread is None:
                    return  # deleted: the next pass creates it
                stored = reread
            await self._inject(stored.material, now)
        self._load(stored.material)

    async def _inject(self, material: CertificateMaterial, now: datetime) -> None:
        bundle = material.bundle(now)
        if self._injected is not None:
            injected, at = self._injected
            if injected == bundle and now - at < REINJECT_INTERVAL:
                return
        await self._configurations.inject_ca_bundle(self._configuration_name, bundle)
        if self._injected is None or self._injected[0] != bundle:
            log.info("webhook_ca_bundle_injected", configuration=self._configuration_name,
                     authorities=bundle.count(b"-----BEGIN CERTIFICATE-----"))
        self._injected = (bundle, now)

    def _load(self, material: CertificateMaterial) -> None:
        if material.serving is None:
            return
        _load_if_changed(self._serving, material.serving)


class DirectoryCertificateWatcher:
    """tls.crt and tls.key of a directory, loaded again whenever they change."""

    def __init__(self, read_pair: Callable[[], KeyPair], serving: ServingPairSink, server: str = "webhook") -> None:
        self._read_pair = read_pair
        self._serving = serving
        self._server = server

    async def reconcile(self) -> None:
        _load_if_changed(self._serving, await asyncio.to_thread(self._read_pair), self._server)


def _load_if_changed(serving: ServingPairSink, pair: KeyPair, server: str = "webhook") -> None:
    new = fingerprint(pair.cert_pem)
    if new == serving.serving_fingerprint:
        return
    serving.load(pair)
    certificate = pair.certificate
    log.info("serving_certificate_loaded", server=server, fingerprint=new,
             not_after=format_time(certificate.not_valid_after_utc))


async def keep_reconciling(reconcile: Callable[[], Awaitable[None]], interval: timedelta, what: str) -> None:
    """Run ``reconcile`` every ``interval`` until cancelled; a failed pass is logged and retried."""
    while True:
        await asyncio.sleep(interval.total_seconds())
        try:
            await reconcile()
        except (FlywheelError, OSError, ValueError) as exc:
            log.error("webhook_certificate_pass_failed", what=what, error=str(exc))


def directory_watcher(
    directory: Path, serving: ServingPairSink, *, setting: str = "FLYWHEEL_WEBHOOK_CERT_DIR", server: str = "webhook"
) -> DirectoryCertificateWatcher:
    """A watcher of ``directory``'s tls.crt and tls.key; errors name ``setting``, logs ``server``."""
    from flywheel.stores.webhooks import read_serving_pair

    return DirectoryCertificateWatcher(lambda: read_serving_pair(directory, setting), serving, server)


__all__ = [
    "CaBundleInjector",
    "CertificateSecretStore",
    "DirectoryCertificateWatcher",
    "ManagedCertificateKeeper",
    "ServingPairSink",
    "directory_watcher",
    "keep_reconciling",
]
