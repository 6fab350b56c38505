"""Benchmark: what each kind of request Flywheel makes costs the API server, in CPU.

Usage::

    python bench/api_request_costs.py [--requests N] [--cluster NAME] [--keep-cluster]

On this machine the operator and the API server share two cores, so an Incident's throughput
is bounded by the CPU both spend on it. This measures the API server's side, one request kind
at a time: N requests (default 400, 32 in flight) of each kind a Shadow Incident costs —
create an Incident, patch its status, create a Run, patch its status, post an Event, create a
Lease, read a Deployment and patch it as a server-side dry run — and, as the baseline in the
same run, reading an Incident (the cheapest request there is). It prints the API server's and
etcd's CPU milliseconds per request (their own counters in /proc, the idle control plane's
background subtracted), and what one Incident of the storm costs at the mix the operator makes
(``bench/e2e_throughput.py`` counts it).

Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from _cluster import DEFAULT_CLUSTER, BenchCluster, KubeClient, incident_manifest

CONCURRENCY = 32
IDLE_SECONDS = 5.0
# Requests per Incident of the Shadow storm (bench/e2e_throughput.py, 60 % of them get a Run):
# the one create by whoever reports it, then what Flywheel does.
STORM_MIX = {
    "create Incident": 1.0,
    "patch Incident status": 1.0,
    "create Run": 0.6,
    "patch Run status": 0.6,
    "post Event": 1.60,
    "create Lease": 0.6,
    "get Deployment": 0.6,
    "dry-run patch Deployment": 0.6,
}


@dataclass(frozen=True)
class Cost:
    kind: str
    requests: int
    seconds: float
    api_server_ms: float
    etcd_ms: float


def run_manifest(name: str, incident_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "Run", "metadata": {"name": name},
        "spec": {
            "incidentRef": {"name": name, "uid": incident_uid},
            "action": {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "app-000"}},
            "riskLevel": "medium", "requiresApproval": False, "mode": "Shadow", "timeoutSeconds": 600,
            "maxAttempts": 2, "traceId": uuid.uuid4().hex, "trigger": {"type": "Incident", "ref": name},
        },
    }


def index_of(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def incident_status(key: str) -> dict[str, Any]:
    """A status of the size a Shadow pass writes (counts, a decision, three conditions)."""
    now = "2026-12-01T20:00:00Z"
    return {
        "phase": "Mitigating", "observedGeneration": 1,
        "anomaly": {"key": key, "count1h": 1, "count24h": 1, "count7d": 1, "count30d": 1, "firstSeen": now,
                    "lastSeen": now, "degraded": False, "permanentFixApplied": False, "autoRepairCount": 0},
        "decision": {"id": "DEC-0123456789ab", "state": "Ready", "source": "rules",
                     "action": {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "app-000"}},
                     "riskLevel": "medium", "confidence": 0.75, "matchedRule": "pod_crash",
                     "reasoning": "rule pod_crash matched: restart the rollout of Deployment/app-000"},
        "conditions": [
            {"type": kind, "status": "True", "reason": "Benchmark", "message": "benchmark", "lastTransitionTime": now,
             "observedGeneration": 1}
            for kind in ("AnomalyRecorded", "Decided", "RemediationStarted")
        ],
    }


async def measure(cluster: BenchCluster, namespace: str, requests: int) -> list[Cost]:
    names = [f"cost-{uuid.uuid4().hex[:5]}-{index:05d}" for index in range(requests)]
    uids: dict[str, str] = {}
    gate = asyncio.Semaphore(CONCURRENCY)
    costs: list[Cost] = []
    base = "/apis/flywheel.dev/v1alpha1/namespaces/" + namespace
    deployment = f"/apis/apps/v1/namespaces/{namespace}/deployments/app-000"

    async with KubeClient(cluster.kubeconfig, connections=CONCURRENCY) as client:

        async def create_incident(name: str) -> None:
            created = await client.create("incidents", namespace, incident_manifest(name, service=name,
                                                                                   target="app-000", mode="Shadow"))
            uids[name] = created["metadata"]["uid"]

        def kinds() -> dict[str, Callable[[str], Awaitable[Any]]]:
            return {
                "get Incident (baseline)": lambda name: client.request("GET", f"{base}/incidents/{name}",
                                                                       resource="incidents"),
                "patch Incident status": lambda name: client.patch_status("incidents", namespace, name,
                                                                          incident_status(f"{index_of(name):016x}")),
                "create Run": lambda name: client.create("runs", namespace, run_manifest(name, uids[name])),
                "patch Run status": lambda name: client.patch_status(
                    "runs", namespace, name, {"state": "Succeeded", "attempt": 1, "startedAt": "2026-12-01T20:00:00Z",
                                              "completedAt": "2026-12-01T20:00:01Z"}),
                "post Event": lambda name: client.request("POST", f"/api/v1/namespaces/{namespace}/events", {
                    "apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}"},
                    "involvedObject": {"apiVersion": "flywheel.dev/v1alpha1", "kind": "Incident", "name": name,
                                       "namespace": namespace, "uid": uids[name]},
                    "type": "Normal", "reason": "DecisionReady", "message": "restart the rollout of Deployment/app-000",
                    "source": {"component": "flywheel-benchmark"}, "count": 1,
                }, resource="events"),
                "create Lease": lambda name: client.request(
                    "POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
                    {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
                     "spec": {"holderIdentity": uids[name]}}, resource="leases"),
                "get Deployment": lambda name: client.request("GET", deployment, resource="deployments"),
                "dry-run patch Deployment": lambda name: client.request(
                    "PATCH", deployment + "?dryRun=All&fieldManager=flywheel",
                    {"spec": {"template": {"metadata": {"annotations": {"flywheel.dev/restartedAt": name}}}}},
                    resource="deployments", content_type="application/merge-patch+json"),
            }

        idle = idle_rate(cluster)
        steps: list[tuple[str, Callable[[str], Awaitable[Any]]]] = [("create Incident", create_incident)]
        steps += list(kinds().items())
        for kind, request in steps:
            async def bounded(name: str, request: Callable[[str], Awaitable[Any]] = request) -> None:
                async with gate:
                    await request(name)

            before, started = cluster.control_plane_cpu(), time.monotonic()
            await asyncio.gather(*(bounded(name) for name in names))
            seconds = time.monotonic() - started
            after = cluster.control_plane_cpu()
            spent = {component: after[component] - before.get(component, 0.0) - idle.get(component, 0.0) * seconds
                     for component in after}
            costs.append(Cost(kind, requests, seconds, max(spent.get("kube-apiserver", 0.0), 0.0) / requests * 1000,
                              max(spent.get("etcd", 0.0), 0.0) / requests * 1000))
    return costs


def idle_rate(cluster: BenchCluster) -> dict[str, float]:
    """CPU seconds per second each component spends with nobody asking anything."""
    before = cluster.control_plane_cpu()
    time.sleep(IDLE_SECONDS)
    after = cluster.control_plane_cpu()
    return {component: (after[component] - before.get(component, 0.0)) / IDLE_SECONDS for component in after}


def report(costs: list[Cost]) -> None:
    print(f"\n{'request':<28} {'requests':>8} {'seconds':>8} {'kube-apiserver':>15} {'etcd':>8}")
    for cost in costs:
        print(f"{cost.kind:<28} {cost.requests:>8} {cost.seconds:>8.2f} {cost.api_server_ms:>12.2f} ms "
              f"{cost.etcd_ms:>5.2f} ms")
    by_kind = {cost.kind: cost for cost in costs}
    per_incident = sum(by_kind[kind].api_server_ms * share for kind, share in STORM_MIX.items())
    print(f"\nkube-apiserver CPU per Incident at the storm's mix of requests (no watches counted): "
          f"{per_incident:.1f} ms")
    for kind, share in STORM_MIX.items():
        print(f"  {share:4.2f} x {kind:<26} {by_kind[kind].api_server_ms * share:6.1f} ms")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests of each kind (default 400)")
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER, help=f"local control plane (default {DEFAULT_CLUSTER})")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the control plane running afterwards")
    arguments = parser.parse_args(argv)
    if arguments.requests < 1:
        parser.error("--requests must be at least 1")
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cluster = BenchCluster(arguments.cluster)
    print(f"control plane {arguments.cluster}: starting (cached binaries: seconds)", flush=True)
    cluster.up()
    namespace = f"bench-costs-{uuid.uuid4().hex[:5]}"
    try:
        cluster.wait_for_quiet()
        cluster.create_namespace(namespace)
        cluster.create_deployments(namespace, ["app-000"])
        time.sleep(3.0)  # the controller-manager's last status updates of the new Deployment
        report(asyncio.run(measure(cluster, namespace, arguments.requests)))
    finally:
        if arguments.keep_cluster:
            cluster.delete_namespace(namespace)
        else:
            cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
