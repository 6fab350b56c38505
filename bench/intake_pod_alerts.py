"""Benchmark: a storm of pod-level alerts through the intake — what the owner lookups cost.

Usage::

    python bench/intake_pod_alerts.py [--alerts N] [--deployments D] [--cluster NAME] [--keep-cluster]

kube-prometheus-stack's pod-level alerts name only ``namespace``/``pod``/``container``; the
intake finds the workload through the owner chain (Pod → ReplicaSet → Deployment), GETs kept
in a short-TTL cache (``flywheel.stores.pod_owners``). This measures, on the real control
plane, with the real intake app (in this process, on a loopback port) recording real
Incidents, three storms of ``--alerts`` (1,000) alerts each, all with distinct fingerprints
(one Incident each), delivered as Alertmanager delivers them (webhook payloads of version 4,
groups of 10, 8 in flight):

- ``deployment-labelled`` (the baseline): KubePodCrashLooping carrying a ``deployment`` label, as
  alerts shaped for Flywheel used to;
- ``pod-labelled, cold``: KubePodCrashLooping with exactly kube-prometheus-stack's labels
  (``pod``, ``container``, ``uid``, ``reason``, kube-state-metrics' target labels), about the Pods
  of ``--deployments`` (20) Deployments of 2 replicas, the cache empty;
- ``pod-labelled, warm``: KubeContainerWaiting (``namespace``, ``pod``, ``container``) about the same
  Pods, right after;
- the baseline again (other containers, so other fingerprints), so that the ratios are against
  the mean of two baselines around the pod storms rather than against a drifting machine.

An unmeasured storm of 200 alerts first warms the API server, etcd and the client's connections.

It prints, per storm, alerts/s, the ratio to the baseline measured in the same run, and the API
GETs spent on owner lookups per alert (``PodOwnerStore.api_reads``; the target is ≤ 0.1 once
warm). The operator is not running: only the intake's own work is measured. Numbers are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from _cluster import DEFAULT_CLUSTER, BenchCluster, deployment_manifest
from pydantic import SecretStr

from flywheel.domain.alerts import NamespaceScope
from flywheel.intake import INTAKE_PATH, AlertRecorder, IntakeConfig, IntakeServer, build_app
from flywheel.logs import configure_logging
from flywheel.metrics.collector import OperatorCounters
from flywheel.stores.kube import FlywheelResources, KubeApi
from flywheel.stores.pod_owners import KubeObjectReader, PodOwnerStore

TOKEN = "bench-intake"
WARM_UP = "warm-up"
WARM_UP_ALERTS = 200
BASELINE = "deployment-labelled (baseline)"
GROUP_SIZE = 10
IN_FLIGHT = 8
REPLICAS = 2
# kube-state-metrics' scrape target as kube-prometheus-stack (release "prometheus") labels it.
KSM_TARGET = {"job": "kube-state-metrics", "endpoint": "http", "instance": "10.244.0.7:8080",
              "service": "prometheus-kube-state-metrics"}


@dataclass(frozen=True)
class Pod:
    name: str
    uid: str
    deployment: str


@dataclass(frozen=True)
class Storm:
    name: str
    alerts: int
    seconds: float
    owner_reads: int
    outcomes: Counter[str]

    @property
    def rate(self) -> float:
        return self.alerts / self.seconds if self.seconds else float("inf")

    @property
    def reads_per_alert(self) -> float:
        return self.owner_reads / self.alerts


def fingerprint(labels: dict[str, str]) -> str:
    # Alertmanager's fingerprint is a 64-bit hash of the label set; any stable hash shows the same.
    return hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]


def alert(labels: dict[str, str], starts_at: str) -> dict[str, Any]:
    return {
        "status": "firing", "labels": labels,
        "annotations": {"summary": f"{labels['alertname']} on {labels.get('pod') or labels.get('deployment')}"},
        "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example/graph", "fingerprint": fingerprint(labels),
    }


def payload(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "version": "4", "groupKey": "{}:{alertname=\"bench\"}", "truncatedAlerts": 0, "status": "firing",
        "receiver": "flywheel", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093", "alerts": alerts,
    }


def containers(count: int, first: int = 0) -> Iterator[str]:
    # Distinct label sets are distinct alerts: one container name per alert of a Pod.
    for index in range(first, first + count):
        yield f"app-{index:04d}"


def deployment_alerts(namespace: str, deployments: list[str], count: int, starts_at: str, *,
                      first_container: int = 0, alertname: str = "KubePodCrashLooping") -> list[dict[str, Any]]:
    per = -(-count // len(deployments))
    labels = [
        {"alertname": alertname, "namespace": namespace, "deployment": deployment, "container": container,
         "reason": "CrashLoopBackOff", "severity": "warning", **KSM_TARGET}
        for container in containers(per, first_container) for deployment in deployments
    ]
    return [alert(item, starts_at) for item in labels[:count]]


def crash_looping_alerts(namespace: str, pods: list[Pod], count: int, starts_at: str) -> list[dict[str, Any]]:
    per = -(-count // len(pods))
    labels = [
        {"alertname": "KubePodCrashLooping", "namespace": namespace, "pod": pod.name, "container": container,
         "uid": pod.uid, "reason": "CrashLoopBackOff", "severity": "warning", **KSM_TARGET}
        for container in containers(per) for pod in pods
    ]
    return [alert(item, starts_at) for item in labels[:count]]


def container_waiting_alerts(namespace: str, pods: list[Pod], count: int, starts_at: str) -> list[dict[str, Any]]:
    # sum by (namespace, pod, container, cluster) (kube_pod_container_status_waiting_reason) > 0
    per = -(-count // len(pods))
    labels = [
        {"alertname": "KubeContainerWaiting", "namespace": namespace, "pod": pod.name, "container": container,
         "severity": "warning"}
        for container in containers(per) for pod in pods
    ]
    return [alert(item, starts_at) for item in labels[:count]]


async def deliver(url: str, alerts: list[dict[str, Any]]) -> tuple[float, Counter[str]]:
    """Post the alerts in groups, ``IN_FLIGHT`` at once; (seconds, outcomes)."""
    groups = [alerts[start:start + GROUP_SIZE] for start in range(0, len(alerts), GROUP_SIZE)]
    outcomes: Counter[str] = Counter()
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for group in groups:
        queue.put_nowait(group)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            group = queue.get_nowait()
            async with session.post(url, json=payload(group), headers=headers) as response:
                body = await response.json()
                if response.status >= 500:
                    # Alertmanager re-sends the whole group on a 5xx: so does the benchmark.
                    queue.put_nowait(group)
                    continue
                outcomes.update(entry["outcome"] for entry in body["alerts"])

    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(IN_FLIGHT)))
    return time.perf_counter() - started, outcomes


async def measure(cluster: BenchCluster, namespaces: dict[str, str], deployments: list[str],
                  pods: list[Pod], count: int) -> list[Storm]:
    kube = KubeApi(config_file=str(cluster.kubeconfig))
    owners = PodOwnerStore(KubeObjectReader(kube))
    config = IntakeConfig(token=SecretStr(TOKEN), max_body_bytes=4 * 1024 * 1024, scope=NamespaceScope())
    server = IntakeServer(build_app(config, AlertRecorder(FlywheelResources(kube)), owners, OperatorCounters()),
                          "127.0.0.1", 0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}{INTAKE_PATH}"
    starts_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    plan: list[tuple[str, Callable[[], list[dict[str, Any]]]]] = [
        (WARM_UP, lambda: deployment_alerts(namespaces["baseline"], deployments, WARM_UP_ALERTS, starts_at,
                                            alertname="BenchWarmUp")),
        (BASELINE, lambda: deployment_alerts(namespaces["baseline"], deployments, count, starts_at)),
        ("pod-labelled, cold cache", lambda: crash_looping_alerts(namespaces["pods"], pods, count, starts_at)),
        ("pod-labelled, warm cache", lambda: container_waiting_alerts(namespaces["pods"], pods, count, starts_at)),
        (BASELINE + " again", lambda: deployment_alerts(namespaces["baseline"], deployments, count, starts_at,
                                                        first_container=5000)),
    ]
    storms: list[Storm] = []
    try:
        for name, build in plan:
            alerts = build()
            reads_before = owners.api_reads
            print(f"{name}: {len(alerts)} alerts ...", flush=True)
            seconds, outcomes = await deliver(url, alerts)
            storms.append(Storm(name, len(alerts), seconds, owners.api_reads - reads_before, outcomes))
    finally:
        await server.stop()
        await kube.close()
    return storms


def report(storms: list[Storm], pods: int, deployments: int) -> None:
    measured = [storm for storm in storms if storm.name != WARM_UP]
    baselines = [storm for storm in measured if storm.name.startswith(BASELINE)]
    baseline_rate = sum(storm.rate for storm in baselines) / len(baselines)
    print()
    print(f"{measured[0].alerts} alerts per storm, groups of {GROUP_SIZE}, {IN_FLIGHT} in flight; "
          f"{pods} Pods of {deployments} Deployments; ratios against the mean of the two baselines "
          f"({baseline_rate:.1f} alerts/s)")
    print(f"{'storm':<38} {'alerts/s':>9} {'vs baseline':>12} {'owner GETs':>11} {'GETs/alert':>11}  outcomes")
    for storm in measured:
        outcomes = ", ".join(f"{key} {value}" for key, value in sorted(storm.outcomes.items()))
        print(f"{storm.name:<38} {storm.rate:>9.1f} {storm.rate / baseline_rate:>11.2f}x "
              f"{storm.owner_reads:>11} {storm.reads_per_alert:>11.3f}  {outcomes}")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=1000, help="alerts per storm (default 1000)")
    parser.add_argument("--deployments", type=int, default=20, help=f"Deployments of {REPLICAS} Pods (default 20)")
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER, help=f"local control plane (default {DEFAULT_CLUSTER})")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the control plane running afterwards")
    arguments = parser.parse_args(argv)
    if arguments.alerts < 1 or arguments.deployments < 1:
        parser.error("--alerts and --deployments must be at least 1")
    return arguments


def pods_of(cluster: BenchCluster, namespace: str) -> list[Pod]:
    items = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
    return [Pod(item["metadata"]["name"], item["metadata"]["uid"], item["metadata"]["labels"]["app"])
            for item in items if item["status"].get("phase") == "Running"]


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # The intake logs every alert at info: in a storm that is the benchmark's own noise.
    configure_logging("WARNING")
    cluster = BenchCluster(arguments.cluster)
    print(f"control plane {arguments.cluster}: starting (cached binaries: seconds)", flush=True)
    cluster.up()
    suffix = uuid.uuid4().hex[:5]
    namespaces = {"baseline": f"bench-intake-deploy-{suffix}", "pods": f"bench-intake-pods-{suffix}"}
    deployments = [f"app-{index:03d}" for index in range(arguments.deployments)]
    try:
        cluster.wait_for_quiet()
        for namespace in namespaces.values():
            cluster.create_namespace(namespace)
            items = [deployment_manifest(name, namespace, replicas=REPLICAS) for name in deployments]
            cluster.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        for namespace in namespaces.values():
            cluster.kubectl("wait", "--for=condition=Available", "deployment", "--all", "-n", namespace,
                            "--timeout=300s")
        pods = pods_of(cluster, namespaces["pods"])
        storms = asyncio.run(measure(cluster, namespaces, deployments, pods, arguments.alerts))
        report(storms, len(pods), len(deployments))
    finally:
        for namespace in namespaces.values():
            cluster.delete_namespace(namespace)
        if not arguments.keep_cluster:
            cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
