"""Kopf wiring of the Alertmanager intake: it starts with the operator's start-up step and stops with it.

Every replica serves the intake, the leader and the standby alike (writes are
idempotent and guarded by preconditions), so that a Service in front of the replicas
keeps receiving alerts during a failover.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import kopf

from flywheel.domain.alerts import NamespaceScope
from flywheel.intake import IntakeConfig, IntakeServer, intake_server
from flywheel.logs import get_logger
from flywheel.settings import FlywheelSettings
from flywheel.wiring import FlywheelMemo

log = get_logger(__name__)

MEMO_WATCHED_NAMESPACES = "watched_namespaces"
"""Memo key holding the ``--namespace`` patterns the operator was started with (none: cluster-wide)."""
_MEMO_SERVER = "intake_server"
_MEMO_CERTIFICATE_TASK = "intake_certificate_task"


async def start_intake(memo: FlywheelMemo) -> None:
    """Start the intake over the dependencies the composition root built (``memo.deps``).

    Part of the one start-up step (``flywheel.main._startup`` calls it right after building
    them), so the intake never starts before what it records through.
    """
    deps = memo.deps
    settings = deps.settings
    if settings.intake_port == 0:
        log.info("intake_disabled", setting="FLYWHEEL_INTAKE_PORT=0")
        return
    scope = NamespaceScope(tuple(memo.get(MEMO_WATCHED_NAMESPACES) or ()))
    context = await _tls_context(settings, memo)
    server = intake_server(
        intake_config(settings, scope), settings.intake_port, deps.resources, deps.alert_workloads, deps.counters,
        ssl_context=context, namespaces=deps.namespaces,
    )
    try:
        await server.start()
    except OSError as exc:
        # A port that cannot be bound is a configuration error: retrying will not free it.
        raise kopf.PermanentError(f"Alertmanager intake cannot listen on port {settings.intake_port}: {exc}") from exc
    memo[_MEMO_SERVER] = server


def intake_config(settings: FlywheelSettings, scope: NamespaceScope) -> IntakeConfig:
    """The settings the receiver reads."""
    return IntakeConfig(
        token=settings.intake_token,
        max_body_bytes=settings.intake_max_body_bytes,
        scope=scope,
        max_json_depth=settings.intake_max_json_depth,
        rate_per_second=settings.intake_rate_limit_per_second,
        rate_burst=settings.intake_rate_limit_burst,
    )


async def _tls_context(settings: FlywheelSettings, memo: kopf.Memo) -> ssl.SSLContext | None:
    """The intake's TLS context from FLYWHEEL_INTAKE_TLS_CERT_DIR, kept current; None for plain HTTP.

    The same in-place reload as the webhook server's directory source: a rotated Secret is
    served from the next handshake, the listener stays open.
    """
    if settings.intake_tls_cert_dir is None:
        return None
    from flywheel.controllers.webhook_certificate import directory_watcher, keep_reconciling
    from flywheel.domain.webhook_certificates import MAX_CHECK_INTERVAL
    from flywheel.errors import ConfigurationError
    from flywheel.stores.serving_tls import ServingContext

    serving = ServingContext()
    watcher = directory_watcher(
        Path(settings.intake_tls_cert_dir), serving, setting="FLYWHEEL_INTAKE_TLS_CERT_DIR", server="intake"
    )
    try:
        await watcher.reconcile()
    except (ConfigurationError, OSError, ValueError) as exc:
        # Never fall back to plain HTTP: the token would cross the network in clear.
        raise kopf.PermanentError(f"Alertmanager intake cannot serve TLS: {exc}") from exc
    memo[_MEMO_CERTIFICATE_TASK] = asyncio.create_task(
        keep_reconciling(watcher.reconcile, MAX_CHECK_INTERVAL, "intake")
    )
    return serving.context


@kopf.on.cleanup()
async def stop_intake(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get(_MEMO_CERTIFICATE_TASK)
    if task is not None:
        task.cancel()
    server: IntakeServer | None = memo.get(_MEMO_SERVER)
    if server is not None:
        await server.stop()
