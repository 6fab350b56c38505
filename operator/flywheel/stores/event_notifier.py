"""``EventOnlyNotifier``: a notification delivered as a Kubernetes Event on its first subject.

The stand-in delivery until a webhook delivery is wired in: ``submit`` never blocks and never
raises (the Event is posted by a background task), and a step is posted once per process
(by its ``dedup_key``), however many passes hand it over.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from flywheel.domain.notifications import Notification
from flywheel.errors import FlywheelError
from flywheel.logs import get_logger
from flywheel.stores.events import KubernetesEventPoster

log = get_logger(__name__)

# Dedup keys remembered (the oldest are forgotten first).
_REMEMBERED = 10_000
_WARNING_KINDS = frozenset({"ladder_exhausted", "funnel_stall"})


class EventOnlyNotifier:
    def __init__(self, poster: KubernetesEventPoster) -> None:
        self._poster = poster
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, notification: Notification) -> None:
        if not notification.subjects:
            return
        key = notification.dedup_key
        if key is not None:
            if key in self._seen:
                return
            self._seen[key] = None
            while len(self._seen) > _REMEMBERED:
                self._seen.popitem(last=False)
        try:
            task = asyncio.get_running_loop().create_task(self._post(notification))
        except RuntimeError:
            log.warning("notification_dropped_no_loop", kind=notification.kind, dedup_key=key)
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, notification: Notification) -> None:
        kind = "Warning" if notification.kind in _WARNING_KINDS else "Normal"
        try:
            await self._poster.post(
                notification.subjects[0],
                type=kind,
                reason=f"Notify{notification.reason}",
                message=f"{notification.title}: {notification.message}",
            )
        except FlywheelError as exc:
            log.warning("notification_not_posted", kind=notification.kind, dedup_key=notification.dedup_key, error=str(exc))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
