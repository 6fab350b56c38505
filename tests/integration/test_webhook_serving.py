"""The webhook server's TLS context takes a new certificate while it listens (real sockets, loopback).

Scenario matrix:
- a handshake verified against the managed CA bundle for ``flywheel.<ns>.svc`` gets the Secret's
  serving certificate;
- after a rotation loaded into the running context, the next handshake gets the new certificate,
  still verified by the bundle, and the listening socket was never closed.
"""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime, timedelta

import aiohttp.web
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flywheel.domain.webhook_certificates import (
    CertificatePolicy,
    CertificateState,
    RotationPlan,
    Step,
    plan_rotation,
)
from flywheel.handlers.admission import ServingContext
from flywheel.stores.webhook_certificate import CertificateMaterial, fingerprint

pytestmark = pytest.mark.integration

HOST = "flywheel.flywheel-system.svc"
POLICY = CertificatePolicy(dns_names=frozenset({HOST}), serving_validity=timedelta(days=90),
                           authority_validity=timedelta(days=900))


async def served_fingerprint(port: int, bundle: bytes) -> str:
    client = ssl.create_default_context(cadata=bundle.decode())
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=HOST)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    return fingerprint(pem)


async def test_a_rotation_is_served_without_restarting_the_listener() -> None:
    now = datetime.now(UTC)
    material = CertificateMaterial().apply(plan_rotation(CertificateState(), POLICY, now), POLICY, now)
    assert material.serving is not None
    serving = ServingContext()
    serving.load(material.serving)
    app = aiohttp.web.Application()
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=serving.context)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        assert await served_fingerprint(port, material.bundle(now)) == fingerprint(material.serving.cert_pem)

        # A renewal issued now (as at 2/3 of the old one's life): same CA, new pair.
        rotated = material.apply(RotationPlan((Step.ISSUE_SERVING,)), POLICY, now)
        assert rotated.serving is not None and rotated.serving != material.serving
        serving.load(rotated.serving)
        assert await served_fingerprint(port, rotated.bundle(now)) == fingerprint(rotated.serving.cert_pem)
        assert serving.serving_fingerprint == fingerprint(rotated.serving.cert_pem)
    finally:
        await runner.cleanup()
