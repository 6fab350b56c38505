"""Delivery of notifications to the configured webhook: the ``Notifier`` every controller gets.

``WebhookNotifier.submit`` only puts the notification in a bounded in-memory queue and returns;
a few background workers deliver. Per notification:

1. **Selection**: a kind not in ``FLYWHEEL_NOTIFY_EVENTS`` is dropped at ``submit``.
2. **De-duplication** across replicas and restarts: the first worker to ``SET NX`` the key
   ``flywheel:notify:<dedup_key>`` in Redis (kept 7 days) sends; a pass that runs twice, a
   standby that took over, or an operator restarted in between find the key and stay quiet.
   Without Redis the notification is sent (a duplicate beats a silent step) and the history
   row, keyed by the same ``dedup_key``, is still stored once.
3. **Delivery**: POST in the configured format, a timeout per attempt, transient failures
   (network, 408/425/429/5xx) retried with capped exponential backoff and jitter (tenacity);
   any other answer is final at once.
4. **Record**: the delivery, or its final failure after the retries, goes to the history
   (``notification_deliveries``, through the writer's durable spool), so ``flywheel timeline``
   and ``flywheel explain incident`` show it.

Nothing here raises into the caller or waits for the receiver: a full queue drops the
notification with a warning and records it as failed.

Webhook formats (``FLYWHEEL_NOTIFY_WEBHOOK_FORMAT``):

- ``json``: ``{"kind", "reason", "title", "message", "severity", "scope", "occurredAt",
  "subjects": [{"kind", "namespace", "name"}], "details": {...}}``;
- ``slack``: a Slack-compatible incoming-webhook body (``text`` plus ``blocks``), which
  Mattermost and Rocket.Chat accept as well.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import aiohttp
import redis.asyncio
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from flywheel.api.times import format_precise_time
from flywheel.domain.notifications import Notification, NotificationKind, WebhookFormat
from flywheel.errors import ConfigurationError, InvalidInputError, RedisRefusedError, RedisUnavailableError
from flywheel.logs import get_logger
from flywheel.stores.history.outbox import HistoryKind
from flywheel.stores.history.records import DeliveryOutcome, NotificationDelivery
from flywheel.stores.history.tables import EVENT_ID_LENGTH
from flywheel.stores.redis_errors import redis_errors

_log = get_logger(__name__)

DEDUP_KEY_PREFIX: Final = "flywheel:notify"
# Long enough for any pass to run again (a Run's whole life, a restart, a failover).
DEDUP_TTL: Final = timedelta(days=7)
MAX_QUEUED: Final = 1_000
WORKERS: Final = 4
MAX_BACKOFF_SECONDS: Final = 30.0
# Statuses worth retrying: the receiver is overloaded or briefly unavailable.
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
ALL_KINDS: Final = frozenset(NotificationKind)


def parse_kinds(value: str | Iterable[str] | None) -> frozenset[NotificationKind]:
    """The kinds named in a comma list (``FLYWHEEL_NOTIFY_EVENTS``); empty or ``all``: every kind."""
    names = [part.strip() for part in value.split(",")] if isinstance(value, str) else list(value or ())
    names = [name for name in names if name]
    if not names or names == ["all"]:
        return ALL_KINDS
    known = {kind.value: kind for kind in NotificationKind}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidInputError(
            "notify_events",
            f"unknown notification kind(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
        )
    return frozenset(known[name] for name in names)


def webhook_body(notification: Notification, fmt: WebhookFormat) -> dict[str, Any]:
    """The JSON body posted to the webhook in format ``fmt``."""
    occurred = format_precise_time(notification.occurred_at)
    if fmt is WebhookFormat.SLACK:
        subjects = ", ".join(f"{subject.kind} {subject}" for subject in notification.subjects)
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": notification.title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": notification.message[:3000]}},
        ]
        command = notification.details.get("approveCommand")
        if command:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"`{command}`"[:3000]}})
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


class _Transient(Exception):
    """An attempt failed in a way another attempt may fix."""


class _Refused(Exception):
    """The receiver answered in a way no retry changes (a 4xx other than 408/425/429)."""


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    delivered: bool
    attempts: int
    error: str | None = None


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
            # Not the URL itself: a webhook URL is a credential (Slack's carries its token).
            raise ConfigurationError("notify_webhook_url must be an http(s) URL")
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

    async def deliver(self, notification: Notification) -> DeliveryResult:
        """Send ``notification``: delivered once the receiver accepted it (2xx), else why not."""
        body = webhook_body(notification, self._format)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retries + 1),
            wait=wait_exponential_jitter(initial=self._backoff, max=MAX_BACKOFF_SECONDS, jitter=self._backoff / 2),
            retry=retry_if_exception_type(_Transient),
            sleep=self._sleep,
            before_sleep=lambda state: _log.info(
                "webhook_delivery_retrying", reason=notification.reason, attempt=state.attempt_number,
                error=str(state.outcome.exception()) if state.outcome else None,
            ),
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    await self._attempt(body)
        except RetryError as exc:
            error = str(exc.last_attempt.exception())
        except _Refused as exc:
            error = str(exc)
        else:
            _log.info("webhook_notification_delivered", reason=notification.reason, attempts=attempts)
            return DeliveryResult(True, attempts)
        _log.warning("webhook_notification_not_delivered", reason=notification.reason, attempts=attempts, error=error)
        return DeliveryResult(False, attempts, error)

    async def _attempt(self, body: Mapping[str, Any]) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(self._url, json=body) as response:
                if 200 <= response.status < 300:
                    return
                text = (await response.text())[:200]
                detail = f"HTTP {response.status}: {text}"
                raise (_Transient if response.status in RETRYABLE_STATUSES else _Refused)(detail)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


class RecordSink(Protocol):
    """The history writer (``HistoryWriter.submit``): stores the record, later if it must."""

    def submit(self, kind: HistoryKind, payload: NotificationDelivery) -> None: ...


DeliveryObserver = Callable[[Notification, str], None]
"""Told ``sent``, ``failed`` or ``suppressed`` for every notification handled (the stall counters)."""


def delivery_id(notification: Notification) -> str:
    """The history row's key: the de-duplication key, else one per occurrence."""
    key = notification.dedup_key or (
        f"{notification.kind}/{notification.scope}/{notification.reason}/{notification.occurred_at.isoformat()}"
    )
    return key[:EVENT_ID_LENGTH]


class WebhookNotifier:
    """The ``Notifier``: selected kinds, de-duplicated, delivered in the background, recorded."""

    def __init__(
        self,
        sender: WebhookSender | None,
        *,
        kinds: Collection[NotificationKind | str] = ALL_KINDS,
        redis_client: redis.asyncio.Redis | None = None,
        history: RecordSink | None = None,
        max_queued: int = MAX_QUEUED,
        workers: int = WORKERS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sender = sender
        self._kinds = frozenset(str(kind) for kind in kinds)
        self._redis = redis_client
        self._history = history
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=max_queued)
        self._worker_count = workers
        self._workers: list[asyncio.Task[None]] = []
        self._clock = clock
        self._observers: list[DeliveryObserver] = []
        self._redis_warning_logged = False
        self._closed = False
        self._in_flight = 0

    @property
    def enabled(self) -> bool:
        return self._sender is not None

    @property
    def format(self) -> str | None:
        return self._sender.format.value if self._sender is not None else None

    @property
    def kinds(self) -> frozenset[str]:
        return self._kinds

    @property
    def pending(self) -> int:
        """Queued plus being delivered."""
        return self._queue.qsize() + self._in_flight

    def observe(self, observer: DeliveryObserver) -> None:
        self._observers.append(observer)

    def submit(self, notification: Notification) -> None:
        """Queue ``notification`` for delivery and return at once (never raises)."""
        try:
            if self._sender is None or self._closed or notification.kind not in self._kinds:
                return
            self._start_workers()
            self._queue.put_nowait(notification)
        except asyncio.QueueFull:
            _log.warning("notification_dropped", reason_dropped="queue_full", kind=notification.kind, reason=notification.reason,
                         queued=self._queue.qsize())
            self._record(notification, DeliveryResult(False, 0, "not sent: the notification queue was full"))
            self._tell(notification, "failed")
        except Exception as exc:  # noqa: BLE001 - a notification never takes its caller down
            _log.warning("notification_not_queued", kind=notification.kind, error=f"{type(exc).__name__}: {exc}")

    async def drain(self) -> None:
        """Wait until everything submitted so far is handled (tests, shutdown)."""
        await self._queue.join()

    async def close(self, grace_seconds: float = 5.0) -> None:
        """Give queued deliveries ``grace_seconds`` to finish, cancel the rest, close the client."""
        self._closed = True
        if self._workers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout=grace_seconds)
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers.clear()
        if self._sender is not None:
            await self._sender.close()

    def _start_workers(self) -> None:
        if self._workers:
            return
        self._workers = [
            asyncio.create_task(self._work(), name=f"notify-worker-{number}") for number in range(self._worker_count)
        ]

    async def _work(self) -> None:
        while True:
            notification = await self._queue.get()
            self._in_flight += 1
            try:
                await self._handle(notification)
            except Exception as exc:  # noqa: BLE001 - one bad notification must not stop the worker
                _log.warning("notification_not_handled", kind=notification.kind, error=f"{type(exc).__name__}: {exc}")
            finally:
                self._in_flight -= 1
                self._queue.task_done()

    async def _handle(self, notification: Notification) -> None:
        assert self._sender is not None
        if not await self._claim(notification):
            _log.info("notification_already_sent", kind=notification.kind, dedup_key=notification.dedup_key)
            self._tell(notification, "suppressed")
            return
        result = await self._sender.deliver(notification)
        self._record(notification, result)
        self._tell(notification, "sent" if result.delivered else "failed")

    async def _claim(self, notification: Notification) -> bool:
        """True if nobody sent this step yet (and it is now ours)."""
        if notification.dedup_key is None:
            return True
        if self._redis is None:
            self._warn_no_dedup("no Redis client configured")
            return True
        try:
            with redis_errors("claiming a notification"):
                claimed = await self._redis.set(
                    f"{DEDUP_KEY_PREFIX}:{notification.dedup_key}",
                    self._clock().isoformat(),
                    nx=True,
                    ex=int(DEDUP_TTL.total_seconds()),
                )
        except (RedisUnavailableError, RedisRefusedError) as exc:
            self._warn_no_dedup(str(exc))
            return True
        if self._redis_warning_logged:
            _log.info("notification_dedup_restored", store="redis")
            self._redis_warning_logged = False
        return bool(claimed)

    def _warn_no_dedup(self, reason: str) -> None:
        # One warning per outage, not one per notification.
        if not self._redis_warning_logged:
            _log.warning("notification_dedup_lost", effect="not de-duplicated across replicas until Redis is back", reason=reason)
            self._redis_warning_logged = True

    def _record(self, notification: Notification, result: DeliveryResult) -> None:
        if self._history is None:
            return
        details = notification.details
        try:
            self._history.submit(
                HistoryKind.NOTIFICATION_DELIVERY,
                NotificationDelivery(
                    delivery_id=delivery_id(notification),
                    kind=notification.kind,
                    reason=notification.reason,
                    title=notification.title,
                    message=notification.message,
                    occurred_at=notification.occurred_at,
                    finished_at=self._clock(),
                    outcome=DeliveryOutcome.DELIVERED if result.delivered else DeliveryOutcome.FAILED,
                    attempts=result.attempts,
                    channel=f"webhook/{self._sender.format.value}" if self._sender is not None else "webhook",
                    namespace=_text(details.get("namespace")),
                    run_uid=_text(details.get("runUid")),
                    incident_uid=_text(details.get("incidentUid")),
                    error=result.error,
                    payload=dict(details),
                ),
            )
        except Exception as exc:  # noqa: BLE001 - the history is best effort here; the log keeps it
            _log.warning("notification_delivery_not_recorded", kind=notification.kind, error=str(exc))

    def _tell(self, notification: Notification, outcome: str) -> None:
        for observer in self._observers:
            try:
                observer(notification, outcome)
            except Exception as exc:  # noqa: BLE001 - an observer is a counter; it must not stop delivery
                _log.warning("notification_observer_failed", error=str(exc))


def _text(value: object) -> str | None:
    return str(value) if value else None


__all__ = [
    "ALL_KINDS",
    "DEDUP_KEY_PREFIX",
    "DeliveryObserver",
    "DeliveryResult",
    "RecordSink",
    "WebhookFormat",
    "WebhookNotifier",
    "WebhookSender",
    "delivery_id",
    "parse_kinds",
    "webhook_body",
]
