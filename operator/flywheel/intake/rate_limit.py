"""A per-client rate limit for the intake: one token bucket per client address.

Alertmanager sends one request per alert group and ``group_interval``; a client that sends far
more is misconfigured or hostile, and every request it sends costs Incident writes and API
calls. Each address gets ``burst`` requests at once and ``rate`` more per second; over that the
intake answers 429 with the seconds until the next request would be accepted (Retry-After).
The buckets are bounded (the least recently seen addresses are forgotten first), so a flood of
spoofed addresses cannot grow memory without limit; a forgotten address starts full again.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

REMEMBERED_CLIENTS = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float


class ClientRateLimit:
    """Token buckets by client address; ``clock`` is monotonic seconds."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float],
        remembered: int = REMEMBERED_CLIENTS,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive (a disabled limit is no ClientRateLimit)")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._remembered = remembered
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, client: str) -> int | None:
        """Spend one request of ``client``: None when allowed, else the seconds to wait (>= 1)."""
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(self._burst, now)
            if len(self._buckets) > self._remembered:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
            bucket.at = now
            self._buckets.move_to_end(client)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - bucket.tokens) / self._rate))


__all__ = ["REMEMBERED_CLIENTS", "ClientRateLimit"]
