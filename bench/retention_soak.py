"""Benchmark: steady inflow with retention on; object count and operator RSS over time.

Usage::

    python bench/retention_soak.py [--duration SECONDS] [--ttl SECONDS] [--rate R] [--interval S]
                                   [--duplicate-every N] [--mode Auto|Shadow] [--workloads W]
                                   [--cluster NAME] [--keep-cluster]

The default is a short run (4 minutes, TTL 60 s); the soak of issue 18 is
``--duration 1800 --ttl 300``.

On a named local control plane (``flywheel dev up --name flywheel-bench``; ``--cluster`` names
another, ``--keep-cluster`` leaves it running), with a private redis-server, an SQLite history
file and a history spool directory, ``flywheel run --standalone`` runs with
``FLYWHEEL_FINISHED_TTL_SECONDS=--ttl``. For ``--duration`` seconds a new Incident is created every
1/``--rate`` s; each gets an Auto Run (a real rollout restart of one of ``--workloads`` fake
Deployments) that finishes and resolves it, and retention deletes it ``--ttl``
seconds later. Every ``--duplicate-every``-th Incident (default 5; 0: none) is followed at once by
a twin of the same anomaly, which becomes a Duplicate of it and must leave with it (a Duplicate
follows its primary's TTL; before that, Duplicates stayed forever and the count grew). Every ``--interval`` seconds the script prints the Incidents, Runs and Approvals
present, the operator's RSS and ``flywheel_retention_deleted_total``; at the end, over the part
of the run after the first TTL (when deletions balance the inflow), the slope of the object
count and of the RSS (least squares, per 10 minutes) and their ranges.

With a steady inflow the expected population is about rate × (TTL + time to resolve): flat
counts and RSS mean nothing is kept that should not be. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from _cluster import (
    DEFAULT_CLUSTER,
    BenchCluster,
    KubeClient,
    OperatorProcess,
    free_loopback_port,
    incident_manifest,
    megabytes,
    private_redis_server,
)

RETENTION_INTERVAL_SECONDS = 5


@dataclass(frozen=True)
class Sample:
    elapsed: float
    incidents: int
    duplicates: int
    runs: int
    approvals: int
    rss: int
    deleted: float


def slope_per_10_minutes(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return float("nan")
    xs, ys = zip(*points, strict=True)
    fit = statistics.linear_regression(xs, ys)
    return fit.slope * 600


def deleted_incidents(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith('flywheel_retention_deleted_total{kind="Incident"}'):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


async def soak(kubeconfig: Path, namespace: str, operator: OperatorProcess, metrics_url: str,
               arguments: argparse.Namespace) -> int:
    prefix = f"ret-{uuid.uuid4().hex[:4]}"
    samples: list[Sample] = []
    started = time.monotonic()
    created = twins = 0
    async with KubeClient(kubeconfig) as client:

        async def count(plural: str) -> int:
            return len((await client.list(plural, namespace)).get("items") or [])

        async def sample() -> Sample:
            listed, runs, approvals = await asyncio.gather(
                client.list("incidents", namespace), count("runs"), count("approvals"))
            incidents = listed.get("items") or []
            duplicates = sum(1 for item in incidents if (item.get("status") or {}).get("phase") == "Duplicate")
            deleted = await asyncio.to_thread(deleted_incidents, metrics_url)
            return Sample(time.monotonic() - started, len(incidents), duplicates, runs, approvals,
                          operator.usage().rss_bytes, deleted)

        print(f"inflow {arguments.rate}/s for {arguments.duration:.0f} s, TTL {arguments.ttl} s, mode {arguments.mode}")
        print(f"{'t (s)':>7} {'created':>8} {'incidents':>9} {'dups':>5} {'runs':>6} {'approvals':>9} "
              f"{'deleted':>8} {'RSS':>8}")
        next_sample = 0.0
        period = 1 / arguments.rate
        while (elapsed := time.monotonic() - started) < arguments.duration:
            if not operator.running():
                print(f"operator exited:\n{operator.log_tail()}")
                return 1
            name = f"{prefix}-{created:06d}"
            service, target = f"svc-{created:06d}", f"app-{created % arguments.workloads:03d}"
            await client.create("incidents", namespace, incident_manifest(
                name, service=service, target=target, mode=arguments.mode))
            created += 1
            if arguments.duplicate_every and created % arguments.duplicate_every == 0:
                await client.create("incidents", namespace, incident_manifest(
                    f"{name}-twin", service=service, target=target, mode=arguments.mode))
                twins += 1
            if elapsed >= next_sample:
                current = await sample()
                samples.append(current)
                print(f"{current.elapsed:7.0f} {created:8d} {current.incidents:9d} {current.duplicates:5d} "
                      f"{current.runs:6d} "
                      f"{current.approvals:9d} {current.deleted:8.0f} {megabytes(current.rss):>8}", flush=True)
                next_sample += arguments.interval
            await asyncio.sleep(max(0.0, started + created * period - time.monotonic()))
    steady = [item for item in samples if item.elapsed >= arguments.ttl + 2 * RETENTION_INTERVAL_SECONDS]
    print(f"created {created} Incidents and {twins} twins (Duplicates); at most "
          f"{max((item.duplicates for item in samples), default=0)} Duplicates present; operator log errors: {operator.errors_in_log()}")
    if len(steady) < 2:
        print("too short to judge: run longer than the TTL (e.g. --duration 1800 --ttl 300)")
        return 0
    objects = [(item.elapsed, float(item.incidents + item.runs + item.approvals)) for item in steady]
    rss = [(item.elapsed, item.rss / 2**20) for item in steady]
    print(f"after the first TTL ({len(steady)} samples): objects {min(y for _, y in objects):.0f}.."
          f"{max(y for _, y in objects):.0f}, slope {slope_per_10_minutes(objects):+.1f} per 10 min; "
          f"RSS {min(y for _, y in rss):.0f}..{max(y for _, y in rss):.0f} MB, "
          f"slope {slope_per_10_minutes(rss):+.1f} MB per 10 min")
    print(f"expected population ≈ rate × TTL = {arguments.rate * arguments.ttl:.0f} Incidents (+ those resolving)")
    return 0


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=240.0, help="inflow length in seconds (default 240)")
    parser.add_argument("--ttl", type=int, default=60, help="FLYWHEEL_FINISHED_TTL_SECONDS (default 60)")
    parser.add_argument("--rate", type=float, default=0.5, help="new Incidents per second (default 0.5)")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between samples (default 15)")
    parser.add_argument("--duplicate-every", type=int, default=5,
                        help="every N-th Incident gets a twin that becomes its Duplicate (default 5; 0: none)")
    # Auto: a Shadow Run only dry-runs and never resolves its Incident, so retention would have nothing to do.
    parser.add_argument("--mode", choices=("Shadow", "Auto"), default="Auto", help="remediation mode (default Auto)")
    parser.add_argument("--workloads", type=int, default=20, help="fake Deployments (default 20)")
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER, help=f"local control plane (default {DEFAULT_CLUSTER})")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the control plane running afterwards")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "flywheel-bench",
                        help="directory for the operator log")
    arguments = parser.parse_args(argv)
    if arguments.rate <= 0 or arguments.duration <= 0 or arguments.ttl < 1 or arguments.interval <= 0:
        parser.error("--rate, --duration, --interval must be positive and --ttl at least 1")
    if arguments.duplicate_every < 0:
        parser.error("--duplicate-every must be 0 or more")
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    # A SIGTERM (timeout, kill) unwinds like Ctrl-C, so the operator and Redis are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    arguments.logs.mkdir(parents=True, exist_ok=True)
    cluster = BenchCluster(arguments.cluster)
    print(f"control plane {arguments.cluster}: starting (cached binaries: seconds)", flush=True)
    cluster.up()
    namespace = f"bench-retention-{uuid.uuid4().hex[:5]}"
    try:
        cluster.create_namespace(namespace)
        cluster.create_deployments(namespace, [f"app-{index:03d}" for index in range(arguments.workloads)])
        with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as directory, private_redis_server() as redis_url:
            metrics_port = free_loopback_port()
            operator = OperatorProcess(cluster.kubeconfig, [namespace], {
                "redis_url": redis_url,
                "database_url": f"sqlite:///{Path(directory) / 'history.db'}",
                "history_spool_dir": str(Path(directory) / "spool"),
                "finished_ttl_seconds": str(arguments.ttl),
                "retention_interval_seconds": str(RETENTION_INTERVAL_SECONDS),
                "intake_port": "0",
                "metrics_port": str(metrics_port),
                "metrics_bind_address": "127.0.0.1",
                "run_max_concurrent_per_namespace": str(max(arguments.workloads, 5)),
                "circuit_breaker_max_remediations": "1000000",
            }, arguments.logs / f"operator-{namespace}.log")
            operator.start()
            try:
                return asyncio.run(soak(cluster.kubeconfig, namespace, operator,
                                        f"http://127.0.0.1:{metrics_port}/metrics", arguments))
            finally:
                operator.stop()
    finally:
        if arguments.keep_cluster:
            cluster.delete_namespace(namespace)
        else:
            cluster.down()


if __name__ == "__main__":
    sys.exit(main())
