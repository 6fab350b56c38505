"""Capped exponential backoff, as tenacity strategies shared by every retry loop of ours.

Three loops retry through an unavailable store: the history writer (``stores/history/outbox.py``)
and the intake's two Kubernetes lookups (``intake/recorder.py``, ``intake/server.py``); the
webhook notifier uses tenacity's own ``wait_exponential_jitter``. :class:`Backoff` is the one
description of the delays (first, doubled per consecutive failure, capped, then scaled by a
random factor so that replicas and concurrent requests do not retry in lockstep), and it hands
tenacity the wait and the deadline stop built from it. The delays before jitter are a pure
function of the attempt number, so they are unit-tested without sleeping.

It lives beside ``errors.py`` and ``logs.py``: it is used from the stores and the intake alike
and imports nothing of ours.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tenacity.stop import stop_base
from tenacity.wait import wait_base

if TYPE_CHECKING:
    from tenacity import RetryCallState


@dataclass(frozen=True, slots=True)
class Backoff:
    """``first`` seconds, doubled for each consecutive failure, at most ``cap``; then jittered.

    The delay actually slept is the capped delay times a factor drawn uniformly from ``jitter``
    (``(1.0, 1.0)``: none), so it may exceed ``cap`` by the jitter's upper bound.
    """

    first: float
    cap: float
    jitter: tuple[float, float] = (1.0, 1.0)
    uniform: Callable[[float, float], float] = field(default=random.uniform, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError(f"backoff: need 0 < first <= cap, got first={self.first}, cap={self.cap}")
        low, high = self.jitter
        if not 0 <= low <= high:
            raise ValueError(f"backoff: need 0 <= jitter low <= high, got {self.jitter}")

    def delay(self, attempt: int) -> float:
        """The delay after the ``attempt``-th consecutive failure (1-based), before jitter."""
        return exponential_delay(self.first, attempt, self.cap)

    def wait(self) -> wait_base:
        """The tenacity wait: :meth:`delay` of the attempt that failed, jittered."""
        return _JitteredWait(self)

    def stop_at_deadline(self, deadline: float, clock: Callable[[], float]) -> stop_base:
        """Give up once the time left before ``deadline`` (on ``clock``) is no more than the next delay.

        Compared with the delay before jitter: a retry that could not start before the deadline
        is not worth sleeping for; the caller answers at once instead.
        """
        return _StopAtDeadline(self, deadline, clock)


def exponential_delay(first: float, attempt: int, cap: float) -> float:
    """``first`` doubled for each consecutive failure after the first (``attempt`` is 1-based), at most ``cap``."""
    first = max(first, 0.0)
    if attempt <= 1:
        return min(first, cap)
    # The exponent is bounded so that a long outage's attempt count cannot overflow the float.
    return min(first * 2.0 ** min(attempt - 1, 32), cap)


class _JitteredWait(wait_base):
    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        low, high = self._backoff.jitter
        factor = 1.0 if low == high == 1.0 else self._backoff.uniform(low, high)
        return self._backoff.delay(retry_state.attempt_number) * factor


class _StopAtDeadline(stop_base):
    def __init__(self, backoff: Backoff, deadline: float, clock: Callable[[], float]) -> None:
        self._backoff = backoff
        self._deadline = deadline
        self._clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._deadline - self._clock() <= self._backoff.delay(retry_state.attempt_number)


def stop_past(deadline: float, clock: Callable[[], float]) -> stop_base:
    """Give up once ``clock`` reads ``deadline`` or later (for retries that do not back off)."""
    return _StopPast(deadline, clock)


class _StopPast(stop_base):
    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self._deadline = deadline
        self._clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._clock() >= self._deadline
