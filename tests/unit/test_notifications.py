"""The one notification delivery (``flywheel.stores.notifications.WebhookNotifier``).

Scenarios:
- selection: ``FLYWHEEL_NOTIFY_EVENTS`` parsed as a comma list, default all; an unknown kind is
  refused naming the field; a kind not selected is never sent nor recorded;
- formats: JSON carries every detail (the approve command, the expiry); Slack shows the
  command in its own block;
- de-duplication: the same ``dedup_key`` submitted twice (two passes, two replicas sharing a
  Redis) is delivered and recorded once; different keys both go out;
- retries: 503, 503, 200 → delivered on the third attempt, recorded Delivered with 3 attempts;
  always 503 → recorded Failed after the retries with the last error; a 400 is final at once;
- a full queue drops with a recorded failure, and ``submit`` never raises nor waits;
- the record survives the spool (encode/decode) and lands in the history table, where the
  Run's timeline shows it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from flywheel.domain.notifications import Notification, NotificationKind
from flywheel.errors import InvalidInputError
from flywheel.settings import FlywheelSettings
from flywheel.stores.history import DeliveryOutcome, HistoryKind, HistoryStore, NotificationDelivery
from flywheel.stores.history.engine import create_history_engine
from flywheel.stores.history.migrate import upgrade
from flywheel.stores.history.spool import decode_record, encode_record
from flywheel.stores.notifications import (
    ALL_KINDS,
    WebhookFormat,
    WebhookNotifier,
    WebhookSender,
    parse_kinds,
    webhook_body,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)


def approval_requested(key: str = "approval_requested/uid-a") -> Notification:
    return Notification(
        kind=NotificationKind.APPROVAL_REQUESTED.value, reason="ApprovalRequested",
        title="Flywheel: Approval shop/checkout-1 waits for a decision", message="approve it", scope="shop",
        occurred_at=NOW,
        details={"namespace": "shop", "approval": "checkout-1", "runUid": "run-uid-1",
                 "expiresAt": "2026-12-02T16:00:00Z",
                 "approveCommand": "kubectl flywheel approve checkout-1 -n shop --reason '<why>'"},
        dedup_key=key,
    )


class Receiver:
    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status < 300 else "nope")


@pytest.fixture
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


class SharedRedis:
    """SET NX as Redis does it, shared by several notifiers (replicas)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, int | None]] = {}

    async def set(self, key: str, value: str, nx: bool = False, ex: int | None = None) -> bool | None:
        if nx and key in self.keys:
            return None
        self.keys[key] = (value, ex)
        return True


class Records:
    def __init__(self) -> None:
        self.items: list[NotificationDelivery] = []

    def submit(self, kind: HistoryKind, payload: NotificationDelivery) -> None:
        assert kind is HistoryKind.NOTIFICATION_DELIVERY
        self.items.append(payload)


async def no_sleep(_: float) -> None:
    return None


def notifier(url: str, records: Records, redis: SharedRedis | None = None, **options: Any) -> WebhookNotifier:
    kinds = options.pop("kinds", ALL_KINDS)
    sender = WebhookSender(url, options.pop("fmt", "json"), sleep=no_sleep, timeout_seconds=2.0, **options)
    return WebhookNotifier(sender, kinds=kinds, redis_client=redis, history=records, clock=lambda: NOW)  # type: ignore[arg-type]


# -- selection --------------------------------------------------------------------------


def test_selection_is_a_comma_list_defaulting_to_every_kind() -> None:
    assert parse_kinds(None) == ALL_KINDS
    assert parse_kinds("") == ALL_KINDS
    assert parse_kinds("all") == ALL_KINDS
    assert parse_kinds(" run_finished , approval_requested") == {
        NotificationKind.RUN_FINISHED, NotificationKind.APPROVAL_REQUESTED,
    }
    with pytest.raises(InvalidInputError) as refused:
        parse_kinds("run_finished,run_started")
    assert refused.value.field == "notify_events" and "run_started" in str(refused.value)


def test_unknown_kind_in_settings_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    assert FlywheelSettings().notify_events == ["all"]
    monkeypatch.setenv("FLYWHEEL_NOTIFY_EVENTS", "run_finished,funnel_stall")
    assert FlywheelSettings().notify_events == ["run_finished", "funnel_stall"]
    monkeypatch.setenv("FLYWHEEL_NOTIFY_EVENTS", "run_finished,everything")
    with pytest.raises(ValidationError) as refused:
        FlywheelSettings()
    assert "notify_events" in str(refused.value) and "everything" in str(refused.value)


async def test_a_kind_not_selected_is_neither_sent_nor_recorded(receiver: tuple[Receiver, str]) -> None:
    target, url = receiver
    records = Records()
    delivery = notifier(url, records, kinds=parse_kinds("run_finished"))
    delivery.submit(approval_requested())
    await delivery.drain()
    await delivery.close()
    assert target.bodies == [] and records.items == []


# -- formats ----------------------------------------------------------------------------


def test_json_and_slack_bodies_carry_the_approve_command() -> None:
    notification = approval_requested()
    generic = webhook_body(notification, WebhookFormat.JSON)
    assert generic["kind"] == "approval_requested" and generic["reason"] == "ApprovalRequested"
    assert generic["details"]["approveCommand"] == "kubectl flywheel approve checkout-1 -n shop --reason '<why>'"
    assert generic["details"]["expiresAt"] == "2026-12-02T16:00:00Z"
    assert generic["occurredAt"] == "2026-12-02T15:00:00Z"
    slack = webhook_body(notification, WebhookFormat.SLACK)
    assert slack["blocks"][0]["text"]["text"] == notification.title
    assert slack["blocks"][2]["text"]["text"] == "`kubectl flywheel approve checkout-1 -n shop --reason '<why>'`"


# -- de-duplication ---------------------------------------------------------------------


async def test_the_same_step_from_two_replicas_is_delivered_and_recorded_once(
    receiver: tuple[Receiver, str],
) -> None:
    target, url = receiver
    redis, records = SharedRedis(), Records()
    first, second = notifier(url, records, redis), notifier(url, records, redis)
    first.submit(approval_requested())
    second.submit(approval_requested())  # the standby, or the same pass run again
    first.submit(approval_requested())
    second.submit(approval_requested("approval_requested/uid-b"))  # another step
    for delivery in (first, second):
        await delivery.drain()
        await delivery.close()
    assert len(target.bodies) == 2
    assert sorted(item.delivery_id for item in records.items) == [
        "approval_requested/uid-a", "approval_requested/uid-b",
    ]
    assert redis.keys["flywheel:notify:approval_requested/uid-a"][1] == 7 * 24 * 3600


# -- retries and the record -------------------------------------------------------------


async def test_transient_failures_are_retried_then_recorded_delivered(receiver: tuple[Receiver, str]) -> None:
    target, url = receiver
    target.statuses = [503, 503, 200]
    records = Records()
    delivery = notifier(url, records, retries=3)
    delivery.submit(approval_requested())
    await delivery.drain()
    await delivery.close()
    assert len(target.bodies) == 3
    (record,) = records.items
    assert (record.outcome, record.attempts, record.error) == (DeliveryOutcome.DELIVERED, 3, None)
    assert record.channel == "webhook/json" and record.run_uid == "run-uid-1" and record.namespace == "shop"


async def test_a_receiver_that_always_fails_gets_a_recorded_final_failure(receiver: tuple[Receiver, str]) -> None:
    target, url = receiver
    target.statuses = [503] * 10
    records = Records()
    delivery = notifier(url, records, retries=2)
    delivery.submit(approval_requested())
    await delivery.drain()
    await delivery.close()
    assert len(target.bodies) == 3
    (record,) = records.items
    assert record.outcome is DeliveryOutcome.FAILED and record.attempts == 3
    assert record.error is not None and record.error.startswith("HTTP 503")


async def test_a_refusal_is_final_at_once(receiver: tuple[Receiver, str]) -> None:
    target, url = receiver
    target.statuses = [400]
    records = Records()
    delivery = notifier(url, records, retries=3)
    delivery.submit(approval_requested())
    await delivery.drain()
    await delivery.close()
    assert len(target.bodies) == 1
    assert records.items[0].outcome is DeliveryOutcome.FAILED and records.items[0].attempts == 1


async def test_a_full_queue_drops_with_a_record_and_never_blocks(receiver: tuple[Receiver, str]) -> None:
    _, url = receiver
    records = Records()
    sender = WebhookSender(url, sleep=no_sleep)
    delivery = WebhookNotifier(sender, history=records, max_queued=1, workers=1, clock=lambda: NOW)
    for number in range(3):
        delivery.submit(approval_requested(f"approval_requested/{number}"))  # returns at once
    await delivery.drain()
    await delivery.close()
    outcomes = sorted((item.delivery_id, item.outcome.value) for item in records.items)
    assert ("approval_requested/0", "Delivered") in outcomes
    assert any(outcome == "Failed" for _, outcome in outcomes)


def test_submit_without_a_webhook_does_nothing() -> None:
    records = Records()
    delivery = WebhookNotifier(None, history=records)
    delivery.submit(approval_requested())  # no running loop needed: nothing is queued
    assert not delivery.enabled and records.items == []


# -- the history ------------------------------------------------------------------------


def record(outcome: DeliveryOutcome = DeliveryOutcome.DELIVERED) -> NotificationDelivery:
    return NotificationDelivery(
        delivery_id="run_finished/run-uid-1", kind="run_finished", reason="RunSucceeded",
        title="Flywheel: Run shop/checkout-1 Succeeded", message="ended Succeeded", occurred_at=NOW,
        finished_at=NOW, outcome=outcome, attempts=1, channel="webhook/json", namespace="shop",
        run_uid="run-uid-1", payload={"state": "Succeeded"},
    )


def test_the_record_survives_the_spool() -> None:
    original = record(DeliveryOutcome.FAILED)
    assert decode_record("notification_delivery", encode_record(original)) == original


def test_the_record_is_stored_once_and_shown_in_the_runs_timeline(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    upgrade(url)
    store = HistoryStore(create_history_engine(url))
    try:
        run = {
            "metadata": {"uid": "run-uid-1", "name": "checkout-1", "namespace": "shop",
                         "creationTimestamp": "2026-12-02T14:59:00Z", "resourceVersion": "1"},
            "spec": {"incidentRef": {"name": "checkout", "uid": "inc-uid"}, "traceId": "a" * 32,
                     "action": {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "checkout"}},
                     "riskLevel": "low", "mode": "Auto", "timeoutSeconds": 600, "maxAttempts": 1},
            "status": {"state": "Succeeded"},
        }
        store.upsert_run(run)
        store.add_notification_delivery(record())
        store.add_notification_delivery(record())  # a retry of the same record changes nothing
        timeline = store.timeline("run-uid-1")
        assert timeline is not None
        notifications = [entry for entry in timeline.entries if entry.kind.value == "notification"]
        assert len(notifications) == 1
        assert notifications[0].title == "notification run_finished (webhook/json)"
        assert notifications[0].result == "Delivered"
    finally:
        store.close()


