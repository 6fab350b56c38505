"""EventOnlyNotifier: never blocks, posts each step once (by dedup key), never raises on a failed post."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from flywheel.domain.funnel import ObjectSample
from flywheel.domain.notifications import Notification
from flywheel.errors import KubernetesUnavailableError
from flywheel.stores.event_notifier import EventOnlyNotifier

pytestmark = pytest.mark.unit

SUBJECT = ObjectSample("Incident", "shop", "checkout-oom", "uid-1")


class Poster:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str, str]] = []
        self.fail = False

    async def post(self, subject: ObjectSample, *, type: str, reason: str, message: str) -> None:
        if self.fail:
            raise KubernetesUnavailableError("API server unreachable")
        self.posted.append((subject.name, type, reason, message))


def notification(kind: str, key: str) -> Notification:
    return Notification(kind=kind, reason="LadderExhausted" if kind == "ladder_exhausted" else "DecisionReady",
                        title="t", message="m", scope="shop", occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
                        subjects=(SUBJECT,), dedup_key=key)


async def test_each_step_is_posted_once_and_warnings_stay_warnings() -> None:
    poster = Poster()
    notifier = EventOnlyNotifier(poster)  # type: ignore[arg-type]
    notifier.submit(notification("decision_ready", "decision_ready/DEC-1"))
    notifier.submit(notification("decision_ready", "decision_ready/DEC-1"))
    notifier.submit(notification("ladder_exhausted", "ladder_exhausted/uid-1"))
    await asyncio.sleep(0.05)
    assert poster.posted == [
        ("checkout-oom", "Normal", "NotifyDecisionReady", "t: m"),
        ("checkout-oom", "Warning", "NotifyLadderExhausted", "t: m"),
    ]
    await notifier.close()


async def test_a_failed_post_is_logged_not_raised() -> None:
    poster = Poster()
    poster.fail = True
    notifier = EventOnlyNotifier(poster)  # type: ignore[arg-type]
    notifier.submit(notification("decision_ready", "decision_ready/DEC-2"))
    await asyncio.sleep(0.05)
    assert poster.posted == []
    await notifier.close()
