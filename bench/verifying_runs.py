"""Benchmark: the operator's CPU while N Runs wait in Verifying (issue #16: ≤ 5 % of a core for 1,000).

A verification window waits without polling: the pass that sees the rollout complete asks to be
driven again when the window ends. This measures what N such Runs cost while they wait, against
the same operator idle, in the same run:

1. baseline: ``flywheel run`` on an empty namespace, CPU seconds over ``--seconds``;
2. waiting: a fresh operator with a window of ``--window`` seconds; N Incidents of N distinct
   anomalies are filed at once on ``--workloads`` KWOK Deployments; each Run restarts its
   Deployment, sees the rollout complete and enters its window (condition SymptomGone Unknown);
   once all N wait, the operator's CPU seconds are measured over ``--seconds``, and the Run
   driver's passes in that interval are counted (its own ``flywheel_reconcile_passes_total``).

(The N objects are filed while the operator runs: an operator started over more than 256
existing objects of a kind waits for Kopf's indexes forever, see docs/benchmarks.md.)

Everything is real: the named local control plane, a private redis-server, the operator as a
subprocess, its CPU from /proc. The figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from _cluster import (
    BenchCluster,
    KubeClient,
    OperatorProcess,
    free_loopback_port,
    incident_manifest,
    private_redis_server,
)


async def file_incidents(kubeconfig: Path, namespace: str, count: int, workloads: int) -> None:
    """N Incidents of N distinct anomalies (one service each) on ``workloads`` Deployments, Auto mode."""
    async with KubeClient(kubeconfig) as client:
        semaphore = asyncio.Semaphore(32)

        async def one(index: int) -> None:
            async with semaphore:
                await client.create("incidents", namespace, incident_manifest(
                    f"verifying-{index:05d}", service=f"svc-{index:05d}", target=f"app-{index % workloads:03d}",
                    mode="Auto"))

        await asyncio.gather(*(one(index) for index in range(count)))


def waiting_in_window(cluster: BenchCluster, namespace: str) -> tuple[int, int]:
    """(Runs in their verification window, Runs in all)."""
    listed = json.loads(cluster.kubectl("get", "runs", "-n", namespace, "-o", "json"))["items"]
    waiting = sum(
        1 for run in listed
        if (run.get("status") or {}).get("state") == "Verifying"
        and any(c.get("type") == "SymptomGone" and c.get("status") == "Unknown"
                for c in (run.get("status") or {}).get("conditions") or [])
    )
    return waiting, len(listed)


def run_passes(metrics_port: str) -> float:
    """The Run driver's passes so far (``flywheel_reconcile_passes_total``, every result)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("flywheel_reconcile_passes_total{") and 'kind="runs"' in line)


def cpu_over(operator: OperatorProcess, seconds: float) -> float:
    """CPU seconds per second (a fraction of one core) over ``seconds``."""
    before, started = operator.usage().cpu_seconds, time.monotonic()
    time.sleep(seconds)
    return (operator.usage().cpu_seconds - before) / (time.monotonic() - started)


def settings(workdir: Path, redis_url: str) -> dict[str, str]:
    return {"redis_url": redis_url, "database_url": f"sqlite:///{workdir / 'history.db'}", "intake_port": "0",
            "metrics_port": str(free_loopback_port())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement interval of each phase")
    parser.add_argument("--settle", type=float, default=30.0, help="after the start-up listing, before measuring")
    parser.add_argument("--window", type=int, default=3600, help="the Runs' verification window")
    parser.add_argument("--workloads", type=int, default=50, help="KWOK Deployments the Runs restart")
    parser.add_argument("--fill-timeout", type=float, default=600.0, help="for every Run to reach its window")
    parser.add_argument("--cluster", default="flywheel-bench")
    parser.add_argument("--keep-cluster", action="store_true")
    arguments = parser.parse_args(argv)
    cluster = BenchCluster(arguments.cluster)
    cluster.up()
    run_id = uuid.uuid4().hex[:5]
    idle_namespace, waiting_namespace = f"bench-idle-{run_id}", f"bench-verifying-{run_id}"
    logs = Path(tempfile.mkdtemp(prefix="flywheel-bench-verifying-"))
    try:
        for namespace in (idle_namespace, waiting_namespace):
            cluster.create_namespace(namespace)
        with tempfile.TemporaryDirectory() as directory, private_redis_server() as redis_url:
            idle = OperatorProcess(cluster.kubeconfig, [idle_namespace], settings(Path(directory), redis_url),
                                   logs / "idle.log")
            idle.start()
            try:
                time.sleep(arguments.settle)
                baseline = cpu_over(idle, arguments.seconds)
            finally:
                idle.stop()
            cluster.create_deployments(waiting_namespace, [f"app-{index:03d}" for index in range(arguments.workloads)])
            waiting_settings = {
                **settings(Path(directory), redis_url),
                "verification_window_seconds": str(arguments.window),
                # N Runs at once on a few workloads: the default limits would make a queue of them.
                "run_max_concurrent_per_namespace": str(arguments.runs),
                "run_max_concurrent_per_target": str(arguments.runs),
                "circuit_breaker_max_remediations": str(arguments.runs + 1),
            }
            waiting = OperatorProcess(cluster.kubeconfig, [waiting_namespace], waiting_settings, logs / "waiting.log")
            waiting.start()
            try:
                filed = time.monotonic()
                asyncio.run(file_incidents(cluster.kubeconfig, waiting_namespace, arguments.runs, arguments.workloads))
                while time.monotonic() - filed < arguments.fill_timeout:
                    in_window, total = waiting_in_window(cluster, waiting_namespace)
                    if in_window >= arguments.runs:
                        break
                    time.sleep(5)
                print(f"{in_window} of {total} Runs restarted their Deployment, saw the rollout complete and wait "
                      f"in their window ({time.monotonic() - filed:.0f} s)", flush=True)
                time.sleep(arguments.settle)
                startup = waiting.usage().cpu_seconds
                first_passes = run_passes(waiting_settings["metrics_port"])
                busy = cpu_over(waiting, arguments.seconds)
                measured_passes = run_passes(waiting_settings["metrics_port"]) - first_passes
                rss = waiting.usage().rss_bytes
                errors = waiting.errors_in_log()
            finally:
                waiting.stop()
        state = cluster.kubectl("get", "runs", "-n", waiting_namespace, "-o",
                                "jsonpath={range .items[*]}{.status.state}{'\\n'}{end}").split()
        verifying = sum(1 for value in state if value == "Verifying")
    finally:
        for namespace in (idle_namespace, waiting_namespace):
            cluster.delete_namespace(namespace)
        if not arguments.keep_cluster:
            cluster.down()
    print(f"\noperator idle (empty namespace):       {baseline * 100:6.2f} % of a core")
    print(f"{arguments.runs} Runs waiting in Verifying:     {busy * 100:6.2f} % of a core "
          f"(+{(busy - baseline) * 100:.2f} points over idle; ratio {busy / baseline if baseline else float('nan'):.2f}x)")
    print(f"filing, restarting and verifying the rollouts: {startup:.1f} CPU s, {first_passes:.0f} Run passes; "
          f"RSS {rss / 2**20:.0f} MiB; log errors {errors}")
    print(f"Run passes while waiting: {measured_passes:.0f} in {arguments.seconds:.0f} s "
          f"(a 2 s poll would be {arguments.runs * arguments.seconds / 2:.0f})")
    print(f"Runs still Verifying at the end: {verifying} of {arguments.runs} (budget: 5 % of a core)")
    print(f"logs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
