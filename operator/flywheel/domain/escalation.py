"""Escalation of recurring anomalies and the history-aware skip policy.

Pure functions and value objects only: no I/O, no clock. The Redis store
(``flywheel.stores.anomaly_redis``) produces the numbers; this module decides what they mean.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flywheel.api.enums import EscalationLevel
from flywheel.errors import ConfigurationError, InvalidInputError

DEFAULT_MIN_ATTEMPTS_BEFORE_SKIP = 2
DEFAULT_MIN_SUCCESS_RATE = 0.2


@dataclass(frozen=True, slots=True)
class EscalationThresholds:
    """Occurrences within 24 hours at which an anomaly reaches each escalation level.

    Thresholds must be at least 1 and must not descend. Equal neighbours are allowed (the
    operator settings accept them too): ``escalate == permanent_fix`` means an anomaly jumps
    straight from REPEAT to PERMANENT_FIX, and the higher level wins.
    """

    repeat: int = 3
    escalate: int = 5
    permanent_fix: int = 10

    def __post_init__(self) -> None:
        for name in ("repeat", "escalate", "permanent_fix"):
            value = getattr(self, name)
            # bool is an int subclass; True as a threshold is a configuration mistake, not 1.
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"escalation threshold {name} must be an integer >= 1, got {value!r}"
                )
        if not self.repeat <= self.escalate <= self.permanent_fix:
            raise ConfigurationError(
                "escalation thresholds must ascend (repeat <= escalate <= permanent_fix), got "
                f"repeat={self.repeat}, escalate={self.escalate}, permanent_fix={self.permanent_fix}"
            )


def escalation_level(count_24h: int, thresholds: EscalationThresholds) -> EscalationLevel | None:
    """The escalation level reached by an anomaly seen ``count_24h`` times in the last 24 hours.

    ``None`` below the REPEAT threshold. Checked from the highest level down so that equal
    thresholds resolve to the more severe level.
    """
    if count_24h < 0:
        raise InvalidInputError("count_24h", f"must be >= 0, got {count_24h}")
    if count_24h >= thresholds.permanent_fix:
        return EscalationLevel.PERMANENT_FIX
    if count_24h >= thresholds.escalate:
        return EscalationLevel.ESCALATE
    if count_24h >= thresholds.repeat:
        return EscalationLevel.REPEAT
    return None


EPISODE_ID_PREFIX = "ep-"


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One occurrence of an anomaly: the id it is counted under (once) and when it happened."""

    id: str
    at: datetime


def episode_id(fingerprint: str | None, starts_at: datetime) -> str:
    """The occurrence id of one firing episode: the alert's fingerprint and its ``startsAt``.

    Alertmanager re-sends an episode with the same pair (every ``repeat_interval``, on every
    retry of a failed webhook), so the id is the same whoever records it and however often;
    a new episode of the same alert (it resolved and fired again) has a new ``startsAt``.
    """
    if starts_at.tzinfo is None or starts_at.utcoffset() is None:
        raise InvalidInputError("starts_at", f"must be timezone-aware, got naive {starts_at.isoformat()}")
    identity = f"{fingerprint or ''}\x00{starts_at.astimezone(UTC).isoformat()}"
    return EPISODE_ID_PREFIX + hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def incident_occurrences(
    incident_uid: str, created_at: datetime, episodes: Iterable[tuple[str | None, datetime]]
) -> tuple[Occurrence, ...]:
    """The occurrences an Incident stands for: itself, plus every further firing episode.

    The Incident counts once under its uid at its creation time, as it always has, so that
    its first recording, a retry and a restart count it once. That occurrence stands for its
    earliest episode (the one it was opened for). Each *other* distinct episode
    (``(fingerprint, startsAt)`` of its signals, firing or resolved — a resolved signal is the
    end of an episode that fired) is one more occurrence at its ``startsAt``, under
    :func:`episode_id`. Re-sent notifications of one episode map to the same id.
    """
    distinct = {(fingerprint, starts_at.astimezone(UTC)) for fingerprint, starts_at in episodes}
    ordered = sorted(distinct, key=lambda episode: (episode[1], episode[0] or ""))
    later = (Occurrence(episode_id(fingerprint, starts_at), starts_at) for fingerprint, starts_at in ordered[1:])
    return (Occurrence(incident_uid, created_at), *later)


def escalation_rose(before: EscalationLevel | None, after: EscalationLevel | None) -> bool:
    """Whether ``after`` is a more severe level than ``before`` (None is below REPEAT)."""
    return _LEVEL_RANK[after] > _LEVEL_RANK[before]


_LEVEL_RANK: dict[EscalationLevel | None, int] = {
    None: 0,
    EscalationLevel.REPEAT: 1,
    EscalationLevel.ESCALATE: 2,
    EscalationLevel.PERMANENT_FIX: 3,
}


@dataclass(frozen=True, slots=True)
class ActionStats:
    """Outcomes of one remediation action for one anomaly, over the kept history window."""

    attempts: int
    successes: int

    def __post_init__(self) -> None:
        if self.attempts < 0 or self.successes < 0 or self.successes > self.attempts:
            raise InvalidInputError(
                "action_stats",
                f"need 0 <= successes <= attempts, got successes={self.successes}, attempts={self.attempts}",
            )

    @property
    def success_rate(self) -> float:
        """Share of successful attempts; 0.0 when the action was never tried."""
        return self.successes / self.attempts if self.attempts else 0.0


def should_skip_action(
    stats: ActionStats,
    min_attempts: int = DEFAULT_MIN_ATTEMPTS_BEFORE_SKIP,
    min_success_rate: float = DEFAULT_MIN_SUCCESS_RATE,
) -> bool:
    """Whether the decision should pass over this action for the next candidate.

    An action is skipped once it has been tried at least ``min_attempts`` times and its
    success rate is strictly below ``min_success_rate``. Fewer attempts are not evidence
    enough: a single failure must not ban an action forever.
    """
    if min_attempts < 1:
        raise InvalidInputError("min_attempts", f"must be >= 1, got {min_attempts}")
    if not 0.0 <= min_success_rate <= 1.0:
        raise InvalidInputError("min_success_rate", f"must be within [0, 1], got {min_success_rate}")
    return stats.attempts >= min_attempts and stats.success_rate < min_success_rate


@dataclass(frozen=True, slots=True)
class AnomalySnapshot:
    """Recurrence statistics of one anomaly key at one instant.

    ``first_seen``/``last_seen`` are aware UTC datetimes of the oldest and newest occurrence
    within the 30-day window, ``None`` when there is none (an unknown key, or data that aged out).
    ``dispositions`` maps every known disposition type to its count. ``action_stats`` holds the
    outcomes per action when they were read along with the counts (a recording reads them in
    the same round trip, for the decision that follows), else None.
    """

    key: str
    count_1h: int
    count_24h: int
    count_7d: int
    count_30d: int
    first_seen: datetime | None
    last_seen: datetime | None
    escalation_level: EscalationLevel | None
    auto_repair_count: int
    permanent_fix_applied: bool
    dispositions: dict[str, int] = field(default_factory=dict)
    action_stats: dict[str, ActionStats] | None = None

    @property
    def total_dispositions(self) -> int:
        return sum(self.dispositions.values())
