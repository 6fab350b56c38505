"""Benchmark: steady load for a while, printing the operator's memory (RSS) over time.

Usage::

    python bench/soak.py [--duration SECONDS] [--rate R] [--population P] [--interval S]
                         [--fill-rate R] [--mode Shadow|Auto] [--workloads W] [--cluster NAME]
                         [--keep-cluster]

The smoke run is the default (3 minutes at 5 Incidents/s over a population of 1,000); the real
soak is ``--duration 1800``, and the 10,000-object memory check is ``--population 10000``.

On a named local control plane (``flywheel dev up --name flywheel-bench``), with a private
redis-server and SQLite file and ``flywheel run --standalone`` as a subprocess:

1. fill: ``--population`` Incidents with distinct anomaly keys are created (64 requests in
   flight; at ``--fill-rate`` per second when given, so that the memory measured is that of
   the objects present rather than what a burst leaves behind), each gets a Run; once every Run
   is terminal the operator's RSS is printed — the memory with that many Incidents and Runs
   present (with ``--fill-rate``, also every ``--interval`` seconds while they arrive);
2. soak: for ``--duration`` seconds a new Incident is created every 1/``--rate`` s and the
   oldest one is deleted (its Run goes with it, by owner reference), so the population stays
   the same and a growing RSS means something is kept that should not be. Every ``--interval``
   seconds it prints the RSS, the CPU share and how far processing keeps up; at the end the
   RSS slope over the soak (least squares, MB per 10 minutes) and its range.

Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _cluster import (
    DEFAULT_CLUSTER,
    TERMINAL_RUN_STATES,
    BenchCluster,
    KubeClient,
    OperatorProcess,
    describe_latencies,
    free_loopback_port,
    incident_manifest,
    megabytes,
    private_redis_server,
)
from e2e_throughput import Observed, watch_incidents, watch_runs

FILL_CONCURRENCY = 64


def fill_done(seen: Observed, names: list[str]) -> bool:
    if any(name not in seen.processed_at for name in names):
        return False
    return all(seen.run_state.get(seen.run_of[name]) in TERMINAL_RUN_STATES for name in names if name in seen.run_of)


async def soak(kubeconfig: Path, namespace: str, operator: OperatorProcess, arguments: argparse.Namespace) -> int:
    seen = Observed()
    workloads = arguments.workloads
    prefix = f"soak-{uuid.uuid4().hex[:4]}"
    counter = 0

    def manifest(index: int) -> dict[str, object]:
        return incident_manifest(f"{prefix}-{index:06d}", service=f"svc-{index:06d}",
                                 target=f"app-{index % workloads:03d}", mode=arguments.mode)

    async with KubeClient(kubeconfig) as client:
        watchers = [asyncio.create_task(watch_incidents(client, namespace, seen)),
                    asyncio.create_task(watch_runs(client, namespace, seen))]
        await asyncio.sleep(0.5)
        # -- fill
        gate = asyncio.Semaphore(FILL_CONCURRENCY)
        live: list[str] = []

        async def create(index: int) -> None:
            body = manifest(index)
            async with gate:
                await client.create("incidents", namespace, body)
            seen.created_at[str(body["metadata"]["name"])] = time.monotonic()  # type: ignore[index]

        started = time.monotonic()
        usage = operator.usage()
        pace = f" at {arguments.fill_rate:g}/s" if arguments.fill_rate else ""
        print(f"fill: creating {arguments.population} Incidents{pace} (RSS before {megabytes(usage.rss_bytes)})",
              flush=True)

        async def paced_create(index: int) -> None:
            if arguments.fill_rate:
                await asyncio.sleep(max(0.0, started + index / arguments.fill_rate - time.monotonic()))
            await create(index)

        async def report_fill() -> None:
            while arguments.fill_rate:
                await asyncio.sleep(arguments.interval)
                usage = operator.usage()
                print(f"fill: {time.monotonic() - started:6.0f}s {len(seen.created_at):>7} created "
                      f"{len(seen.processed_at):>7} processed, RSS {megabytes(usage.rss_bytes)}", flush=True)

        reporter = asyncio.create_task(report_fill())
        await asyncio.gather(*(paced_create(index) for index in range(arguments.population)))
        live = [f"{prefix}-{index:06d}" for index in range(arguments.population)]
        counter = arguments.population
        while not fill_done(seen, live):
            if time.monotonic() - started > arguments.fill_timeout:
                print(f"fill: ** not finished after {arguments.fill_timeout:.0f} s: "
                      f"{len(seen.processed_at)} processed, {len(seen.run_finished_at)} Runs terminal **")
                break
            await asyncio.sleep(1.0)
        reporter.cancel()
        filled = time.monotonic() - started
        usage = operator.usage()
        print(f"fill: {len(seen.processed_at)} Incidents and {len(seen.run_finished_at)} Runs terminal after "
              f"{filled:.1f} s ({len(seen.processed_at) / filled:.1f}/s); operator RSS {megabytes(usage.rss_bytes)}, "
              f"peak {megabytes(usage.peak_rss_bytes)}, {usage.cpu_seconds:.0f} CPU s so far", flush=True)
        fill_latencies = [seen.run_started_at[run] - seen.created_at[name] for name, run in seen.run_of.items()
                          if run in seen.run_started_at and name in seen.created_at]
        print(f"fill: creation -> Run Running {describe_latencies(fill_latencies)}", flush=True)

        # -- soak
        print(f"\nsoak: {arguments.rate:g} Incidents/s for {arguments.duration:.0f} s, population kept at "
              f"{len(live)} (the oldest is deleted for each new one)")
        print(f"{'elapsed':>8} {'created':>8} {'processed':>9} {'runs done':>9} {'RSS':>8} {'CPU':>6} "
              f"{'p99 to Running':>15}")
        soak_start = time.monotonic()
        soak_names: list[str] = []
        samples: list[tuple[float, int]] = []
        last_cpu, last_sample = usage.cpu_seconds, soak_start
        next_sample = soak_start + arguments.interval
        while time.monotonic() - soak_start < arguments.duration:
            due = soak_start + len(soak_names) / arguments.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await create(counter)
            soak_names.append(f"{prefix}-{counter:06d}")
            live.append(soak_names[-1])
            counter += 1
            oldest = live.pop(0)
            asyncio.create_task(client.delete("incidents", namespace, oldest))
            now = time.monotonic()
            if now >= next_sample:
                usage = operator.usage()
                samples.append((now - soak_start, usage.rss_bytes))
                cpu_share = (usage.cpu_seconds - last_cpu) / (now - last_sample)
                last_cpu, last_sample, next_sample = usage.cpu_seconds, now, next_sample + arguments.interval
                recent = [seen.run_started_at[seen.run_of[name]] - seen.created_at[name] for name in soak_names
                          if name in seen.run_of and seen.run_of[name] in seen.run_started_at]
                processed = sum(1 for name in soak_names if name in seen.processed_at)
                done = sum(1 for name in soak_names
                           if seen.run_state.get(seen.run_of.get(name, "")) in TERMINAL_RUN_STATES)
                p99 = f"{sorted(recent)[max(0, int(len(recent) * 0.99) - 1)]:.2f} s" if recent else "-"
                print(f"{now - soak_start:7.0f}s {len(soak_names):>8} {processed:>9} {done:>9} "
                      f"{megabytes(usage.rss_bytes):>8} {cpu_share:6.0%} {p99:>15}", flush=True)
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    usage = operator.usage()
    print(f"\nsoak: done; operator RSS {megabytes(usage.rss_bytes)}, peak {megabytes(usage.peak_rss_bytes)}")
    if len(samples) >= 3:
        times = [at for at, _ in samples]
        sizes = [rss / 2**20 for _, rss in samples]
        slope = statistics.linear_regression(times, sizes).slope * 600
        print(f"soak: RSS from {sizes[0]:.0f} MB to {sizes[-1]:.0f} MB (min {min(sizes):.0f}, max {max(sizes):.0f}); "
              f"slope {slope:+.1f} MB per 10 minutes over {len(samples)} samples")
    latencies = [seen.run_started_at[seen.run_of[name]] - seen.created_at[name] for name in soak_names
                 if name in seen.run_of and seen.run_of[name] in seen.run_started_at]
    print(f"soak: creation -> Run Running {describe_latencies(latencies)}")
    print(f"soak: errors in the operator log: {operator.errors_in_log()}")
    return 0


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="soak length in seconds (default 180)")
    parser.add_argument("--rate", type=float, default=5.0, help="new Incidents per second (default 5)")
    parser.add_argument("--population", type=int, default=1000, help="Incidents (and Runs) kept present (default 1000)")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between RSS samples (default 15)")
    parser.add_argument("--mode", choices=("Shadow", "Auto"), default="Shadow", help="remediation mode (default Shadow)")
    parser.add_argument("--workloads", type=int, default=20, help="fake Deployments (default 20)")
    parser.add_argument("--fill-rate", type=float, default=0.0,
                        help="create the population at this many Incidents/s (default: all at once)")
    parser.add_argument("--fill-timeout", type=float, default=1800.0, help="give up the fill after (default 1800 s)")
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER, help=f"local control plane (default {DEFAULT_CLUSTER})")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the control plane running afterwards")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "flywheel-bench",
                        help="directory for the operator log")
    arguments = parser.parse_args(argv)
    if arguments.rate <= 0 or arguments.duration <= 0 or arguments.population < 1 or arguments.fill_rate < 0:
        parser.error("--rate and --duration must be positive, --population at least 1, --fill-rate not negative")
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    # A SIGTERM (timeout, kill) unwinds like Ctrl-C, so the operator and Redis are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    arguments.logs.mkdir(parents=True, exist_ok=True)
    cluster = BenchCluster(arguments.cluster)
    print(f"control plane {arguments.cluster}: starting (cached binaries: seconds)", flush=True)
    cluster.up()
    cluster.wait_for_quiet()
    namespace = f"bench-soak-{uuid.uuid4().hex[:5]}"
    try:
        cluster.create_namespace(namespace)
        cluster.create_deployments(namespace, [f"app-{index:03d}" for index in range(arguments.workloads)])
        with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as directory, private_redis_server() as redis_url:
            operator = OperatorProcess(cluster.kubeconfig, [namespace], {
                "redis_url": redis_url,
                "database_url": f"sqlite:///{Path(directory) / 'history.db'}",
                "intake_port": "0",
                "metrics_port": str(free_loopback_port()),
                "run_max_concurrent_per_namespace": str(max(arguments.workloads, 5)),
                "circuit_breaker_max_remediations": "1000000",
            }, arguments.logs / f"operator-{namespace}.log")
            operator.start()
            try:
                return asyncio.run(soak(cluster.kubeconfig, namespace, operator, arguments))
            finally:
                operator.stop()
    finally:
        if arguments.keep_cluster:
            cluster.delete_namespace(namespace)
        else:
            cluster.down()


if __name__ == "__main__":
    sys.exit(main())
