"""Anomaly recurrence store on Redis: sliding-window counts, repair history, dispositions.

Every write is one Lua script (EVALSHA), so one anomaly record costs one round trip and is
atomic: a crash between steps cannot leave a counted occurrence without its expiry, and two
operator replicas recording at once cannot interleave.

Key layout, per tenant prefix (a namespace or a configured project id). The first six keep the
layout of the older anomaly counter, so its data stays readable and its readers keep working:

- ``{tenant}:anomaly:timeline:{key}`` (sorted set): occurrences, score = epoch seconds. Members
  are occurrence ids — an Incident's uid, or ``ep-<hash>`` for each further firing episode
  appended to it (the older system used the timestamp string). 35-day TTL.
- ``{tenant}:anomaly:metadata:{key}`` (hash): ``signature`` (JSON) and ``first_seen`` (ISO 8601),
  written once; permanent-fix details.
- ``{tenant}:anomaly:repair_count:{key}`` (string): repair attempts, INCR. 35-day TTL.
- ``{tenant}:anomaly:permanent_fix:{key}`` (string): ``"1"`` while a permanent fix holds (90 days).
- ``{tenant}:anomaly:repair_history:{key}`` (list): last 100 attempts of any action, newest
  first, JSON ``{action, success, timestamp, attempt_id}``.
- ``{tenant}:anomaly:disposition:{key}`` (hash): count per disposition type, plus ``total``.
- ``{tenant}:anomaly:repair_outcomes:{key}`` (hash): per action, its last 100 outcomes as a
  string of ``1``/``0``, oldest first.
- ``{tenant}:anomaly:repair_attempt_ids:{key}`` and ``{tenant}:anomaly:disposition_ids:{key}``
  (sorted sets): ids already counted, so that retries count once.

Multi-key scripts need all keys of one anomaly on one node, so this store targets a single
Redis (or a primary with replicas), not Redis Cluster; the older layout has no hash tags either.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from flywheel.api.enums import Disposition
from flywheel.domain.escalation import (
    ActionStats,
    AnomalySnapshot,
    EscalationThresholds,
    Occurrence,
    escalation_level,
)
from flywheel.errors import InvalidInputError, RedisUnavailableError
from flywheel.logs import get_logger
from flywheel.stores.redis_errors import redis_errors

_log = get_logger(__name__)

# The widest window is also the retention: older occurrences are trimmed from the timeline.
COUNTING_WINDOWS: Final[tuple[timedelta, ...]] = (
    timedelta(hours=1),
    timedelta(hours=24),
    timedelta(days=7),
    timedelta(days=30),
)
# Refreshed on every write. A key left alone longer than the retention holds nothing countable;
# the extra days match the older system, whose readers may still look at these keys.
KEY_TTL: Final = timedelta(days=35)
PERMANENT_FIX_TTL: Final = timedelta(days=90)
KEPT_REPAIR_OUTCOMES: Final = 100

ALLOWED_DISPOSITIONS: Final[tuple[str, ...]] = tuple(item.value for item in Disposition)


_NO_WHITESPACE = re.compile(r"^\S+$")

# Shared by the scripts below. Lua numbers are doubles, so scores go out as the strings Redis
# handed us (an integer reply would truncate the fraction).
_LUA_HELPERS: Final = """
local function extend_ttl(key, seconds)
  -- Only ever lengthen: the metadata hash outlives the timeline while a permanent fix holds.
  local remaining = redis.call('TTL', key)
  if remaining == -1 or (remaining >= 0 and remaining < seconds) then
    redis.call('EXPIRE', key, seconds)
  end
end

local function read_snapshot(timeline, repair_count, permanent_fix, dispositions, starts)
  local counts = {}
  for i = 1, #starts do
    counts[i] = redis.call('ZCOUNT', timeline, starts[i], '+inf')
  end
  -- Bounded by the retention start so entries not trimmed yet (read-only snapshot, data of the
  -- older system) never show up as first/last seen.
  local retention_start = starts[#starts]
  local oldest = redis.call('ZRANGEBYSCORE', timeline, retention_start, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  local newest = redis.call('ZREVRANGEBYSCORE', timeline, '+inf', retention_start, 'WITHSCORES', 'LIMIT', 0, 1)
  return {
    counts[1], counts[2], counts[3], counts[4],
    oldest[2] or false,
    newest[2] or false,
    redis.call('GET', repair_count),
    redis.call('EXISTS', permanent_fix),
    redis.call('HGETALL', dispositions),
  }
end
"""

# KEYS: timeline, metadata, repair_count, permanent_fix, dispositions, repair_outcomes, repair_history
# ARGV: ttl_seconds, signature_json, start_1h, start_24h, start_7d, start_30d,
#       then per occurrence: occurrence_id, occurred_at (epoch), occurred_at_iso
# Returns the outcomes (counted now, counted before, older than the retention), the snapshot,
# and the repair outcomes and history, which the decision about this occurrence needs next:
# one round trip however many occurrences, instead of one per occurrence plus a read.
_RECORD_OCCURRENCE_LUA: Final = (
    _LUA_HELPERS
    + """
local timeline, metadata = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[1])
local starts = {ARGV[3], ARGV[4], ARGV[5], ARGV[6]}
local retention_start = ARGV[6]
local counted, already, too_old = 0, 0, 0
for i = 7, #ARGV, 3 do
  local occurrence_id, occurred_at = ARGV[i], ARGV[i + 1]
  -- An occurrence older than the retention window would be trimmed at once: not stored at all.
  if tonumber(occurred_at) >= tonumber(retention_start) then
    -- NX: the first recorded time of an occurrence wins; a retry never adds or moves it.
    if redis.call('ZADD', timeline, 'NX', occurred_at, occurrence_id) == 1 then
      counted = counted + 1
    else
      already = already + 1
    end
    redis.call('HSETNX', metadata, 'signature', ARGV[2])
    redis.call('HSETNX', metadata, 'first_seen', ARGV[i + 2])
    extend_ttl(metadata, ttl)
  else
    too_old = too_old + 1
  end
end
redis.call('ZREMRANGEBYSCORE', timeline, '-inf', '(' .. retention_start)
if redis.call('EXISTS', timeline) == 1 then
  redis.call('EXPIRE', timeline, ttl)
end
local snapshot = read_snapshot(timeline, KEYS[3], KEYS[4], KEYS[5], starts)
table.insert(snapshot, 1, {counted, already, too_old})
table.insert(snapshot, redis.call('HGETALL', KEYS[6]))
table.insert(snapshot, redis.call('LRANGE', KEYS[7], 0, -1))
return snapshot
"""
)

# KEYS: timeline, repair_count, permanent_fix, dispositions
# ARGV: start_1h, start_24h, start_7d, start_30d
_READ_SNAPSHOT_LUA: Final = (
    _LUA_HELPERS
    + """
return read_snapshot(KEYS[1], KEYS[2], KEYS[3], KEYS[4], {ARGV[1], ARGV[2], ARGV[3], ARGV[4]})
"""
)

# KEYS: attempt_ids, outcomes, history, repair_count
# ARGV: attempt_id, attempted_at, id_retention_start, ttl_seconds, action, outcome ("1"/"0"),
#       history_entry_json, kept_outcomes
_RECORD_REPAIR_LUA: Final = """
local attempt_ids, outcomes_key, history, repair_count = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl = tonumber(ARGV[4])
local kept = tonumber(ARGV[8])
if redis.call('ZADD', attempt_ids, 'NX', ARGV[2], ARGV[1]) == 0 then
  return 0
end
redis.call('ZREMRANGEBYSCORE', attempt_ids, '-inf', '(' .. ARGV[3])
redis.call('EXPIRE', attempt_ids, ttl)
local outcomes = (redis.call('HGET', outcomes_key, ARGV[5]) or '') .. ARGV[6]
if #outcomes > kept then
  outcomes = string.sub(outcomes, -kept)
end
redis.call('HSET', outcomes_key, ARGV[5], outcomes)
redis.call('EXPIRE', outcomes_key, ttl)
redis.call('LPUSH', history, ARGV[7])
redis.call('LTRIM', history, 0, kept - 1)
redis.call('EXPIRE', history, ttl)
redis.call('INCR', repair_count)
redis.call('EXPIRE', repair_count, ttl)
return 1
"""

# KEYS: disposition_ids, dispositions
# ARGV: disposition_id, recorded_at, id_retention_start, ttl_seconds, disposition
_RECORD_DISPOSITION_LUA: Final = """
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 0 then
  return 0
end
local ttl = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('HINCRBY', KEYS[2], ARGV[5], 1)
-- "total" is kept for readers of the older layout; snapshots sum the known types instead.
redis.call('HINCRBY', KEYS[2], 'total', 1)
redis.call('EXPIRE', KEYS[2], ttl)
return 1
"""

# KEYS: permanent_fix, metadata
# ARGV: ttl_seconds, marked_at_iso, description
_MARK_PERMANENT_FIX_LUA: Final = (
    _LUA_HELPERS
    + """
local ttl = tonumber(ARGV[1])
redis.call('SET', KEYS[1], '1', 'EX', ttl)
redis.call('HSET', KEYS[2], 'permanent_fix_applied', 'true', 'permanent_fix_time', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], 'permanent_fix_description', ARGV[3])
end
extend_ttl(KEYS[2], ttl)
return 1
"""
)


@dataclass(frozen=True, slots=True)
class RecordedOccurrences:
    """What one recording did: the statistics after it, and how many occurrences it counted."""

    snapshot: AnomalySnapshot
    counted: int
    """Counted now for the first time."""
    already_counted: int
    """Counted by an earlier recording (a retry, a restart, a re-sent episode)."""
    too_old: int
    """Older than the 30-day window, so not stored."""


@dataclass(frozen=True, slots=True)
class AnomalyKeys:
    """Redis keys of one anomaly of one tenant (see the module docstring for the layout)."""

    timeline: str
    metadata: str
    repair_count: str
    permanent_fix: str
    repair_history: str
    dispositions: str
    repair_outcomes: str
    repair_attempt_ids: str
    disposition_ids: str

    @classmethod
    def of(cls, tenant: str, key: str) -> AnomalyKeys:
        _require_token("tenant", tenant)
        _require_token("key", key)
        prefix = f"{tenant}:anomaly"
        return cls(
            timeline=f"{prefix}:timeline:{key}",
            metadata=f"{prefix}:metadata:{key}",
            repair_count=f"{prefix}:repair_count:{key}",
            permanent_fix=f"{prefix}:permanent_fix:{key}",
            repair_history=f"{prefix}:repair_history:{key}",
            dispositions=f"{prefix}:disposition:{key}",
            repair_outcomes=f"{prefix}:repair_outcomes:{key}",
            repair_attempt_ids=f"{prefix}:repair_attempt_ids:{key}",
            disposition_ids=f"{prefix}:disposition_ids:{key}",
        )


def connect_redis(url: str, *, timeout_seconds: float = 2.0, retries: int = 2) -> redis.asyncio.Redis:
    """A client that gives up quickly, so an unreachable Redis degrades an Incident in seconds.

    redis-py's default retries ten times with backoff; the operator would rather mark the
    anomaly counts degraded and record later. Retrying a script is safe: every write here is
    idempotent on its id.
    """
    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.25), retries),
    )


class AnomalyStore:
    """Recurrence counts, repair outcomes and dispositions of anomalies, per tenant.

    Methods raise :class:`RedisUnavailableError` when Redis cannot serve now (the caller marks
    the Incident degraded and records again later; recording is idempotent per occurrence id),
    :class:`RedisRefusedError` when Redis refuses the command itself (``flywheel.stores.redis_errors``)
    and :class:`InvalidInputError` for arguments that can never succeed.
    """

    def __init__(self, client: redis.asyncio.Redis, thresholds: EscalationThresholds) -> None:
        self._client = client
        self._thresholds = thresholds
        # register_script computes the SHA locally; the first call per server loads the script.
        self._record_occurrence_script = client.register_script(_RECORD_OCCURRENCE_LUA)
        self._read_snapshot_script = client.register_script(_READ_SNAPSHOT_LUA)
        self._record_repair_script = client.register_script(_RECORD_REPAIR_LUA)
        self._record_disposition_script = client.register_script(_RECORD_DISPOSITION_LUA)
        self._mark_permanent_fix_script = client.register_script(_MARK_PERMANENT_FIX_LUA)

    @property
    def thresholds(self) -> EscalationThresholds:
        return self._thresholds

    async def record_occurrence(
        self,
        tenant: str,
        key: str,
        signature: Mapping[str, str],
        occurrence_id: str,
        occurred_at: datetime,
        now: datetime | None = None,
    ) -> AnomalySnapshot:
        """Count one occurrence (at most once per ``occurrence_id``) and return the new statistics.

        See :meth:`record_occurrences`, of which this is the one-occurrence case.
        """
        _require_token("occurrence_id", occurrence_id)
        _as_utc("occurred_at", occurred_at)
        recorded = await self.record_occurrences(
            tenant, key, signature, (Occurrence(occurrence_id, occurred_at),), now=now
        )
        return recorded.snapshot

    async def record_occurrences(
        self,
        tenant: str,
        key: str,
        signature: Mapping[str, str],
        occurrences: Sequence[Occurrence],
        now: datetime | None = None,
    ) -> RecordedOccurrences:
        """Count each occurrence at most once per id, in one round trip, and return the new statistics.

        An Incident passes all of its occurrences every time (itself and each firing episode
        appended to it, see :func:`flywheel.domain.escalation.incident_occurrences`): those
        counted before are counted again never, so a retry, a restart or an Alertmanager
        re-send adds nothing. ``occurred_at`` is when an occurrence happened, which may lie in
        the past when recording after an outage; windows are measured back from ``now``. An
        occurrence older than the 30-day window is not stored. The snapshot carries the
        :meth:`action_stats` of the anomaly, read in the same round trip.
        """
        keys = AnomalyKeys.of(tenant, key)
        if not occurrences:
            raise InvalidInputError("occurrences", "at least one occurrence is needed")
        occurrence_args: list[str] = []
        for index, occurrence in enumerate(occurrences):
            _require_token(f"occurrences[{index}].id", occurrence.id)
            at_utc = _as_utc(f"occurrences[{index}].at", occurrence.at)
            occurrence_args += [occurrence.id, _epoch(at_utc), at_utc.isoformat()]
        now_utc = _as_utc("now", now) if now is not None else datetime.now(UTC)
        signature_json = json.dumps(dict(signature), sort_keys=True)
        async with self._unavailable_as_error("record_occurrence", tenant, key):
            reply = await self._record_occurrence_script(
                keys=[
                    keys.timeline, keys.metadata, keys.repair_count, keys.permanent_fix, keys.dispositions,
                    keys.repair_outcomes, keys.repair_history,
                ],
                args=[_seconds(KEY_TTL), signature_json, *_window_starts(now_utc), *occurrence_args],
            )
        counted, already_counted, too_old = (int(number) for number in reply[0])
        outcome_fields, history = reply[-2], reply[-1]
        outcomes = dict(zip(outcome_fields[0::2], outcome_fields[1::2], strict=True))
        snapshot = self._snapshot_from_reply(
            key, reply[1:-2], action_stats=_action_stats(outcomes, history, tenant, key)
        )
        _log.info(
            "anomaly_occurrence_recorded",
            tenant=tenant,
            anomaly_key=key,
            occurrence_ids=[occurrence.id for occurrence in occurrences][:10],
            counted=counted,
            already_counted=already_counted,
            older_than_retention=too_old,
            count_1h=snapshot.count_1h,
            count_24h=snapshot.count_24h,
            count_30d=snapshot.count_30d,
            escalation_level=snapshot.escalation_level,
        )
        return RecordedOccurrences(snapshot, counted=counted, already_counted=already_counted, too_old=too_old)

    async def snapshot(self, tenant: str, key: str, now: datetime | None = None) -> AnomalySnapshot:
        """Current statistics of an anomaly without recording anything (zero counts if unknown)."""
        keys = AnomalyKeys.of(tenant, key)
        now_utc = _as_utc("now", now) if now is not None else datetime.now(UTC)
        async with self._unavailable_as_error("snapshot", tenant, key):
            reply = await self._read_snapshot_script(
                keys=[keys.timeline, keys.repair_count, keys.permanent_fix, keys.dispositions],
                args=_window_starts(now_utc),
            )
        return self._snapshot_from_reply(key, reply)

    async def record_repair_attempt(
        self,
        tenant: str,
        key: str,
        action: str,
        success: bool,
        attempt_id: str,
        at: datetime,
    ) -> bool:
        """Record the outcome of one remediation attempt; True if new, False if already recorded."""
        keys = AnomalyKeys.of(tenant, key)
        _require_token("action", action)
        _require_token("attempt_id", attempt_id)
        at_utc = _as_utc("at", at)
        action_name = str(action)
        history_entry = json.dumps(
            # Same fields as the older system's history entries, plus the attempt id, which
            # also tells our entries apart from theirs when reading statistics.
            {
                "action": action_name,
                "success": success,
                "timestamp": at_utc.isoformat(),
                "attempt_id": attempt_id,
            }
        )
        async with self._unavailable_as_error("record_repair_attempt", tenant, key):
            newly_recorded = await self._record_repair_script(
                keys=[keys.repair_attempt_ids, keys.repair_outcomes, keys.repair_history, keys.repair_count],
                args=[
                    attempt_id,
                    _epoch(at_utc),
                    _epoch(at_utc - KEY_TTL),
                    _seconds(KEY_TTL),
                    action_name,
                    "1" if success else "0",
                    history_entry,
                    KEPT_REPAIR_OUTCOMES,
                ],
            )
        _log.info(
            "repair_attempt_recorded",
            tenant=tenant,
            anomaly_key=key,
            action=action_name,
            success=success,
            attempt_id=attempt_id,
            already_counted=not newly_recorded,
        )
        return bool(newly_recorded)

    async def action_stats(self, tenant: str, key: str) -> dict[str, ActionStats]:
        """Attempts and successes per action over the last 100 outcomes of each action.

        Entries the older system left in the shared history list (they carry no attempt id)
        still count, behind this store's own and within the same cap of 100 per action.
        """
        keys = AnomalyKeys.of(tenant, key)
        async with self._unavailable_as_error("action_stats", tenant, key):
            # Two reads, one round trip; no transaction needed for a statistic.
            pipeline = self._client.pipeline(transaction=False)
            pipeline.hgetall(keys.repair_outcomes)
            pipeline.lrange(keys.repair_history, 0, -1)
            outcome_strings, history = await pipeline.execute()
        return _action_stats(outcome_strings, history, tenant, key)

    async def record_disposition(
        self,
        tenant: str,
        key: str,
        disposition: str,
        disposition_id: str,
        at: datetime | None = None,
    ) -> bool:
        """Count how an occurrence was dealt with; True if new, False if already recorded."""
        keys = AnomalyKeys.of(tenant, key)
        if disposition not in ALLOWED_DISPOSITIONS:
            raise InvalidInputError(
                "disposition",
                f"unknown disposition {disposition!r}; allowed: {', '.join(ALLOWED_DISPOSITIONS)}",
            )
        _require_token("disposition_id", disposition_id)
        at_utc = _as_utc("at", at) if at is not None else datetime.now(UTC)
        async with self._unavailable_as_error("record_disposition", tenant, key):
            newly_recorded = await self._record_disposition_script(
                keys=[keys.disposition_ids, keys.dispositions],
                args=[
                    disposition_id,
                    _epoch(at_utc),
                    _epoch(at_utc - KEY_TTL),
                    _seconds(KEY_TTL),
                    str(disposition),
                ],
            )
        _log.info(
            "disposition_recorded",
            tenant=tenant,
            anomaly_key=key,
            disposition=str(disposition),
            disposition_id=disposition_id,
            already_counted=not newly_recorded,
        )
        return bool(newly_recorded)

    async def mark_permanent_fix(
        self,
        tenant: str,
        key: str,
        description: str = "",
        at: datetime | None = None,
    ) -> None:
        """Flag the anomaly's root cause as fixed for 90 days (idempotent; renews the 90 days)."""
        keys = AnomalyKeys.of(tenant, key)
        at_utc = _as_utc("at", at) if at is not None else datetime.now(UTC)
        async with self._unavailable_as_error("mark_permanent_fix", tenant, key):
            await self._mark_permanent_fix_script(
                keys=[keys.permanent_fix, keys.metadata],
                args=[_seconds(PERMANENT_FIX_TTL), at_utc.isoformat(), description],
            )
        _log.info("permanent_fix_marked", tenant=tenant, anomaly_key=key, description=description)

    def _snapshot_from_reply(
        self, key: str, reply: Sequence[Any], action_stats: dict[str, ActionStats] | None = None
    ) -> AnomalySnapshot:
        count_1h, count_24h, count_7d, count_30d = (int(count) for count in reply[0:4])
        oldest_score, newest_score, repair_count, permanent_fix_exists, disposition_fields = reply[4:9]
        return AnomalySnapshot(
            key=key,
            count_1h=count_1h,
            count_24h=count_24h,
            count_7d=count_7d,
            count_30d=count_30d,
            first_seen=_from_score(oldest_score),
            last_seen=_from_score(newest_score),
            escalation_level=escalation_level(count_24h, self._thresholds),
            auto_repair_count=int(_text(repair_count)) if repair_count is not None else 0,
            permanent_fix_applied=bool(permanent_fix_exists),
            dispositions=_disposition_counts(disposition_fields),
            action_stats=action_stats,
        )

    @asynccontextmanager
    async def _unavailable_as_error(self, operation: str, tenant: str, key: str) -> AsyncIterator[None]:
        try:
            with redis_errors(f"{operation} of {tenant}/{key}"):
                yield
        except RedisUnavailableError as exc:
            _log.warning(
                "anomaly_store_unavailable", operation=operation, tenant=tenant, anomaly_key=key, error=str(exc)
            )
            raise


def _require_token(field: str, value: str) -> None:
    # Whitespace or an empty part would make keys that collide or cannot be typed in redis-cli.
    if not isinstance(value, str) or not _NO_WHITESPACE.match(value):
        raise InvalidInputError(field, f"must be a non-empty string without whitespace, got {value!r}")


def _as_utc(field: str, moment: datetime) -> datetime:
    # A naive datetime would be read in the operator's local zone and shift every window.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidInputError(field, f"must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def _epoch(moment: datetime) -> str:
    # The shortest text that parses back to the same double, which is what Redis stores as score.
    return repr(moment.timestamp())


def _seconds(duration: timedelta) -> int:
    return int(duration.total_seconds())


def _window_starts(now: datetime) -> list[str]:
    return [_epoch(now - window) for window in COUNTING_WINDOWS]


def _text(value: bytes | str) -> str:
    # The store works with clients created with or without decode_responses.
    return value.decode() if isinstance(value, bytes) else value


def _from_score(score: bytes | str | None) -> datetime | None:
    return None if score is None else datetime.fromtimestamp(float(_text(score)), tz=UTC)


def _disposition_counts(flat_fields: Sequence[bytes | str]) -> dict[str, int]:
    counts = dict.fromkeys(ALLOWED_DISPOSITIONS, 0)
    for name, value in zip(flat_fields[0::2], flat_fields[1::2], strict=True):
        field = _text(name)
        if field in counts:  # skips "total" and anything a foreign writer may have added
            counts[field] = int(value)
    return counts


def _action_stats(
    outcome_strings: Mapping[bytes | str, bytes | str], history: Sequence[bytes | str], tenant: str, key: str
) -> dict[str, ActionStats]:
    """Attempts and successes per action: the outcomes hash, behind it the older system's history."""
    own_outcomes: dict[str, list[bool]] = {  # oldest first
        _text(action): [flag == "1" for flag in _text(flags)] for action, flags in outcome_strings.items()
    }
    legacy_outcomes: dict[str, list[bool]] = {}  # oldest first
    for action, success in reversed(_legacy_history_entries(history, tenant, key)):
        legacy_outcomes.setdefault(action, []).append(success)
    stats: dict[str, ActionStats] = {}
    for action in dict.fromkeys([*own_outcomes, *legacy_outcomes]):
        # Legacy entries predate ours, so they are the first to fall out of the cap.
        kept = (legacy_outcomes.get(action, []) + own_outcomes.get(action, []))[-KEPT_REPAIR_OUTCOMES:]
        stats[action] = ActionStats(attempts=len(kept), successes=sum(kept))
    return stats


def _legacy_history_entries(history: Sequence[bytes | str], tenant: str, key: str) -> list[tuple[str, bool]]:
    """(action, success) of history entries written by the older system, newest first."""
    entries: list[tuple[str, bool]] = []
    for raw in history:
        try:
            entry = json.loads(raw)
            if "attempt_id" in entry:  # ours: already counted through the outcomes hash
                continue
            entries.append((str(entry["action"]), bool(entry["success"])))
        except (ValueError, TypeError, KeyError):
            # One unreadable entry must not hide the rest of the history.
            _log.warning(
                "repair_history_entry_unreadable", tenant=tenant, anomaly_key=key, entry=_text(raw)[:200]
            )
    return entries
