"""Notifications of funnel stalls: Kubernetes Warning Events, and the webhook through the Notifier.

A stall rule notifies at most once per 10 minutes per scope: the first replica to ``SET NX EX
600`` the rule's key in Redis sends, everyone else stays quiet. Without Redis every firing is
sent (a duplicate is better than a silent stall) and one warning is logged until Redis answers
again.

Delivery never blocks anything: Events are posted by background tasks, and the webhook,
its retries and the record in the history are the Notifier's (``flywheel.stores.notifications``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Final

import redis.asyncio

from flywheel.domain.funnel import (
    STALL_NOTIFICATION_INTERVAL,
    FunnelCounts,
    StallAlert,
    StallRule,
)
from flywheel.domain.notifications import Notification, NotificationKind, Notifier
from flywheel.errors import RedisRefusedError, RedisUnavailableError
from flywheel.logs import get_logger
from flywheel.metrics.collector import OperatorCounters
from flywheel.stores.redis_errors import redis_errors

_log = get_logger(__name__)

STALL_KIND: Final = NotificationKind.FUNNEL_STALL.value
DEDUP_KEY_PREFIX: Final = "flywheel:notify:funnel-stall"
MAX_PENDING_DELIVERIES: Final = 32
EVENT_TIMEOUT_SECONDS: Final = 15.0

def stall_notification(alert: StallAlert, funnel: FunnelCounts, scope: str, now: datetime) -> Notification:
    """The notification for a firing stall rule, with the funnel figures behind it."""
    return Notification(
        kind=STALL_KIND,
        reason=alert.rule.event_reason,
        title=f"Flywheel funnel stall {alert.rule.value} ({scope})",
        message=alert.message,
        scope=scope,
        occurred_at=now,
        subjects=alert.subjects,
        # One firing that passed the 10-minute gate: its own delivery, its own history row.
        dedup_key=f"{STALL_KIND}/{scope}/{alert.rule.value}/{now.astimezone(UTC).isoformat()}",
        details={
            "rule": alert.rule.value,
            "periodMinutes": funnel.period_minutes,
            "opened": funnel.opened,
            "runsStarted": funnel.runs_started,
            "executed": funnel.executed,
            "verificationPassed": funnel.verification_passed,
            "verificationFailed": funnel.verification_failed,
            "resolved": funnel.resolved,
            "openWaiting": funnel.open_waiting,
            "openWaitingSamples": [str(sample) for sample in funnel.open_waiting_samples],
            "failureClasses": [
                {"code": item.code, "count": item.count, "examples": [str(example) for example in item.examples]}
                for item in funnel.failure_classes
            ],
            "approvalsRejected": funnel.approvals_rejected,
            "approvalsInvalid": funnel.approvals_invalid,
            "openOnlySources": funnel.sources.open_only,
        },
    )


EventPoster = Callable[[Notification], Awaitable[None]]


class StallNotifier:
    """Sends stall notifications, once per rule and scope per 10 minutes, without blocking the caller."""

    def __init__(
        self,
        *,
        scope: str,
        counters: OperatorCounters,
        redis_client: redis.asyncio.Redis | None = None,
        post_event: EventPoster | None = None,
        delivery: Notifier | None = None,
        event_timeout_seconds: float = EVENT_TIMEOUT_SECONDS,
    ) -> None:
        self._scope = scope
        self._counters = counters
        self._redis = redis_client
        self._post_event = post_event
        self._delivery = delivery
        self._event_timeout = event_timeout_seconds
        self._redis_warning_logged = False
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def dedup_key(self, rule: StallRule) -> str:
        return f"{DEDUP_KEY_PREFIX}:{self._scope}:{rule.value}"

    async def notify(self, alerts: Sequence[StallAlert], funnel: FunnelCounts, now: datetime) -> None:
        """Start delivering the alerts that are due; returns once they are handed to background tasks."""
        for alert in alerts:
            if not await self._due(alert.rule, now):
                for channel in self._channels():
                    self._counters.notification(alert.rule, channel, "suppressed")
                continue
            if len(self._pending) >= MAX_PENDING_DELIVERIES:
                _log.warning("stall_notification_dropped", reason="too_many_in_flight", rule=alert.rule.value,
                             pending=len(self._pending))
                for channel in self._channels():
                    self._counters.notification(alert.rule, channel, "failed")
                continue
            notification = stall_notification(alert, funnel, self._scope, now)
            _log.warning("funnel_stall", rule=alert.rule.value, scope=self._scope, message=alert.message)
            task = asyncio.create_task(self._dispatch(alert.rule, notification), name=f"notify-{alert.rule.value}")
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def close(self, grace_seconds: float = 5.0) -> None:
        """Give deliveries in flight ``grace_seconds`` to finish, cancel the rest, close the webhook client."""
        if self._pending:
            _, still_running = await asyncio.wait(set(self._pending), timeout=grace_seconds)
            for task in still_running:
                task.cancel()
            if still_running:
                await asyncio.gather(*still_running, return_exceptions=True)

    def _channels(self) -> tuple[str, ...]:
        channels = []
        if self._post_event is not None:
            channels.append("event")
        if self._delivery is not None:
            channels.append("webhook")
        return tuple(channels)

    async def _due(self, rule: StallRule, now: datetime) -> bool:
        """True if this rule has not notified for this scope within the interval (and claim it)."""
        if self._redis is None:
            self._warn_no_dedup("no Redis client configured")
            return True
        try:
            with redis_errors("claiming a stall notification"):
                claimed = await self._redis.set(
                    self.dedup_key(rule),
                    now.isoformat(),
                    nx=True,
                    ex=int(STALL_NOTIFICATION_INTERVAL.total_seconds()),
                )
        except (RedisUnavailableError, RedisRefusedError) as exc:
            # Refused or unavailable alike: a notification sent twice beats one never sent.
            self._warn_no_dedup(str(exc))
            return True
        if self._redis_warning_logged:
            _log.info("stall_dedup_restored", store="redis")
            self._redis_warning_logged = False
        return bool(claimed)

    def _warn_no_dedup(self, reason: str) -> None:
        # One warning per outage, not one per firing: the outage itself is what matters.
        if not self._redis_warning_logged:
            _log.warning(
                "stall_dedup_lost", effect="every firing is sent until Redis is back", reason=reason
            )
            self._redis_warning_logged = True

    async def _dispatch(self, rule: StallRule, notification: Notification) -> None:
        if self._post_event is not None:
            try:
                await asyncio.wait_for(self._post_event(notification), timeout=self._event_timeout)
            except Exception as exc:  # noqa: BLE001 - a failed notification must never take anything down with it
                _log.warning("stall_event_not_posted", rule=rule.value, error=f"{type(exc).__name__}: {exc}")
                self._counters.notification(rule, "event", "failed")
            else:
                self._counters.notification(rule, "event", "sent")
        if self._delivery is not None:
            # Counted as sent or failed by the Notifier's observer once the webhook answered.
            self._delivery.submit(notification)


def count_stall_deliveries(counters: OperatorCounters) -> Callable[[Notification, str], None]:
    """A Notifier observer counting the webhook deliveries of stall notifications per rule."""

    def observe(notification: Notification, outcome: str) -> None:
        if notification.kind != STALL_KIND:
            return
        try:
            rule = StallRule(str(notification.details.get("rule")))
        except ValueError:
            return
        counters.notification(rule, "webhook", outcome)

    return observe


__all__ = [
    "DEDUP_KEY_PREFIX",
    "EventPoster",
    "Notification",
    "StallNotifier",
    "count_stall_deliveries",
    "stall_notification",
]
