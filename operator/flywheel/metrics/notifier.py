"""Notifications of funnel stalls: Kubernetes Warning Events and an optional webhook.

A stall rule notifies at most once per 10 minutes per scope: the first replica to ``SET NX EX
600`` the rule's key in Redis sends, everyone else stays quiet. Without Redis every firing is
sent (a duplicate is better than a silent stall) and one warning is logged until Redis answers
again.

Delivery never blocks anything: each notification is sent by a background task, webhook
deliveries have a timeout per attempt and a bounded number of retries with backoff, and
failures are logged and counted, never raised.

Webhook formats (``FLYWHEEL_NOTIFY_WEBHOOK_FORMAT``):

- ``json``: ``{"kind", "reason", "title", "message", "severity", "scope", "occurredAt",
  "subjects": [{"kind", "namespace", "name"}], "details": {...}}``;
- ``slack``: a Slack-compatible incoming-webhook body (``text`` plus ``blocks``), which
  Mattermost and Rocket.Chat accept as well.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import aiohttp
import redis.asyncio

from flywheel.domain.funnel import (
    STALL_NOTIFICATION_INTERVAL,
    FunnelCounts,
    StallAlert,
    StallRule,
)
from flywheel.domain.notifications import Notification
from flywheel.errors import ConfigurationError, RedisRefusedError, RedisUnavailableError
from flywheel.logs import get_logger
from flywheel.metrics.collector import OperatorCounters
from flywheel.stores.redis_errors import redis_errors

_log = get_logger(__name__)

STALL_KIND: Final = "funnel_stall"
DEDUP_KEY_PREFIX: Final = "flywheel:notify:funnel-stall"
MAX_PENDING_DELIVERIES: Final = 32
EVENT_TIMEOUT_SECONDS: Final = 15.0
MAX_BACKOFF_SECONDS: Final = 30.0
# Statuses worth retrying: the receiver is overloaded or briefly unavailable.
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})



class WebhookFormat(StrEnum):
    JSON = "json"
    SLACK = "slack"


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


def webhook_body(notification: Notification, fmt: WebhookFormat) -> dict[str, Any]:
    """The JSON body posted to the webhook in format ``fmt``."""
    occurred = notification.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if fmt is WebhookFormat.SLACK:
        subjects = ", ".join(f"{subject.kind} {subject}" for subject in notification.subjects)
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": notification.title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": notification.message[:3000]}},
        ]
        if subjects:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": subjects[:3000]}]})
        return {"text": f":warning: *{notification.title}*\n{notification.message}", "blocks": blocks}
    return {
        "kind": notification.kind,
        "reason": notification.reason,
        "title": notification.title,
        "message": notification.message,
        "severity": "warning",
        "scope": notification.scope,
        "occurredAt": occurred,
        "subjects": [
            {"kind": subject.kind, "namespace": subject.namespace, "name": subject.name}
            for subject in notification.subjects
        ],
        "details": dict(notification.details),
    }


class WebhookSender:
    """POSTs notifications to one webhook, retrying transient failures with backoff."""

    def __init__(
        self,
        url: str,
        fmt: WebhookFormat | str = WebhookFormat.JSON,
        *,
        timeout_seconds: float = 5.0,
        retries: int = 3,
        backoff_seconds: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"notify_webhook_url must be an http(s) URL, got {url!r}")
        try:
            self._format = WebhookFormat(fmt)
        except ValueError as exc:
            raise ConfigurationError(f"notify_webhook_format must be json or slack, got {fmt!r}") from exc
        if timeout_seconds <= 0 or retries < 0 or backoff_seconds < 0:
            raise ConfigurationError("webhook timeout must be > 0, retries and backoff >= 0")
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._retries = retries
        self._backoff = backoff_seconds
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    @property
    def format(self) -> WebhookFormat:
        return self._format

    async def deliver(self, notification: Notification) -> bool:
        """Send ``notification``; True once the receiver accepted it (2xx), False after giving up."""
        body = webhook_body(notification, self._format)
        attempts = self._retries + 1
        for attempt in range(1, attempts + 1):
            outcome = await self._attempt(body)
            if outcome is None:
                _log.info("webhook notification delivered", reason=notification.reason, attempt=attempt)
                return True
            retryable, detail = outcome
            if not retryable or attempt == attempts:
                _log.warning(
                    "webhook notification not delivered",
                    reason=notification.reason,
                    attempts=attempt,
                    error=detail,
                    retryable=retryable,
                )
                return False
            delay = min(self._backoff * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
            _log.info("webhook delivery failed, retrying", reason=notification.reason, attempt=attempt,
                      error=detail, retry_in_seconds=delay)
            await self._sleep(delay)
        return False  # unreachable: the loop returns on its last attempt

    async def _attempt(self, body: Mapping[str, Any]) -> tuple[bool, str] | None:
        """None on success, else (retryable, what went wrong)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(self._url, json=body) as response:
                if 200 <= response.status < 300:
                    return None
                text = (await response.text())[:200]
                return response.status in RETRYABLE_STATUSES, f"HTTP {response.status}: {text}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return True, f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


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
        webhook: WebhookSender | None = None,
        event_timeout_seconds: float = EVENT_TIMEOUT_SECONDS,
    ) -> None:
        self._scope = scope
        self._counters = counters
        self._redis = redis_client
        self._post_event = post_event
        self._webhook = webhook
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
                _log.warning("too many notifications in flight; dropping one", rule=alert.rule.value,
                             pending=len(self._pending))
                for channel in self._channels():
                    self._counters.notification(alert.rule, channel, "failed")
                continue
            notification = stall_notification(alert, funnel, self._scope, now)
            _log.warning("funnel stall", rule=alert.rule.value, scope=self._scope, message=alert.message)
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
        if self._webhook is not None:
            await self._webhook.close()

    def _channels(self) -> tuple[str, ...]:
        channels = []
        if self._post_event is not None:
            channels.append("event")
        if self._webhook is not None:
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
            _log.info("Redis is back: stall notifications are de-duplicated again")
            self._redis_warning_logged = False
        return bool(claimed)

    def _warn_no_dedup(self, reason: str) -> None:
        # One warning per outage, not one per firing: the outage itself is what matters.
        if not self._redis_warning_logged:
            _log.warning(
                "stall notifications not de-duplicated: every firing is sent until Redis is back", reason=reason
            )
            self._redis_warning_logged = True

    async def _dispatch(self, rule: StallRule, notification: Notification) -> None:
        if self._post_event is not None:
            try:
                await asyncio.wait_for(self._post_event(notification), timeout=self._event_timeout)
            except Exception as exc:  # noqa: BLE001 - a failed notification must never take anything down with it
                _log.warning("stall event not posted", rule=rule.value, error=f"{type(exc).__name__}: {exc}")
                self._counters.notification(rule, "event", "failed")
            else:
                self._counters.notification(rule, "event", "sent")
        if self._webhook is not None:
            delivered = await self._webhook.deliver(notification)
            self._counters.notification(rule, "webhook", "sent" if delivered else "failed")


__all__ = [
    "DEDUP_KEY_PREFIX",
    "EventPoster",
    "Notification",
    "StallNotifier",
    "WebhookFormat",
    "WebhookSender",
    "stall_notification",
    "webhook_body",
]
