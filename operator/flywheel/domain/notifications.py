"""What Flywheel tells people, independent of the channel (Warning Event, JSON or Slack webhook).

A notification is a value: the controllers build one at each step a person may act on and hand
it to a ``Notifier``; delivery (selection per kind, retries, recording in the history) happens
elsewhere and never blocks the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from flywheel.domain.funnel import ObjectSample


class WebhookFormat(StrEnum):
    """The notification webhook's payload: our generic JSON, or a Slack-compatible incoming webhook."""

    JSON = "json"
    SLACK = "slack"


class NotificationKind(StrEnum):
    """The steps a person may act on (``FLYWHEEL_NOTIFY_EVENTS`` selects among them)."""

    DECISION_READY = "decision_ready"
    APPROVAL_REQUESTED = "approval_requested"
    RUN_FINISHED = "run_finished"
    LADDER_EXHAUSTED = "ladder_exhausted"
    FUNNEL_STALL = "funnel_stall"


@dataclass(frozen=True, slots=True)
class Notification:
    """Something people should know, as sent to every channel.

    ``dedup_key`` identifies the step (for example ``run_finished/<run uid>``): a controller pass
    that runs twice hands over the same key, and the step is delivered once.
    """

    kind: str
    reason: str  # CamelCase, the Event reason
    title: str
    message: str
    scope: str
    occurred_at: datetime
    subjects: tuple[ObjectSample, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)
    dedup_key: str | None = None


class Notifier(Protocol):
    """Accepts a notification for delivery without waiting for it (never raises)."""

    def submit(self, notification: Notification) -> None: ...
