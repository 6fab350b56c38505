"""Benchmark: recording one anomaly occurrence in one round trip versus one command per step.

Usage::

    python bench/anomaly_record.py [--redis-url URL] [--records N] [--anomaly-keys K]

Without ``--redis-url`` a private redis-server is started on a free loopback port in a temporary
directory and stopped afterwards. With a URL, the run writes under its own key prefix and deletes
those keys at the end; nothing else in that database is touched.

Both approaches run on the same Redis in the same process, interleaved in two halves so that a
warming machine or a noisy neighbour affects both alike:

- ``single round trip``: ``AnomalyStore.record_occurrence`` (one EVALSHA, structured log included);
- ``seed-style``: the older counter's sequence, one awaited command per step (ZADD,
  ZREMRANGEBYSCORE, EXPIRE, 4 x ZCOUNT, 2 x ZRANGE, GET, GET, EXISTS, then HSET + EXPIRE on a
  key's first record, HGETALL): 13 round trips per record once a key exists.

Records are sequential, as one operator worker records them, so the figure is latency-bound:
over a real network each extra round trip costs more than on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
import redis.asyncio
from _cluster import private_redis_server

from flywheel.domain.escalation import EscalationThresholds
from flywheel.logs import configure_logging
from flywheel.stores.anomaly_redis import COUNTING_WINDOWS, KEY_TTL, AnomalyKeys, AnomalyStore

SIGNATURE = {
    "alert_name": "KubePodCrashLooping",
    "service": "checkout",
    "namespace": "bench",
    "error_type": "OOMKilled",
}
WARM_UP_RECORDS = 50

RecordFunction = Callable[[str, str, str], Awaitable[None]]


@dataclass(frozen=True)
class Measurement:
    approach: str
    records: int
    seconds: float

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds


def single_round_trip_recorder(store: AnomalyStore) -> RecordFunction:
    async def record(tenant: str, key: str, occurrence_id: str) -> None:
        await store.record_occurrence(tenant, key, SIGNATURE, occurrence_id, datetime.now(UTC))

    return record


def seed_style_recorder(client: redis.asyncio.Redis) -> RecordFunction:
    """The older counter's algorithm on the same key layout: one awaited command per step."""
    ttl_seconds = int(KEY_TTL.total_seconds())

    async def record(tenant: str, key: str, occurrence_id: str) -> None:
        keys = AnomalyKeys.of(tenant, key)
        now = datetime.now(UTC)
        retention_start = (now - COUNTING_WINDOWS[-1]).timestamp()
        await client.zadd(keys.timeline, {occurrence_id: now.timestamp()})
        await client.zremrangebyscore(keys.timeline, "-inf", retention_start)
        await client.expire(keys.timeline, ttl_seconds)
        for window in COUNTING_WINDOWS:
            await client.zcount(keys.timeline, (now - window).timestamp(), "+inf")
        await client.zrange(keys.timeline, 0, 0, withscores=True)
        await client.zrange(keys.timeline, -1, -1, withscores=True)
        await client.get(keys.repair_count)
        await client.get(keys.permanent_fix)
        if not await client.exists(keys.metadata):
            await client.hset(
                keys.metadata, mapping={"signature": json.dumps(SIGNATURE), "first_seen": now.isoformat()}
            )
            await client.expire(keys.metadata, ttl_seconds)
        await client.hgetall(keys.dispositions)

    return record


async def run_records(
    record: RecordFunction, tenant: str, anomaly_keys: list[str], first: int, count: int
) -> float:
    started = time.perf_counter()
    for index in range(first, first + count):
        await record(tenant, anomaly_keys[index % len(anomaly_keys)], f"occurrence-{index}")
    return time.perf_counter() - started


async def delete_run_keys(client: redis.asyncio.Redis, run_prefix: str) -> None:
    async for key in client.scan_iter(match=f"{run_prefix}-*", count=500):
        await client.unlink(key)


async def benchmark(
    url: str, records: int, anomaly_key_count: int
) -> tuple[Measurement, Measurement, dict[str, int]]:
    client = redis.asyncio.Redis.from_url(url)
    run_prefix = f"bench-{uuid.uuid4().hex[:8]}"
    tenants = {"single round trip": f"{run_prefix}-ours", "seed-style": f"{run_prefix}-seed"}
    anomaly_keys = [f"{index:016x}" for index in range(anomaly_key_count)]
    recorders = {
        "single round trip": single_round_trip_recorder(AnomalyStore(client, EscalationThresholds())),
        "seed-style": seed_style_recorder(client),
    }
    try:
        for approach, record in recorders.items():  # connection, script load, first-record branches
            await run_records(record, tenants[approach], anomaly_keys, 0, WARM_UP_RECORDS)
        elapsed = dict.fromkeys(recorders, 0.0)
        first_half = records // 2
        for first, count in (
            (WARM_UP_RECORDS, first_half),
            (WARM_UP_RECORDS + first_half, records - first_half),
        ):
            for approach, record in recorders.items():
                elapsed[approach] += await run_records(record, tenants[approach], anomaly_keys, first, count)
        # Both approaches must have stored every occurrence, or the comparison means nothing.
        stored: dict[str, int] = {}
        for approach, tenant in tenants.items():
            stored[approach] = 0
            for key in anomaly_keys:
                stored[approach] += await client.zcard(AnomalyKeys.of(tenant, key).timeline)
        ours, seed = (Measurement(approach, records, elapsed[approach]) for approach in recorders)
        return ours, seed, stored
    finally:
        await delete_run_keys(client, run_prefix)
        await client.aclose()


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--redis-url", help="Redis to measure against (default: start a private redis-server)"
    )
    parser.add_argument(
        "--records", type=int, default=5_000, help="timed records per approach (default 5000)"
    )
    parser.add_argument("--anomaly-keys", type=int, default=20, help="distinct anomaly keys (default 20)")
    arguments = parser.parse_args(argv)
    if arguments.records < 2 or arguments.anomaly_keys < 1:
        parser.error("--records must be >= 2 and --anomaly-keys >= 1")
    return arguments


def report(url: str, own_server: bool, ours: Measurement, seed: Measurement, stored: dict[str, int]) -> None:
    where = "private redis-server started for this run" if own_server else "given by --redis-url"
    print(f"redis: {url} ({where})")
    print(f"records per approach: {ours.records} timed, after {WARM_UP_RECORDS} warm-up; sequential")
    for measurement in (ours, seed):
        print(
            f"{measurement.approach:>18}: {measurement.records_per_second:10,.0f} records/s"
            f"  ({measurement.seconds * 1e6 / measurement.records:7.1f} us/record)"
        )
    print(f"ratio ours / seed-style: {ours.records_per_second / seed.records_per_second:.2f}x")
    print("occurrences stored: " + ", ".join(f"{approach} {count}" for approach, count in stored.items()))


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    # Keep the store's per-record info logs off the terminal; they are still produced (and
    # filtered by level), so their cost stays inside the measurement, as in production.
    configure_logging(level="WARNING")
    if arguments.redis_url:
        ours, seed, stored = asyncio.run(
            benchmark(arguments.redis_url, arguments.records, arguments.anomaly_keys)
        )
        report(arguments.redis_url, False, ours, seed, stored)
    else:
        with private_redis_server() as url:
            ours, seed, stored = asyncio.run(benchmark(url, arguments.records, arguments.anomaly_keys))
        report(url, True, ours, seed, stored)
    expected = arguments.records + WARM_UP_RECORDS
    return 0 if all(count == expected for count in stored.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
