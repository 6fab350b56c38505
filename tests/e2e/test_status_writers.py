"""Two writers of one Incident's status, interleaved on the real API server: no update is lost.

The Incident pass (``IncidentPasses``, as the operator runs it) and the Run controller's
resolution (``IncidentStatusStore.update_status`` with ``resolution_patch``, as
``controllers/run/outcome.py`` calls it) both write the Incident's status. The order is
forced, not left to timing:

1. a pass with Redis out of reach: the Incident is decided, its Run created, the anomaly
   counts ``degraded`` (so the driver brings it back every 15 s);
2. the next degraded pass has read the Incident (its body as the driver holds it) …
3. … when the Run resolves it (``Resolved=True``, phase Resolved);
4. the degraded pass, Redis back, writes what it computed from its read.

Before the fix step 4 was a merge patch of the whole ``conditions`` list without a
precondition, and erased ``Resolved=True``. Now the write carries the resourceVersion the
pass read: the API server refuses it (409), the pass asks its driver to read the Incident
again, and the pass over the fresh body keeps the resolution.

Scenario matrix:
- the interleaving above: ``Resolved=True`` survives, the recount lands (``AnomalyRecorded``);
- a Run's status write (the Approval's goes through the same ``write_status``) from a stale read is
  refused with 409 and leaves the first writer's status in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting

from flywheel.api.common import ObjectRef
from flywheel.api.enums import Disposition
from flywheel.controllers.driver import PassDeferred
from flywheel.controllers.run import resolution_patch
from flywheel.handlers.incident import IncidentPasses
from flywheel.settings import FlywheelSettings
from flywheel.stores.kube import KubeApi
from flywheel.wiring import Dependencies, build_dependencies
from tests.e2e.test_runs import apply_incident, condition, get
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.ports import free_port

pytestmark = pytest.mark.e2e


@contextlib.asynccontextmanager
async def dependencies(
    kubeconfig: str, namespace: str, redis_url: str, tmp_path: Path, label: str
) -> AsyncIterator[Dependencies]:
    settings = FlywheelSettings(
        # The operator's own namespace keeps the Run-binding key's Secret, as the shared fixture's does.
        namespace=namespace,
        remediation_namespaces=[namespace],
        redis_url=redis_url,
        redis_timeout_seconds=1.0,
        database_url=f"sqlite:///{tmp_path / f'history-{label}.db'}",
    )
    deps = await build_dependencies(settings, KubeApi(config_file=kubeconfig))
    try:
        yield deps
    finally:
        await deps.close()


def kopf_context() -> asyncio.Queue[Any]:
    """What ``kopf.event`` needs outside a running operator: a queue for the Events (not posted)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_var.set(queue)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    return queue


async def pass_until_done(passes: IncidentPasses, body: Mapping[str, Any], reread: Any) -> int:
    """One pass as the driver runs it, again over a fresh read while it defers for a re-read."""
    conflicts = 0
    for _ in range(5):
        try:
            await passes(body, {})
            return conflicts
        except PassDeferred as deferred:
            assert deferred.reread, f"deferred for another reason: {deferred.reason}"
            conflicts += 1
            body = await reread()
    raise AssertionError("the pass never got through")


def test_a_stale_incident_pass_never_erases_its_runs_resolution(
    test_cluster: TestCluster, flywheel_crds: None, namespace: str, clean_redis_url: str, tmp_path: Path
) -> None:
    create_deployment(test_cluster, "cart", namespace)
    apply_incident(test_cluster, namespace, "cart-oom", "cart")
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"

    async def scenario() -> int:
        kopf_context()
        async with dependencies(test_cluster.kubeconfig, namespace, dead_redis, tmp_path, "down") as down:
            first = await down.resources.get("incidents", namespace, "cart-oom")
            await IncidentPasses(down, {})(first, {})
            degraded = await down.resources.get("incidents", namespace, "cart-oom")
        assert degraded["status"]["anomaly"]["degraded"] is True, degraded["status"]
        assert degraded["status"]["runRef"]["name"] == "cart-oom-1", degraded["status"]

        async with dependencies(test_cluster.kubeconfig, namespace, clean_redis_url, tmp_path, "up") as up:
            run = await up.resources.get("runs", namespace, "cart-oom-1")
            run_ref = ObjectRef(name=run["metadata"]["name"], uid=run["metadata"]["uid"])

            def resolve(incident: Mapping[str, Any]) -> dict[str, Any] | None:
                return resolution_patch(
                    incident, run_ref=run_ref, disposition=Disposition.AUTO_REPAIR,
                    message="restarted Deployment/cart", now=datetime.now(UTC),
                )

            resolved = await up.run_stores.incidents.update_status(
                namespace, "cart-oom", degraded["metadata"]["uid"], resolve
            )
            assert resolved.incident is not None and resolved.incident["status"]["phase"] == "Resolved"

            async def reread() -> dict[str, Any]:
                return await up.resources.get("incidents", namespace, "cart-oom")

            # The degraded pass, over the body it read before the Run resolved the Incident.
            return await pass_until_done(IncidentPasses(up, {}), degraded, reread)

    conflicts = asyncio.run(scenario())
    status = get(test_cluster, namespace, "incident", "cart-oom")["status"]
    resolved = [c for c in status.get("conditions") or [] if c["type"] == "Resolved"]
    assert [(c["status"], c["reason"]) for c in resolved] == [("True", "AutoRepaired")], (
        f"the Run's resolution was erased: {status.get('conditions')}"
    )
    assert status["phase"] == "Resolved" and status["disposition"] == "auto_repair"
    assert condition(status, "AnomalyRecorded")["status"] == "True", "the recount of the stale pass landed"
    assert status["anomaly"]["degraded"] is False
    assert conflicts == 1, "the stale write was refused once, then the pass read the Incident again"



def test_a_run_status_write_refuses_a_stale_read(
    test_cluster: TestCluster, flywheel_crds: None, namespace: str, tmp_path: Path
) -> None:
    from flywheel.errors import ConflictError
    from flywheel.stores.kube import FlywheelResources

    run = {
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "Run", "metadata": {"name": "cart-oom-1"},
        "spec": {
            "incidentRef": {"name": "cart-oom", "uid": "0e7c2a9e-0000-4000-8000-000000000001"},
            "action": {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "cart"}},
            "riskLevel": "medium", "mode": "Auto", "traceId": "0af7651916cd43dd8448eb211c80319c",
        },
    }
    test_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(run))

    async def scenario() -> None:
        kube = KubeApi(config_file=test_cluster.kubeconfig)
        try:
            resources = FlywheelResources(kube)
            read = await resources.get("runs", namespace, "cart-oom-1")
            await resources.write_status("runs", read, {"state": "Running", "attempt": 1})
            with pytest.raises(ConflictError):
                # A second writer still holding the first read: refused, not merged over the first.
                await resources.write_status("runs", read, {"state": "Pending"})
        finally:
            await kube.close()

    asyncio.run(scenario())
    assert get(test_cluster, namespace, "runs.flywheel.dev", "cart-oom-1")["status"]["state"] == "Running"
