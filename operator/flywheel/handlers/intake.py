"""Kopf wiring of the Alertmanager intake: it starts and stops with the operator.

Every replica serves the intake, the leader and the standby alike (writes are
idempotent and guarded by preconditions), so that a Service in front of the replicas
keeps receiving alerts during a failover.
"""

from __future__ import annotations

from typing import Any

import kopf

from flywheel.domain.alerts import NamespaceScope
from flywheel.intake import IntakeServer, intake_server
from flywheel.logs import get_logger
from flywheel.metrics.collector import OperatorCounters
from flywheel.settings import get_settings
from flywheel.stores.pod_owners import KubeObjectReader, PodOwnerStore

log = get_logger(__name__)

MEMO_WATCHED_NAMESPACES = "watched_namespaces"
"""Memo key holding the ``--namespace`` patterns the operator was started with (none: cluster-wide)."""
_MEMO_SERVER = "intake_server"
MEMO_COUNTERS = "operator_counters"


def operator_counters(memo: kopf.Memo) -> OperatorCounters:
    """The process's own counters, shared by the metrics and the intake (whichever starts first makes them)."""
    counters = memo.get(MEMO_COUNTERS)
    if not isinstance(counters, OperatorCounters):
        counters = memo[MEMO_COUNTERS] = OperatorCounters()
    return counters


@kopf.on.startup()
async def start_intake(memo: kopf.Memo, **_: Any) -> None:
    deps = getattr(memo, "deps", None)
    if deps is None:
        raise kopf.TemporaryError("shared dependencies are not built yet", delay=1)
    settings = get_settings()
    scope = NamespaceScope(tuple(memo.get(MEMO_WATCHED_NAMESPACES) or ()))
    # One cache per process: every request's lookups share it (see flywheel.stores.pod_owners).
    workloads = PodOwnerStore(KubeObjectReader(deps.kube))
    server = intake_server(settings, scope, deps.resources, workloads, operator_counters(memo))
    if server is None:
        log.info("Alertmanager intake disabled (intake_port is 0)")
        return
    try:
        await server.start()
    except OSError as exc:
        # A port that cannot be bound is a configuration error: retrying will not free it.
        raise kopf.PermanentError(f"Alertmanager intake cannot listen on port {settings.intake_port}: {exc}") from exc
    memo[_MEMO_SERVER] = server


@kopf.on.cleanup()
async def stop_intake(memo: kopf.Memo, **_: Any) -> None:
    server: IntakeServer | None = memo.get(_MEMO_SERVER)
    if server is not None:
        await server.stop()
