"""Benchmark: the operator's CPU while N Runs wait in Verifying (issue #16: ≤ 5 % of a core for 1,000).

A verification window waits without polling: the pass that sees the rollout complete asks to be
driven again when the window ends. This measures what N such Runs cost while they wait, against
the same operator idle, in the same run:

1. baseline: ``flywheel run`` on an empty namespace, CPU seconds over ``--seconds``;
2. waiting: N Incidents and N Runs written as the operator leaves them after a rollout completed
   (Incident Mitigating, decision Executing; Run Verifying, attempt 1, condition SymptomGone
   Unknown, a window of ``--window`` seconds), then a fresh operator on that namespace lists
   them, drives each once, and its CPU seconds are measured over ``--seconds`` once it settled.

Everything is real: the named local control plane, a private redis-server, the operator as a
subprocess, its CPU from /proc. The figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from _cluster import (
    GROUP_VERSION,
    BenchCluster,
    KubeClient,
    OperatorProcess,
    free_loopback_port,
    private_redis_server,
)

from flywheel.domain.decision import decision_id
from flywheel.domain.signature import anomaly_key

SERVICE = "checkout"
ALERT = "KubePodCrashLooping"
ERROR = "CrashLoopBackOff"


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def write_waiting_runs(kubeconfig: Path, namespace: str, count: int, window: int) -> None:
    """N Incidents and their Runs, in the state a Run is in during its verification window."""
    now = datetime.now(UTC)
    key = anomaly_key(ALERT, SERVICE, namespace, ERROR)
    async with KubeClient(kubeconfig) as client:
        semaphore = asyncio.Semaphore(32)

        async def one(index: int) -> None:
            name = f"verifying-{index:05d}"
            async with semaphore:
                incident = await client.create("incidents", namespace, {
                    "apiVersion": GROUP_VERSION, "kind": "Incident", "metadata": {"name": name},
                    "spec": {"alertName": ALERT, "service": SERVICE, "errorType": ERROR, "source": "bench",
                             "targetRef": {"kind": "Deployment", "name": f"app-{index:05d}"}},
                })
                uid = incident["metadata"]["uid"]
                run = await client.create("runs", namespace, {
                    "apiVersion": GROUP_VERSION, "kind": "Run",
                    "metadata": {"name": f"{name}-1", "labels": {"flywheel.dev/anomaly-key": key},
                                 "ownerReferences": [{"apiVersion": GROUP_VERSION, "kind": "Incident", "name": name,
                                                      "uid": uid, "controller": True}]},
                    "spec": {"incidentRef": {"name": name, "uid": uid},
                             "action": {"type": "RolloutRestart",
                                        "target": {"kind": "Deployment", "name": f"app-{index:05d}"}},
                             "riskLevel": "medium", "mode": "Auto", "timeoutSeconds": 600, "maxAttempts": 1,
                             "verificationWindowSeconds": window, "traceId": uuid.uuid4().hex},
                })
                await client.patch_status("incidents", namespace, name, {
                    "phase": "Mitigating", "observedGeneration": 1, "anomaly": {"key": key},
                    "decision": {"id": decision_id(uid, 1), "state": "Executing", "sequence": 1},
                    "runRef": {"name": f"{name}-1", "uid": run["metadata"]["uid"]},
                })
                condition = {"status": "Unknown", "lastTransitionTime": stamp(now), "observedGeneration": 1}
                await client.patch_status("runs", namespace, f"{name}-1", {
                    "state": "Verifying", "attempt": 1, "startedAt": stamp(now), "heartbeatAt": stamp(now),
                    "observedGeneration": 1,
                    "conditions": [
                        {"type": "Succeeded", "reason": "VerifyingSymptom", "message": "rollout complete", **condition},
                        {"type": "SymptomGone", "reason": "Watching", "message": "window", **condition},
                    ],
                    "steps": [{"seq": 1, "name": "verify", "result": "RolloutComplete", "at": stamp(now)}],
                })

        await asyncio.gather(*(one(index) for index in range(count)))


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
            written = time.monotonic()
            asyncio.run(write_waiting_runs(cluster.kubeconfig, waiting_namespace, arguments.runs, arguments.window))
            print(f"wrote {arguments.runs} Incidents and Runs in {time.monotonic() - written:.1f} s", flush=True)
            waiting = OperatorProcess(cluster.kubeconfig, [waiting_namespace], settings(Path(directory), redis_url),
                                      logs / "waiting.log")
            started = time.monotonic()
            waiting.start()
            try:
                time.sleep(arguments.settle)
                startup = waiting.usage().cpu_seconds
                busy = cpu_over(waiting, arguments.seconds)
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
    print(f"start-up listing and first passes:  {startup:.1f} CPU s within {arguments.settle:.0f} s of "
          f"{time.monotonic() - started - arguments.seconds:.0f} s; RSS {rss / 2**20:.0f} MiB; log errors {errors}")
    print(f"Runs still Verifying at the end: {verifying} of {arguments.runs} (budget: 5 % of a core)")
    print(f"logs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
