"""Benchmark: an alert storm end to end — Incidents created at once, until every Run is finished.

Usage::

    python bench/e2e_throughput.py [--incidents N] [--paced-rate R] [--paced-seconds S]
                                   [--auto-incidents M] [--workloads W] [--cluster NAME] [--keep-cluster]

Everything is real: a named local control plane (``flywheel dev up --name flywheel-bench``;
KWOK fake nodes, so Deployments really roll out), a private redis-server and SQLite file per
phase, and ``flywheel run --standalone`` as a subprocess (its CPU seconds and peak RSS are read
from /proc). Phases, each with a fresh operator, Redis and namespace:

1. ``storm/Shadow``: N Incidents (default 1,000) created at once (64 requests in flight), a mix
   of distinct and repeating anomaly keys (``--distinct-fraction``, default 0.6: 600 keys, 400
   Incidents repeat one of them and become Duplicates), Runs in Shadow mode (server-side dry
   run, so no rollout waits dominate);
2. ``paced/Shadow``: the same mix created at a steady ``--paced-rate`` (default 10/s) for
   ``--paced-seconds`` (default 30 s): the creation-to-Running latency at a sustainable load;
3. ``storm/Auto``: M Incidents (default 200) at once in Auto mode on W fake Deployments (default
   50): every Run restarts its Deployment and verifies the rollout;
4. ``ceiling``: a plain asyncio client doing the same creates and status patches as phase 1
   (N Incident creates + N Incident status patches, R Run creates + 2R Run status patches)
   against the same API server, 64 in flight — the most this API server can take right now.

It prints, per phase: time until every Run is terminal, incidents per second (to Run Running),
p50/p95/p99 latency from Incident creation (the create call's answer) to the Run being seen in
Running or later on a watch, API requests and writes per Incident (the API server's
``apiserver_request_total`` before/after, less the control plane's own background rate measured
idle, less this script's own requests), operator CPU seconds and peak RSS; and phase 1's
throughput as a ratio of the ceiling. Numbers are printed, never asserted: the machine is
shared, which is why the ratio against the ceiling measured in the same run is the figure to
compare across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _cluster import (
    DEFAULT_CLUSTER,
    STARTED_RUN_STATES,
    TERMINAL_RUN_STATES,
    WRITE_VERBS,
    BenchCluster,
    KubeClient,
    OperatorProcess,
    ProcessUsage,
    RequestTally,
    describe_latencies,
    free_loopback_port,
    incident_manifest,
    megabytes,
    noise_rate,
    percentile,
    private_redis_server,
)

CREATE_CONCURRENCY = 64
NOISE_SECONDS = 10.0
# Targets of issue #8, printed beside the figures (never asserted).
TARGET_STORM_RATE = 40.0
TARGET_PACED_P99_SECONDS = 2.0
TARGET_CEILING_RATIO = 0.5
TARGET_SHADOW_WRITES = 6.0


@dataclass(frozen=True)
class Scenario:
    name: str
    mode: str  # Shadow | Auto
    incidents: int
    rate: float | None  # Incidents per second; None: all at once
    distinct_fraction: float
    workloads: int


@dataclass
class Observed:
    """What the watches saw, in this process's monotonic clock."""

    created_at: dict[str, float] = field(default_factory=dict)  # incident -> create answered
    processed_at: dict[str, float] = field(default_factory=dict)  # incident -> phase set
    run_of: dict[str, str] = field(default_factory=dict)  # incident -> run name
    run_incident: dict[str, str] = field(default_factory=dict)  # run -> incident name
    run_state: dict[str, str] = field(default_factory=dict)
    run_started_at: dict[str, float] = field(default_factory=dict)  # run -> seen Running or later
    run_finished_at: dict[str, float] = field(default_factory=dict)  # run -> seen terminal
    duplicates: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def done(self, expected: int) -> bool:
        if len(self.processed_at) < expected:
            return False
        return all(self.run_state.get(run) in TERMINAL_RUN_STATES for run in self.run_of.values())


@dataclass
class PhaseResult:
    scenario: Scenario
    observed: Observed
    completed: bool
    first_create: float
    last_create: float
    finished: float
    requests: RequestTally
    usage_before: ProcessUsage
    usage_after: ProcessUsage
    operator_errors: int
    control_plane_cpu: dict[str, float]  # CPU seconds per component during the phase

    @property
    def api_server_cpu_per_incident(self) -> float:
        return self.control_plane_cpu.get("kube-apiserver", 0.0) / self.scenario.incidents

    @property
    def runs(self) -> int:
        return len(self.observed.run_of)

    @property
    def latencies(self) -> list[float]:
        seen = self.observed
        return [
            seen.run_started_at[run] - seen.created_at[incident]
            for run, incident in seen.run_incident.items()
            if run in seen.run_started_at and incident in seen.created_at
        ]

    @property
    def last_started(self) -> float:
        return max(self.observed.run_started_at.values(), default=self.first_create)

    @property
    def runs_started_per_second(self) -> float:
        return len(self.observed.run_started_at) / max(self.last_started - self.first_create, 1e-9)

    @property
    def incidents_per_second(self) -> float:
        """Incidents turned into a Run Running (or a Duplicate) per second, first create to last."""
        last = max([*self.observed.processed_at.values(), self.last_started])
        return self.scenario.incidents / max(last - self.first_create, 1e-9)


def incident_names(scenario: Scenario, run_id: str) -> list[tuple[str, str, str]]:
    """(name, service, target) per Incident: the first K have distinct anomaly keys, the rest repeat."""
    distinct = max(1, round(scenario.incidents * scenario.distinct_fraction))
    rows = []
    for index in range(scenario.incidents):
        key = index if index < distinct else (index - distinct) % distinct
        rows.append((f"{run_id}-{index:05d}", f"svc-{key:05d}", f"app-{key % scenario.workloads:03d}"))
    return rows


async def watch_incidents(client: KubeClient, namespace: str, seen: Observed) -> None:
    async for kind, body in client.watch("incidents", namespace):
        if kind == "DELETED":
            continue
        name = body["metadata"]["name"]
        status = body.get("status") or {}
        run = (status.get("runRef") or {}).get("name")
        if name not in seen.processed_at and (run or status.get("phase") == "Duplicate"):
            seen.processed_at[name] = time.monotonic()
            seen.duplicates += status.get("phase") == "Duplicate"
        if run and name not in seen.run_of:
            seen.run_of[name] = run
            seen.run_incident[run] = name
        seen.changed.set()


async def watch_runs(client: KubeClient, namespace: str, seen: Observed) -> None:
    async for kind, body in client.watch("runs", namespace):
        if kind == "DELETED":
            continue
        name = body["metadata"]["name"]
        state = (body.get("status") or {}).get("state") or "Pending"
        now = time.monotonic()
        seen.run_state[name] = state
        seen.run_incident.setdefault(name, body["spec"]["incidentRef"]["name"])
        if state in STARTED_RUN_STATES:
            seen.run_started_at.setdefault(name, now)
        if state in TERMINAL_RUN_STATES:
            seen.run_finished_at.setdefault(name, now)
        seen.changed.set()


async def create_incidents(
    client: KubeClient, namespace: str, rows: Sequence[tuple[str, str, str]], mode: str, rate: float | None,
    seen: Observed,
) -> tuple[float, float]:
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)
    start = time.monotonic()

    async def create(index: int, name: str, service: str, target: str) -> None:
        if rate:
            await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
        async with gate:
            await client.create("incidents", namespace, incident_manifest(name, service=service, target=target,
                                                                         mode=mode))
            seen.created_at[name] = time.monotonic()

    await asyncio.gather(*(create(index, *row) for index, row in enumerate(rows)))
    return start, max(seen.created_at.values())


async def drive_phase(
    kubeconfig: Path, namespace: str, scenario: Scenario, run_id: str, timeout: float, operator: OperatorProcess
) -> tuple[Observed, float, float, bool, KubeClient]:
    seen = Observed()
    rows = incident_names(scenario, run_id)
    async with KubeClient(kubeconfig) as client:
        watchers = [asyncio.create_task(watch_incidents(client, namespace, seen)),
                    asyncio.create_task(watch_runs(client, namespace, seen))]
        await asyncio.sleep(0.5)  # both watches established before the first create
        first, last = await create_incidents(client, namespace, rows, scenario.mode, scenario.rate, seen)
        deadline = time.monotonic() + timeout
        completed = seen.done(scenario.incidents)
        while not completed and time.monotonic() < deadline:
            if not operator.running():
                print(f"  ** the operator exited:\n{operator.log_tail()}")
                break
            seen.changed.clear()
            with contextlib.suppress(TimeoutError):  # look at the operator at least every second
                await asyncio.wait_for(seen.changed.wait(), timeout=1.0)
            completed = seen.done(scenario.incidents)
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        return seen, first, last, completed, client


def operator_settings(workdir: Path, redis_url: str, scenario: Scenario) -> dict[str, str]:
    return {
        "redis_url": redis_url,
        "database_url": f"sqlite:///{workdir / 'history.db'}",
        "intake_port": "0",
        "metrics_port": str(free_loopback_port()),
        # The storm's Auto Runs are many on few workloads; the default limits (5 per namespace,
        # 3 remediations per workload per hour) would turn the benchmark into a queue.
        "run_max_concurrent_per_namespace": str(max(scenario.workloads, 5)),
        "circuit_breaker_max_remediations": str(scenario.incidents + 1),
        # The symptom is checked as soon as the rollout completes: this measures the pipeline, not
        # the verification window (bench/verifying_runs.py measures Runs waiting in theirs).
        "verification_window_seconds": "0",
    }


def run_phase(cluster: BenchCluster, scenario: Scenario, noise: dict[Any, float], timeout: float,
              logs: Path, profile: bool = False) -> PhaseResult:
    run_id = f"{scenario.name.split('/')[0]}-{uuid.uuid4().hex[:5]}"
    namespace = f"bench-{run_id}"
    cluster.create_namespace(namespace)
    print(f"\n== {scenario.name}: {scenario.incidents} Incidents, {scenario.mode}, "
          f"{'all at once' if not scenario.rate else f'{scenario.rate:g}/s'}, namespace {namespace}", flush=True)
    cluster.create_deployments(namespace, [f"app-{index:03d}" for index in range(scenario.workloads)])
    time.sleep(3.0)  # the controller-manager's last status updates of the new Deployments
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as directory, private_redis_server() as redis_url:
        operator = OperatorProcess(cluster.kubeconfig, [namespace],
                                   operator_settings(Path(directory), redis_url, scenario),
                                   logs / f"operator-{run_id}.log",
                                   profile_path=logs / f"operator-{run_id}.prof" if profile else None)
        operator.start()
        try:
            time.sleep(2.0)  # let the start-up listing settle
            usage_before = operator.usage()
            counts_before = cluster.request_counts()
            cpu_before = cluster.control_plane_cpu()
            measured_from = time.monotonic()
            seen, first, last, completed, client = asyncio.run(
                drive_phase(cluster.kubeconfig, namespace, scenario, run_id, timeout, operator)
            )
            finished = time.monotonic()
            usage_after = operator.usage()
            counts_after = cluster.request_counts()
            cpu_after = cluster.control_plane_cpu()
        finally:
            operator.stop()
    tally = RequestTally.between(counts_before, counts_after, noise_per_second=noise,
                                 seconds=time.monotonic() - measured_from, own=client.requests)
    result = PhaseResult(scenario, seen, completed, first, last, finished, tally, usage_before, usage_after,
                         operator.errors_in_log(), cpu_between(cpu_before, cpu_after))
    # Deleted at the very end: a namespace being deleted keeps the API server busy and would
    # show up in the next phase's request count.
    cluster.leftover_namespaces.append(namespace)
    report_phase(result)
    return result


def report_phase(result: PhaseResult) -> None:
    seen, scenario = result.observed, result.scenario
    n = scenario.incidents
    terminal = [at for run, at in seen.run_finished_at.items() if run in seen.run_incident]
    all_terminal = max(terminal, default=result.finished) - result.first_create
    print(f"  created {len(seen.created_at)} in {result.last_create - result.first_create:.1f} s; "
          f"processed {len(seen.processed_at)} ({seen.duplicates} Duplicates), {result.runs} Runs, "
          f"{len(seen.run_finished_at)} terminal" + ("" if result.completed else "  ** INCOMPLETE (timeout) **"))
    states: dict[str, int] = {}
    for state in seen.run_state.values():
        states[state] = states.get(state, 0) + 1
    print(f"  Run states: {dict(sorted(states.items()))}")
    print(f"  time until every Run is terminal: {all_terminal:.1f} s")
    print(f"  incidents/s (first create to last Run Running or Duplicate): {result.incidents_per_second:.1f}")
    print(f"  Runs started/s (first create to last Run Running): {result.runs_started_per_second:.1f}")
    print(f"  creation -> Run Running: {describe_latencies(result.latencies)}")
    cpu = result.usage_after.cpu_seconds - result.usage_before.cpu_seconds
    print(f"  operator: {cpu:.1f} CPU s ({cpu / n * 1000:.1f} ms per incident), "
          f"RSS {megabytes(result.usage_after.rss_bytes)}, peak RSS {megabytes(result.usage_after.peak_rss_bytes)}, "
          f"errors in log: {result.operator_errors}")
    print("  control plane: " + ", ".join(
        f"{component} {seconds:.1f} CPU s ({seconds / n * 1000:.1f} ms per incident)"
        for component, seconds in result.control_plane_cpu.items()
    ))
    tally = result.requests
    print(f"  API requests per incident: {tally.total() / n:.2f} "
          f"(writes {tally.writes() / n:.2f}: persisted {tally.writes(dry_run=False) / n:.2f}, "
          f"dry-run {tally.writes(dry_run=True) / n:.2f})")
    for row in tally.breakdown(n):
        print(f"    {row}")


def cpu_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {component: after[component] - before.get(component, 0.0) for component in after}


async def ceiling(kubeconfig: Path, namespace: str, incidents: int, runs: int) -> float:
    """Seconds a plain asyncio client needs for the creates and status patches of ``incidents``."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def pipeline(index: int, client: KubeClient) -> None:
        name = f"ceiling-{index:05d}"
        async with gate:
            incident = await client.create("incidents", namespace, incident_manifest(
                name, service=f"svc-{index}", target="app-000", mode="Shadow"))
            await client.patch_status("incidents", namespace, name, {"phase": "Mitigating"})
            if index >= runs:
                return
            await client.create("runs", namespace, {
                "apiVersion": "flywheel.dev/v1alpha1", "kind": "Run",
                "metadata": {"name": f"{name}-1"},
                "spec": {
                    "incidentRef": {"name": name, "uid": incident["metadata"]["uid"]},
                    "action": {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "app-000"}},
                    "riskLevel": "medium", "requiresApproval": False, "mode": "Shadow",
                    "timeoutSeconds": 600, "maxAttempts": 2, "traceId": uuid.uuid4().hex,
                    "trigger": {"type": "Incident", "ref": name},
                },
            })
            await client.patch_status("runs", namespace, f"{name}-1",
                                      {"state": "Running", "attempt": 1, "startedAt": now})
            await client.patch_status("runs", namespace, f"{name}-1", {"state": "Succeeded", "completedAt": now})

    async with KubeClient(kubeconfig) as client:
        started = time.monotonic()
        await asyncio.gather(*(pipeline(index, client) for index in range(incidents)))
        return time.monotonic() - started


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--incidents", type=int, default=1000, help="Incidents in the Shadow storm (default 1000)")
    parser.add_argument("--distinct-fraction", type=float, default=0.6,
                        help="share of Incidents with a new anomaly key; the rest repeat one (default 0.6)")
    parser.add_argument("--paced-rate", type=float, default=10.0, help="Incidents/s in the paced phase (default 10)")
    parser.add_argument("--paced-seconds", type=float, default=30.0, help="length of the paced phase (default 30)")
    parser.add_argument("--auto-incidents", type=int, default=200, help="Incidents in the Auto storm (default 200)")
    parser.add_argument("--workloads", type=int, default=50, help="fake Deployments per phase (default 50)")
    parser.add_argument("--phases", default="storm,paced,auto,ceiling",
                        help="comma-separated subset of storm,paced,auto,ceiling")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on a phase after this (default 900 s)")
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER, help=f"local control plane (default {DEFAULT_CLUSTER})")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the control plane running afterwards")
    parser.add_argument("--profile", action="store_true",
                        help="run the operator under cProfile (statistics next to its log; slows it down)")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "flywheel-bench",
                        help="directory for the operator logs")
    arguments = parser.parse_args(argv)
    if not 0 < arguments.distinct_fraction <= 1 or arguments.incidents < 1:
        parser.error("--distinct-fraction must be in (0, 1] and --incidents >= 1")
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    # A SIGTERM (timeout, kill) unwinds like Ctrl-C, so the operator and Redis are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    phases = set(arguments.phases.split(","))
    arguments.logs.mkdir(parents=True, exist_ok=True)
    cluster = BenchCluster(arguments.cluster)
    print(f"control plane {arguments.cluster}: starting (cached binaries: seconds)", flush=True)
    cluster.up()
    results: dict[str, PhaseResult] = {}
    try:
        cluster.wait_for_quiet()
        noise = noise_rate(cluster, NOISE_SECONDS)
        print(f"background API requests of the idle control plane: {sum(noise.values()):.1f}/s, "
              f"writes {sum(rate for key, rate in noise.items() if key[0] in WRITE_VERBS):.1f}/s "
              f"(subtracted from every phase's count)")
        scenarios = {
            "storm": Scenario("storm/Shadow", "Shadow", arguments.incidents, None, arguments.distinct_fraction,
                              arguments.workloads),
            "paced": Scenario("paced/Shadow", "Shadow", max(1, round(arguments.paced_rate * arguments.paced_seconds)),
                              arguments.paced_rate, arguments.distinct_fraction, arguments.workloads),
            "auto": Scenario("storm/Auto", "Auto", arguments.auto_incidents, None, arguments.distinct_fraction,
                             arguments.workloads),
        }
        for key, scenario in scenarios.items():
            if key in phases:
                results[key] = run_phase(cluster, scenario, noise, arguments.timeout, arguments.logs,
                                         arguments.profile)
        ceiling_rate: float | None = None
        if "ceiling" in phases:
            incidents = arguments.incidents
            runs = results["storm"].runs if "storm" in results else round(incidents * arguments.distinct_fraction)
            namespace = f"bench-ceiling-{uuid.uuid4().hex[:5]}"
            cluster.create_namespace(namespace)
            cpu_before = cluster.control_plane_cpu()
            seconds = asyncio.run(ceiling(cluster.kubeconfig, namespace, incidents, runs))
            ceiling_api_cpu = cpu_between(cpu_before, cluster.control_plane_cpu()).get("kube-apiserver", 0.0)
            cluster.leftover_namespaces.append(namespace)
            ceiling_rate = incidents / seconds
            print(f"\n== ceiling: plain asyncio client, {incidents} Incident creates + status patches, {runs} Run "
                  f"creates + 2 status patches each, {CREATE_CONCURRENCY} in flight: {seconds:.1f} s, "
                  f"{ceiling_rate:.1f} incidents/s ({(2 * incidents + 3 * runs) / seconds:.0f} requests/s); "
                  f"kube-apiserver {ceiling_api_cpu:.1f} CPU s ({ceiling_api_cpu / incidents * 1000:.1f} ms per incident)")
        summarize(results, ceiling_rate)
    finally:
        if arguments.keep_cluster:
            for namespace in cluster.leftover_namespaces:
                cluster.delete_namespace(namespace)
        else:
            cluster.down()
    return 0 if all(result.completed for result in results.values()) else 1


def summarize(results: dict[str, PhaseResult], ceiling_rate: float | None) -> None:
    print("\n== summary against the targets of issue #8 (printed, not asserted)")
    storm = results.get("storm")
    if storm is not None:
        n = storm.scenario.incidents
        print(f"  storm/Shadow throughput: {storm.incidents_per_second:.1f} incidents/s "
              f"(target >= {TARGET_STORM_RATE:g})")
        if ceiling_rate:
            ratio = storm.incidents_per_second / ceiling_rate
            print(f"  ratio to the raw-client ceiling: {ratio:.2f} (ceiling {ceiling_rate:.1f}/s; "
                  f"target >= {TARGET_CEILING_RATIO:.2f})")
        print(f"  API writes per Incident, Shadow path: {storm.requests.writes(dry_run=False) / n:.2f} persisted + "
              f"{storm.requests.writes(dry_run=True) / n:.2f} dry-run (target <= {TARGET_SHADOW_WRITES:g})")
        print(f"  operator peak RSS after {n} Incidents: {megabytes(storm.usage_after.peak_rss_bytes)}")
        operator_cpu = storm.usage_after.cpu_seconds - storm.usage_before.cpu_seconds
        print(f"  CPU per Incident on this machine's {os.cpu_count()} cores: operator {operator_cpu / n * 1000:.1f} ms, "
              f"kube-apiserver {storm.api_server_cpu_per_incident * 1000:.1f} ms")
    paced = results.get("paced")
    if paced is not None:
        p99 = percentile(paced.latencies, 0.99)
        print(f"  paced/Shadow at {paced.scenario.rate:g}/s: p99 creation -> Running {p99:.2f} s "
              f"(target <= {TARGET_PACED_P99_SECONDS:g} s)")
    auto = results.get("auto")
    if auto is not None:
        print(f"  storm/Auto: {auto.runs} Runs terminal after "
              f"{max(auto.observed.run_finished_at.values(), default=auto.finished) - auto.first_create:.1f} s, "
              f"{auto.incidents_per_second:.1f} incidents/s to Running")


if __name__ == "__main__":
    sys.exit(main())
