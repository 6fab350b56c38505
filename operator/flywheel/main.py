"""Operator entry point: Kopf settings, shared dependencies, and the handler modules.

Only wiring lives here; handlers are in ``flywheel.handlers`` (one resource per module)
and the logic they call lives in ``flywheel.domain`` and ``flywheel.controllers``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import kopf

from flywheel.logs import configure_logging, get_logger
from flywheel.settings import get_settings

log = get_logger(__name__)


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Kopf behaviour shared by ``flywheel run`` and the tests."""
    # Progress and diff-base in annotations: our status schemas stay strict and
    # Kopf's bookkeeping never shows up in `kubectl get -o yaml` status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.flywheel.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.flywheel.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "flywheel.dev/finalizer"
    settings.posting.level = 20  # INFO and above become Kubernetes Events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.worker_limit = 64
    settings.execution.max_workers = 16
    settings.networking.request_timeout = 30


def default_priority() -> int:
    """A distinct peering priority per pod, so two replicas never tie (Kopf freezes on ties)."""
    identity = os.environ.get("POD_NAME") or socket.gethostname()
    return 100 + (sum(identity.encode()) % 900)


def run_operator(
    *,
    namespaces: list[str],
    standalone: bool,
    peering_name: str,
    priority: int | None,
    liveness_endpoint: str | None,
) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    # Importing the handler modules registers them with Kopf's default registry.
    import flywheel.handlers  # noqa: F401
    from flywheel.handlers.intake import MEMO_WATCHED_NAMESPACES

    log.info("starting operator", namespaces=namespaces or "all", standalone=standalone)
    # Kopf treats an explicit peering name as "peering is mandatory", so pass it only
    # when peering is wanted: a standalone operator must not wait for the peering CRDs.
    peering: dict[str, Any] = {}
    if not standalone:
        peering = {"peering_name": peering_name, "priority": priority if priority is not None else default_priority()}
    asyncio.run(
        kopf.operator(
            standalone=standalone,
            namespaces=namespaces,
            clusterwide=not namespaces,
            liveness_endpoint=liveness_endpoint,
            # The intake refuses alerts for namespaces this operator does not reconcile.
            memo=kopf.Memo({MEMO_WATCHED_NAMESPACES: tuple(namespaces)}),
            **peering,
        )
    )


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_kopf(settings)
    from flywheel.controllers.dependencies import build_dependencies

    memo.deps = await build_dependencies(get_settings())


@kopf.on.cleanup()
async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    deps = getattr(memo, "deps", None)
    if deps is not None:
        await deps.close()
