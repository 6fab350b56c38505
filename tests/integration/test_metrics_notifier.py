"""Stall notifications against a real redis-server and a real HTTP webhook receiver.

Scenarios:
- a firing rule posts its Warning Event(s) and a webhook in the generic JSON format; the
  same rule and scope again within 10 minutes is suppressed (SET NX EX 600 in Redis, TTL
  checked); another rule or another scope is not;
- Slack-compatible format;
- the webhook answers 503 twice then 200: delivered on the third attempt; a 400 is not
  retried; an unreachable webhook gives up after the retries; none of it raises;
- a hanging receiver is cut off by the timeout, and ``notify`` returns before any delivery
  finishes (delivery runs in the background);
- Redis stopped: every firing is sent and ONE warning is logged however many firings;
  Redis back: de-duplication resumes (and says so);
- an event poster that fails is counted, and the webhook is still sent.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio
import structlog
from aiohttp import web
from pytest_redis.executor import RedisExecutor

from flywheel.domain.funnel import FunnelCounts, ObjectSample, StallAlert, StallRule
from flywheel.metrics.collector import OperatorCounters
from flywheel.metrics.notifier import Notification, StallNotifier, count_stall_deliveries
from flywheel.stores.anomaly_redis import connect_redis
from flywheel.stores.notifications import WebhookNotifier, WebhookSender

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
SUBJECT = ObjectSample("Incident", "shop", "checkout-oom", "uid-1")
FUNNEL = FunnelCounts(period=timedelta(minutes=10), opened=4, open_waiting=2, open_waiting_samples=(SUBJECT,))
CLAIM = StallAlert(StallRule.CLAIM_STALL, "4 Incidents opened and 2 wait without a Run.", (SUBJECT,))
PASS = StallAlert(StallRule.PASS_STALL, "2 Runs executed but none passed verification.")


class Receiver:
    """A webhook endpoint that answers with a scripted sequence of statuses."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.bodies: list[dict[str, Any]] = []
        self.delay = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status < 300 else "nope")


@pytest.fixture()
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    target = Receiver()
    app = web.Application()
    app.router.add_post("/hook", target.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield target, f"http://127.0.0.1:{port}/hook"
    await runner.cleanup()


@pytest.fixture()
async def client(clean_redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    redis_client = connect_redis(clean_redis_url)
    yield redis_client
    await redis_client.aclose()


class Events:
    def __init__(self, fail: bool = False) -> None:
        self.posted: list[Notification] = []
        self.fail = fail

    async def __call__(self, notification: Notification) -> None:
        if self.fail:
            raise RuntimeError("API server said no")
        self.posted.append(notification)


async def no_sleep(_: float) -> None:
    return None


def sender(url: str, **options: Any) -> WebhookSender:
    return WebhookSender(url, options.pop("fmt", "json"), sleep=no_sleep, **{"timeout_seconds": 2.0, **options})


def delivery(url: str, counters: OperatorCounters | None = None, **options: Any) -> WebhookNotifier:
    """The Notifier the stall notifier hands its webhook deliveries to (the stall gate de-duplicates)."""
    notifier = WebhookNotifier(sender(url, **options))
    if counters is not None:
        notifier.observe(count_stall_deliveries(counters))
    return notifier


async def settle(notifier: StallNotifier) -> None:
    """Wait until the background deliveries are done (close() waits for them)."""
    while notifier.pending:
        await asyncio.sleep(0.01)


def value(counters: OperatorCounters, rule: str, channel: str, outcome: str) -> float:
    from prometheus_client import CollectorRegistry

    from flywheel.metrics.collector import SnapshotCollector
    from flywheel.metrics.snapshot import SnapshotHolder

    registry = CollectorRegistry()
    registry.register(SnapshotCollector(SnapshotHolder(), counters))
    found = registry.get_sample_value(
        "flywheel_stall_notifications_total", {"rule": rule, "channel": channel, "outcome": outcome}
    )
    assert found is not None
    return found


async def test_a_rule_notifies_once_per_scope_within_ten_minutes(
    client: redis.asyncio.Redis, receiver: tuple[Receiver, str]
) -> None:
    target, url = receiver
    events, counters = Events(), OperatorCounters()
    webhook = delivery(url, counters)
    notifier = StallNotifier(scope="shop", counters=counters, redis_client=client, post_event=events,
                             delivery=webhook)
    other_scope = StallNotifier(scope="billing", counters=counters, redis_client=client, post_event=events)
    await notifier.notify([CLAIM], FUNNEL, NOW)
    await notifier.notify([CLAIM, PASS], FUNNEL, NOW)
    await other_scope.notify([CLAIM], FUNNEL, NOW)
    await settle(notifier)
    await settle(other_scope)
    await webhook.drain()

    assert [(item.reason, item.scope) for item in events.posted] == [
        ("FunnelClaimStall", "shop"), ("FunnelPassStall", "shop"), ("FunnelClaimStall", "billing"),
    ]
    assert events.posted[0].subjects == (SUBJECT,)
    assert [body["reason"] for body in target.bodies] == ["FunnelClaimStall", "FunnelPassStall"]
    body = target.bodies[0]
    assert body["kind"] == "funnel_stall" and body["severity"] == "warning" and body["scope"] == "shop"
    assert body["message"] == CLAIM.message
    assert body["subjects"] == [{"kind": "Incident", "namespace": "shop", "name": "checkout-oom"}]
    assert body["details"]["opened"] == 4 and body["details"]["openWaitingSamples"] == ["shop/checkout-oom"]
    assert body["occurredAt"] == "2026-03-14T12:00:00Z"
    ttl = await client.ttl(notifier.dedup_key(StallRule.CLAIM_STALL))
    assert 590 <= ttl <= 600
    assert value(counters, "CLAIM_STALL", "event", "suppressed") == 1
    assert value(counters, "CLAIM_STALL", "webhook", "sent") == 1
    await notifier.close()
    await webhook.close()


async def test_slack_format(client: redis.asyncio.Redis, receiver: tuple[Receiver, str]) -> None:
    target, url = receiver
    webhook = delivery(url, fmt="slack")
    notifier = StallNotifier(scope="shop", counters=OperatorCounters(), redis_client=client, delivery=webhook)
    await notifier.notify([CLAIM], FUNNEL, NOW)
    await notifier.close()
    await webhook.close()
    (body,) = target.bodies
    assert body["text"].startswith(":warning: *Flywheel funnel stall CLAIM_STALL (shop)*")
    assert CLAIM.message in body["text"]
    assert body["blocks"][0]["type"] == "header"
    assert "Incident shop/checkout-oom" in body["blocks"][2]["elements"][0]["text"]


async def test_transient_failures_are_retried_and_permanent_ones_are_not(receiver: tuple[Receiver, str]) -> None:
    target, url = receiver
    target.statuses = [503, 503, 200]
    webhook = sender(url, retries=3)
    notification = Notification("funnel_stall", "FunnelClaimStall", "t", "m", "shop", NOW)
    assert (await webhook.deliver(notification)).delivered is True
    assert len(target.bodies) == 3

    target.bodies.clear()
    target.statuses = [400]
    assert (await webhook.deliver(notification)).delivered is False
    assert len(target.bodies) == 1  # a refusal is final
    await webhook.close()


async def test_unreachable_and_hanging_webhooks_give_up_without_raising(receiver: tuple[Receiver, str]) -> None:
    notification = Notification("funnel_stall", "FunnelClaimStall", "t", "m", "shop", NOW)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    unreachable = sender(f"http://127.0.0.1:{closed_port}/hook", retries=2)
    assert (await unreachable.deliver(notification)).delivered is False
    await unreachable.close()

    target, url = receiver
    target.delay = 5.0
    hanging = sender(url, retries=1, timeout_seconds=0.2)
    assert (await hanging.deliver(notification)).delivered is False
    assert len(target.bodies) == 2
    await hanging.close()


async def test_notify_returns_before_delivery_finishes(
    client: redis.asyncio.Redis, receiver: tuple[Receiver, str]
) -> None:
    target, url = receiver
    target.delay = 1.0
    counters = OperatorCounters()
    webhook = delivery(url, counters)
    notifier = StallNotifier(scope="shop", counters=counters, redis_client=client, delivery=webhook)
    await notifier.notify([CLAIM], FUNNEL, NOW)
    assert notifier.pending + webhook.pending >= 1  # handed to background work, not awaited
    await notifier.close(grace_seconds=10)
    await webhook.close(grace_seconds=10)
    assert value(counters, "CLAIM_STALL", "webhook", "sent") == 1


async def test_a_failing_event_poster_does_not_stop_the_webhook(
    client: redis.asyncio.Redis, receiver: tuple[Receiver, str]
) -> None:
    target, url = receiver
    counters = OperatorCounters()
    webhook = delivery(url)
    notifier = StallNotifier(scope="shop", counters=counters, redis_client=client, post_event=Events(fail=True),
                             delivery=webhook)
    await notifier.notify([CLAIM], FUNNEL, NOW)
    await notifier.close()
    await webhook.close()
    assert value(counters, "CLAIM_STALL", "event", "failed") == 1
    assert len(target.bodies) == 1






async def test_without_redis_every_firing_is_sent_with_one_warning_until_redis_is_back(
    own_redis: RedisExecutor,
) -> None:
    client = connect_redis(f"redis://127.0.0.1:{own_redis.port}/0", timeout_seconds=0.5)
    events = Events()
    notifier = StallNotifier(scope="shop", counters=OperatorCounters(), redis_client=client, post_event=events)
    try:
        own_redis.stop()
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                await notifier.notify([CLAIM], FUNNEL, NOW)
            await settle(notifier)
        assert len(events.posted) == 3
        warnings = [entry for entry in logs if entry["event"] == "stall_dedup_lost"]
        assert len(warnings) == 1

        own_redis.start()
        with structlog.testing.capture_logs() as logs:
            await notifier.notify([CLAIM], FUNNEL, NOW)  # sent: Redis had no key yet
            await notifier.notify([CLAIM], FUNNEL, NOW)  # suppressed again
            await settle(notifier)
        assert len(events.posted) == 4
        assert any(entry["event"] == "stall_dedup_restored" for entry in logs)
    finally:
        await notifier.close()
        await client.aclose()
