"""Every Redis store through a failover, against real redis-servers.

The node the stores are connected to is demoted into a read-only replica of another
(``REPLICAOF``), as a Sentinel failover does to an old primary, then promoted back.

Scenario matrix (store × demoted / promoted back / refused):
- approval tokens: spending raises RedisUnavailableError (chained ReadOnlyError, the message
  says read-only replica); promoted back, the same token is spent once;
- anomaly counts: recording an occurrence raises RedisUnavailableError; reading still works
  on the replica; promoted back, the occurrence is counted;
- metrics reads: a replica still answers the figures;
- stall notifications: not de-duplicated while demoted (sent, one warning), never raised;
- a key of another type (WRONGTYPE) is a RedisRefusedError, not an outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
import redis.asyncio
import redis.exceptions
import structlog
from pytest_redis.executor import RedisExecutor

from flywheel.domain.escalation import EscalationThresholds
from flywheel.domain.funnel import FunnelCounts, StallAlert, StallRule
from flywheel.errors import RedisRefusedError, RedisUnavailableError
from flywheel.metrics.collector import OperatorCounters
from flywheel.metrics.notifier import Notification, StallNotifier
from flywheel.stores.anomaly_redis import AnomalyStore, connect_redis
from flywheel.stores.approvals import TOKEN_ID_PREFIX, TokenLedger
from flywheel.stores.metrics_queries import AnomalyMetricsReader
from tests.harness.redis_failover import Failover

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
SIGNATURE = {"alert_name": "KubePodCrashLooping", "service": "checkout", "namespace": "shop", "error_type": "x"}
CLAIM = StallAlert(StallRule.CLAIM_STALL, "4 Incidents opened and 2 wait without a Run.")
FUNNEL = FunnelCounts(period=timedelta(minutes=10), opened=4, open_waiting=2)


@pytest.fixture()
async def client(own_redis: RedisExecutor) -> AsyncIterator[redis.asyncio.Redis]:
    connected = connect_redis(f"redis://127.0.0.1:{own_redis.port}/0")
    yield connected
    await connected.aclose()


async def test_spending_a_token_on_a_demoted_node_is_an_outage_and_works_once_promoted(
    client: redis.asyncio.Redis, redis_failover: Failover
) -> None:
    ledger = TokenLedger(client)
    redis_failover.demote()
    with pytest.raises(RedisUnavailableError, match="read-only replica") as raised:
        await ledger.spend("token-1", "run-uid-1", timedelta(hours=1))
    assert isinstance(raised.value.__cause__, redis.exceptions.ReadOnlyError)

    redis_failover.promote()
    assert await ledger.spend("token-1", "run-uid-1", timedelta(hours=1)) is True
    assert await ledger.spend("token-1", "run-uid-1", timedelta(hours=1)) is True, "the same Run again"
    assert await ledger.spend("token-1", "run-uid-2", timedelta(hours=1)) is False, "another Run: a replay"


async def test_anomaly_counts_wait_for_the_primary_and_reads_still_work(
    client: redis.asyncio.Redis, redis_failover: Failover
) -> None:
    store = AnomalyStore(client, EscalationThresholds())
    reader = AnomalyMetricsReader(client, EscalationThresholds(), tenant="shop")
    redis_failover.demote()
    with pytest.raises(RedisUnavailableError, match="read-only replica") as raised:
        await store.record_occurrence("shop", "3f2a9c1d7e5b4a60", SIGNATURE, "incident-uid-1", NOW, now=NOW)
    assert isinstance(raised.value.__cause__, redis.exceptions.ReadOnlyError)
    assert (await store.snapshot("shop", "3f2a9c1d7e5b4a60", now=NOW)).count_24h == 0
    assert (await reader.read(NOW)).tracked_keys == 0
    await reader.ping()

    redis_failover.promote()
    recorded = await store.record_occurrence("shop", "3f2a9c1d7e5b4a60", SIGNATURE, "incident-uid-1", NOW, now=NOW)
    assert recorded.count_24h == 1


async def test_stall_notifications_are_sent_undeduplicated_while_demoted(
    client: redis.asyncio.Redis, redis_failover: Failover
) -> None:
    posted: list[Notification] = []

    async def post(notification: Notification) -> None:
        posted.append(notification)

    notifier = StallNotifier(scope="shop", counters=OperatorCounters(), redis_client=client, post_event=post)
    redis_failover.demote()
    with structlog.testing.capture_logs() as logs:
        for _ in range(2):
            await notifier.notify([CLAIM], FUNNEL, NOW)
        while notifier.pending:
            await asyncio.sleep(0.01)
    await notifier.close()
    assert len(posted) == 2
    warnings = [entry for entry in logs if entry["event"] == "stall_dedup_lost"]
    assert len(warnings) == 1 and "read-only replica" in warnings[0]["reason"]


async def test_a_key_of_another_type_is_refused_not_an_outage(
    client: redis.asyncio.Redis, own_redis: RedisExecutor
) -> None:
    admin = redis.Redis(host="127.0.0.1", port=own_redis.port)
    admin.rpush(TOKEN_ID_PREFIX + "token-9", "not a string")  # GET of a list: WRONGTYPE
    ledger = TokenLedger(client)
    with pytest.raises(RedisRefusedError, match="WRONGTYPE|wrong kind") as raised:
        await ledger.spend("token-9", "run-uid-1", timedelta(hours=1))
    assert isinstance(raised.value.__cause__, redis.exceptions.ResponseError)
