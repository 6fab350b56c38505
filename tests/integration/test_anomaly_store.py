"""The anomaly recurrence store against a real redis-server.

Scenarios:
- sliding windows 1h/24h/7d/30d as time moves; occurrences older than 30 days trimmed from the
  set and never stored when they arrive that late; keys expire after ~35 days;
- escalation at 3/5/10 occurrences within 24 hours, and with configured thresholds;
- idempotency: one occurrence id counts once, whatever its retries carry;
- repeat firings: an Incident whose alert fired five times (five episodes appended, recorded
  after each append, as the reconcile does) counts five and reaches ESCALATE; re-sends of an
  episode, its resolution, a retried pass and a restart count nothing more;
- one round trip per record, however many occurrences it carries, proven from the server side (slow log with a zero threshold:
  the store's connection issued exactly one EVALSHA; INFO agrees on the command totals), and
  that round trip also brings the repair outcomes the decision needs;
- repair history: last 100 outcomes per action and overall, success rates and the skip policy,
  one count per attempt id;
- dispositions: known types counted once per id, unknown types refused;
- permanent fix flag kept ~90 days and shown in snapshots;
- tenants isolated by key prefix; data in the older system's layout readable and extended;
- degraded: unreachable or stalled Redis raises RedisUnavailableError (chained), and recording
  the same occurrence once Redis is back counts it exactly once.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import redis.asyncio
import redis.exceptions

from flywheel.api.enums import ActionType, Disposition, EscalationLevel
from flywheel.domain.escalation import (
    AnomalySnapshot,
    EscalationThresholds,
    episode_id,
    incident_occurrences,
    should_skip_action,
)
from flywheel.errors import InvalidInputError, RedisUnavailableError
from flywheel.stores.anomaly_redis import (
    KEPT_REPAIR_OUTCOMES,
    KEY_TTL,
    PERMANENT_FIX_TTL,
    AnomalyKeys,
    AnomalyStore,
    connect_redis,
)

pytestmark = pytest.mark.integration

TENANT = "payments"
KEY = "3f2a9c1d7e5b4a60"
SIGNATURE = {
    "alert_name": "KubePodCrashLooping",
    "service": "checkout",
    "namespace": "payments",
    "error_type": "OOMKilled",
}
DEFAULT_THRESHOLDS = EscalationThresholds()
# Slack for TTL checks: the TTL is set by the server clock a moment before we read it.
TTL_SLACK_SECONDS = 60


@pytest.fixture()
def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture()
async def client(clean_redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    redis_client = connect_redis(clean_redis_url)
    yield redis_client
    await redis_client.aclose()


@pytest.fixture()
def store(client: redis.asyncio.Redis) -> AnomalyStore:
    return AnomalyStore(client, DEFAULT_THRESHOLDS)


def as_text(value: bytes | str | None) -> str:
    assert value is not None
    return value.decode() if isinstance(value, bytes) else value


def assert_ttl_close_to(ttl_seconds: int, expected: timedelta) -> None:
    expected_seconds = int(expected.total_seconds())
    assert expected_seconds - TTL_SLACK_SECONDS <= ttl_seconds <= expected_seconds


async def record_at(
    store: AnomalyStore, occurrence_id: str, occurred_at: datetime, now: datetime | None = None
) -> AnomalySnapshot:
    """Record as the operator would at ``now`` (by default: the moment it happened)."""
    return await store.record_occurrence(
        TENANT, KEY, SIGNATURE, occurrence_id, occurred_at, now=occurred_at if now is None else now
    )


# --- windows, trim, expiry ------------------------------------------------------------------


async def test_windows_count_occurrences_by_age_and_move_with_time(
    store: AnomalyStore, now: datetime
) -> None:
    for occurrence_id, age in [
        ("inc-40d", timedelta(days=40)),
        ("inc-10d", timedelta(days=10)),
        ("inc-2d", timedelta(days=2)),
        ("inc-2h", timedelta(hours=2)),
    ]:
        await record_at(store, occurrence_id, now - age)

    snapshot = await store.snapshot(TENANT, KEY, now=now)
    assert (snapshot.count_1h, snapshot.count_24h, snapshot.count_7d, snapshot.count_30d) == (0, 1, 2, 3)
    assert snapshot.first_seen == now - timedelta(days=10)  # the 40-day-old one is out of every window
    assert snapshot.last_seen == now - timedelta(hours=2)

    # A day later the 2-hour-old occurrence has left the 24h window but not the 7d one; eight
    # days later only the 30d window remembers anything.
    later = await store.snapshot(TENANT, KEY, now=now + timedelta(days=1))
    assert (later.count_1h, later.count_24h, later.count_7d, later.count_30d) == (0, 0, 2, 3)
    much_later = await store.snapshot(TENANT, KEY, now=now + timedelta(days=8))
    assert (much_later.count_24h, much_later.count_7d, much_later.count_30d) == (0, 0, 3)
    past_retention = await store.snapshot(TENANT, KEY, now=now + timedelta(days=31))
    assert past_retention.count_30d == 0
    assert past_retention.first_seen is None and past_retention.last_seen is None

    fresh = await record_at(store, "inc-now", now)
    assert (fresh.count_1h, fresh.count_24h, fresh.count_7d, fresh.count_30d) == (1, 2, 3, 4)
    assert fresh.first_seen == now - timedelta(days=10) and fresh.last_seen == now


async def test_recording_trims_members_older_than_30_days(
    store: AnomalyStore, client: redis.asyncio.Redis, now: datetime
) -> None:
    timeline = AnomalyKeys.of(TENANT, KEY).timeline
    await record_at(store, "inc-40d", now - timedelta(days=40))
    await record_at(store, "inc-31d", now - timedelta(days=31))
    await record_at(store, "inc-29d", now - timedelta(days=29))
    # Each was recorded when it happened, so all three are still stored.
    assert await client.zcard(timeline) == 3

    await record_at(store, "inc-now", now)

    assert await client.zrange(timeline, 0, -1) == [b"inc-29d", b"inc-now"]


async def test_an_occurrence_older_than_30_days_is_not_stored(
    store: AnomalyStore, client: redis.asyncio.Redis, now: datetime
) -> None:
    snapshot = await record_at(store, "inc-late", now - timedelta(days=30, seconds=1), now=now)

    assert snapshot.count_30d == 0
    assert await client.exists(AnomalyKeys.of(TENANT, KEY).timeline) == 0


async def test_occurrence_keys_expire_after_about_35_days(
    store: AnomalyStore, client: redis.asyncio.Redis, now: datetime
) -> None:
    keys = AnomalyKeys.of(TENANT, KEY)
    await record_at(store, "inc-1", now)
    await store.record_repair_attempt(TENANT, KEY, ActionType.ROLLOUT_RESTART, True, "attempt-1", now)
    await store.record_disposition(TENANT, KEY, Disposition.AUTO_REPAIR, "disposition-1")

    for key in (
        keys.timeline,
        keys.metadata,
        keys.repair_count,
        keys.repair_history,
        keys.repair_outcomes,
        keys.repair_attempt_ids,
        keys.dispositions,
        keys.disposition_ids,
    ):
        assert_ttl_close_to(await client.ttl(key), KEY_TTL)


async def test_metadata_keeps_the_first_signature_and_first_seen(
    store: AnomalyStore, client: redis.asyncio.Redis, now: datetime
) -> None:
    first_at = now - timedelta(minutes=10)
    await record_at(store, "inc-1", first_at, now=now)
    await store.record_occurrence(TENANT, KEY, {"alert_name": "Other"}, "inc-2", now, now=now)

    metadata = await client.hgetall(AnomalyKeys.of(TENANT, KEY).metadata)
    assert json.loads(metadata[b"signature"]) == SIGNATURE
    assert datetime.fromisoformat(as_text(metadata[b"first_seen"])) == first_at


async def test_snapshot_of_an_unknown_anomaly_is_empty(store: AnomalyStore, now: datetime) -> None:
    snapshot = await store.snapshot(TENANT, "0000000000000000", now=now)

    assert (snapshot.count_1h, snapshot.count_24h, snapshot.count_7d, snapshot.count_30d) == (0, 0, 0, 0)
    assert snapshot.first_seen is None and snapshot.last_seen is None
    assert snapshot.escalation_level is None
    assert snapshot.auto_repair_count == 0 and snapshot.permanent_fix_applied is False
    assert snapshot.dispositions == {disposition.value: 0 for disposition in Disposition}


# --- escalation --------------------------------------------------------------------------------


async def test_escalation_levels_at_3_5_and_10_within_24_hours(store: AnomalyStore, now: datetime) -> None:
    levels = []
    for index in range(10):
        snapshot = await record_at(
            store, f"inc-{index}", now - timedelta(hours=20) + timedelta(hours=2 * index), now=now
        )
        levels.append(snapshot.escalation_level)

    assert levels == [
        None,
        None,
        EscalationLevel.REPEAT,
        EscalationLevel.REPEAT,
        EscalationLevel.ESCALATE,
        EscalationLevel.ESCALATE,
        EscalationLevel.ESCALATE,
        EscalationLevel.ESCALATE,
        EscalationLevel.ESCALATE,
        EscalationLevel.PERMANENT_FIX,
    ]


async def test_escalation_looks_at_the_last_24_hours_only(store: AnomalyStore, now: datetime) -> None:
    for index in range(10):
        await record_at(store, f"inc-{index}", now - timedelta(days=2, minutes=index), now=now)

    snapshot = await store.snapshot(TENANT, KEY, now=now)
    assert snapshot.count_7d == 10
    assert snapshot.escalation_level is None


async def test_escalation_uses_the_configured_thresholds(client: redis.asyncio.Redis, now: datetime) -> None:
    strict = AnomalyStore(client, EscalationThresholds(repeat=1, escalate=2, permanent_fix=3))
    levels = [
        (
            await strict.record_occurrence(TENANT, KEY, SIGNATURE, f"inc-{index}", now, now=now)
        ).escalation_level
        for index in range(3)
    ]
    assert levels == [EscalationLevel.REPEAT, EscalationLevel.ESCALATE, EscalationLevel.PERMANENT_FIX]


# --- idempotency and round trips -------------------------------------------------------------


async def test_the_same_occurrence_recorded_twice_counts_once(store: AnomalyStore, now: datetime) -> None:
    first = await record_at(store, "incident-uid-1", now - timedelta(minutes=5), now=now)
    # An operator restart replays the handler; even a different time must not move or add it.
    replay = await record_at(store, "incident-uid-1", now, now=now)

    assert first.count_1h == replay.count_1h == 1
    assert replay.last_seen == now - timedelta(minutes=5)


async def test_five_firing_episodes_count_five_and_their_re_sends_count_once(
    store: AnomalyStore, now: datetime
) -> None:
    fingerprint = "5c7e9b1a2d3f4e60"
    created = now - timedelta(hours=2)
    starts = [created + timedelta(minutes=20 * episode) for episode in range(5)]
    held: list[tuple[str | None, datetime]] = []
    snapshots = []
    for starts_at in starts:
        held.append((fingerprint, starts_at))  # the intake appends the new episode's signal
        recorded = await store.record_occurrences(
            TENANT, KEY, SIGNATURE, incident_occurrences("incident-uid-1", created, held), now=now
        )
        assert recorded.counted == 1, "each pass counts its one new episode and nothing it counted before"
        snapshots.append(recorded.snapshot)
    assert [(s.count_24h, s.escalation_level) for s in snapshots] == [
        (1, None), (2, None), (3, EscalationLevel.REPEAT), (4, EscalationLevel.REPEAT), (5, EscalationLevel.ESCALATE),
    ]
    assert snapshots[-1].last_seen == starts[-1]

    # Alertmanager re-sends every episode (repeat_interval, a retried webhook), resolutions
    # arrive, the pass is retried after a lost status write, the operator restarts.
    resent = [*held, *held, *((fingerprint, starts_at.astimezone(timezone(timedelta(hours=2)))) for starts_at in starts)]
    for _ in range(3):
        again = await store.record_occurrences(
            TENANT, KEY, SIGNATURE, incident_occurrences("incident-uid-1", created, resent), now=now
        )
        assert (again.counted, again.already_counted) == (0, 5)
    assert (again.snapshot.count_24h, again.snapshot.escalation_level) == (5, EscalationLevel.ESCALATE)
    # The same episodes seen through the older one-occurrence API are the same ids too.
    single = await store.record_occurrence(TENANT, KEY, SIGNATURE, episode_id(fingerprint, starts[3]), starts[3], now=now)
    assert single.count_24h == 5


async def test_a_record_costs_exactly_one_round_trip(clean_redis_url: str, now: datetime) -> None:
    store_connection_name = "anomaly-store-under-test"
    store_client = redis.asyncio.Redis.from_url(clean_redis_url, client_name=store_connection_name)
    admin = redis.asyncio.Redis.from_url(clean_redis_url)
    store = AnomalyStore(store_client, DEFAULT_THRESHOLDS)
    # Connect and load the script first: a server that has never seen the script answers the
    # first EVALSHA with NOSCRIPT and redis-py loads it (a one-off per server, not per record).
    await store.record_occurrence(TENANT, KEY, SIGNATURE, "warm-up", now, now=now)
    saved_config = await admin.config_get("slowlog-*")
    try:
        # With a zero threshold the slow log lists every command with the connection that sent it;
        # commands run inside a script are listed under Lua's own pseudo client.
        await admin.config_set("slowlog-log-slower-than", 0)
        await admin.config_set("slowlog-max-len", 1024)
        await admin.slowlog_reset()
        before = await admin.info("all")

        # An Incident with its four further firing episodes: still one round trip.
        await store.record_occurrences(
            TENANT, KEY, SIGNATURE, incident_occurrences("measured", now, [("fp", now + timedelta(minutes=minute))
                                                                           for minute in range(5)]), now=now,
        )

        after = await admin.info("all")
        entries = await admin.slowlog_get(1024)
    finally:
        for name, value in saved_config.items():
            await admin.config_set(str(name), str(value))
        await admin.aclose()
        await store_client.aclose()

    sent_by_store = [entry for entry in entries if entry["client_name"] == store_connection_name.encode()]
    run_inside_script = [entry for entry in entries if entry["client_address"] == b"?:0"]
    assert [entry["command"].split()[0].upper() for entry in sent_by_store] == [b"EVALSHA"]
    assert len(run_inside_script) > 5  # the script did the work server-side
    assert after["cmdstat_evalsha"]["calls"] - before["cmdstat_evalsha"]["calls"] == 1
    # Every command processed between the two INFO calls: the first INFO itself, the store's
    # single EVALSHA and the commands that script ran. Nothing else reached the server.
    processed = after["total_commands_processed"] - before["total_commands_processed"]
    assert processed == 1 + 1 + len(run_inside_script)


# --- repairs -----------------------------------------------------------------------------------


async def test_repair_history_keeps_the_last_100_outcomes_per_action_and_overall(
    store: AnomalyStore, client: redis.asyncio.Redis, now: datetime
) -> None:
    keys = AnomalyKeys.of(TENANT, KEY)
    for index in range(5):
        await store.record_repair_attempt(TENANT, KEY, ActionType.SCALE, True, f"scale-{index}", now)
    # 30 early successes followed by 100 failures: only the failures stay in the window.
    for index in range(130):
        await store.record_repair_attempt(
            TENANT,
            KEY,
            ActionType.ROLLOUT_RESTART,
            index < 30,
            f"restart-{index}",
            now + timedelta(seconds=index),
        )

    stats = await store.action_stats(TENANT, KEY)
    assert (stats[ActionType.ROLLOUT_RESTART].attempts, stats[ActionType.ROLLOUT_RESTART].successes) == (
        100,
        0,
    )
    # Per action: Scale's outcomes survive although the shared list has moved past them.
    assert (stats[ActionType.SCALE].attempts, stats[ActionType.SCALE].successes) == (5, 5)
    assert await client.llen(keys.repair_history) == KEPT_REPAIR_OUTCOMES
    newest = json.loads(as_text(await client.lindex(keys.repair_history, 0)))
    assert newest["attempt_id"] == "restart-129" and newest["success"] is False
    assert (await store.snapshot(TENANT, KEY, now=now)).auto_repair_count == 135


async def test_a_record_brings_the_outcomes_per_action_along(store: AnomalyStore, now: datetime) -> None:
    assert (await record_at(store, "inc-1", now)).action_stats == {}
    for index, success in enumerate([True, False, False]):
        await store.record_repair_attempt(TENANT, KEY, ActionType.SCALE, success, f"scale-{index}", now)
    await store.record_repair_attempt(TENANT, KEY, ActionType.ROLLOUT_UNDO, True, "undo-0", now)

    recorded = await record_at(store, "inc-2", now)

    assert recorded.action_stats == await store.action_stats(TENANT, KEY)
    assert recorded.action_stats is not None
    assert (recorded.action_stats[ActionType.SCALE].attempts, recorded.action_stats[ActionType.SCALE].successes) == (
        3, 1,
    )
    assert recorded.action_stats[ActionType.ROLLOUT_UNDO].successes == 1
    # A plain snapshot reads counts only: it says so rather than claim there are no outcomes.
    assert (await store.snapshot(TENANT, KEY, now=now)).action_stats is None


async def test_a_repair_attempt_is_counted_once_per_attempt_id(store: AnomalyStore, now: datetime) -> None:
    assert (
        await store.record_repair_attempt(TENANT, KEY, ActionType.ROLLOUT_UNDO, False, "attempt-1", now)
        is True
    )
    assert (
        await store.record_repair_attempt(TENANT, KEY, ActionType.ROLLOUT_UNDO, False, "attempt-1", now)
        is False
    )

    stats = await store.action_stats(TENANT, KEY)
    assert stats[ActionType.ROLLOUT_UNDO].attempts == 1
    assert (await store.snapshot(TENANT, KEY, now=now)).auto_repair_count == 1


async def test_success_rates_drive_the_skip_policy(store: AnomalyStore, now: datetime) -> None:
    outcomes = {
        ActionType.ROLLOUT_RESTART: [True, False, False, False, False, False],  # 1 of 6: skip
        ActionType.SCALE: [True, False, False, False, False],  # 1 of 5 = 20%: keep
        ActionType.ROLLOUT_UNDO: [False],  # a single failure is not enough to skip
    }
    for action, results in outcomes.items():
        for index, success in enumerate(results):
            await store.record_repair_attempt(TENANT, KEY, action, success, f"{action}-{index}", now)

    stats = await store.action_stats(TENANT, KEY)
    assert stats[ActionType.ROLLOUT_RESTART].success_rate == pytest.approx(1 / 6)
    assert stats[ActionType.SCALE].success_rate == pytest.approx(0.2)
    assert {action: should_skip_action(stats[action]) for action in outcomes} == {
        ActionType.ROLLOUT_RESTART: True,
        ActionType.SCALE: False,
        ActionType.ROLLOUT_UNDO: False,
    }


async def test_action_stats_of_an_unknown_anomaly_are_empty(store: AnomalyStore) -> None:
    assert await store.action_stats(TENANT, KEY) == {}


# --- dispositions and permanent fix -----------------------------------------------------------


async def test_dispositions_are_counted_once_per_id(
    store: AnomalyStore, client: redis.asyncio.Redis, now: datetime
) -> None:
    assert await store.record_disposition(TENANT, KEY, Disposition.AUTO_REPAIR, "run-1") is True
    assert await store.record_disposition(TENANT, KEY, Disposition.AUTO_REPAIR, "run-1") is False
    await store.record_disposition(TENANT, KEY, Disposition.HUMAN_APPROVED, "run-2")
    await store.record_disposition(TENANT, KEY, "manual_resolved", "incident-3")

    snapshot = await store.snapshot(TENANT, KEY, now=now)
    assert snapshot.dispositions == {
        "auto_repair": 1,
        "human_approved": 1,
        "manual_resolved": 1,
        "cold_start_trust": 0,
        "timeout_ignored": 0,
    }
    assert snapshot.total_dispositions == 3
    # The older layout's running total is kept for its readers.
    assert await client.hget(AnomalyKeys.of(TENANT, KEY).dispositions, "total") == b"3"


async def test_an_unknown_disposition_is_refused_and_nothing_is_written(
    store: AnomalyStore, client: redis.asyncio.Redis
) -> None:
    with pytest.raises(InvalidInputError) as raised:
        await store.record_disposition(TENANT, KEY, "ignored_forever", "run-1")

    assert raised.value.field == "disposition"
    message = str(raised.value)
    assert "'ignored_forever'" in message
    assert all(disposition.value in message for disposition in Disposition)
    assert await client.dbsize() == 0


async def test_a_permanent_fix_is_flagged_for_about_90_days(
    store: AnomalyStore, client: redis.asyncio.Redis, now: datetime
) -> None:
    keys = AnomalyKeys.of(TENANT, KEY)
    assert (await record_at(store, "inc-1", now)).permanent_fix_applied is False

    await store.mark_permanent_fix(TENANT, KEY, description="memory limit raised to 1Gi", at=now)

    assert_ttl_close_to(await client.ttl(keys.permanent_fix), PERMANENT_FIX_TTL)
    assert (await store.snapshot(TENANT, KEY, now=now)).permanent_fix_applied is True
    assert (await record_at(store, "inc-2", now)).permanent_fix_applied is True
    # Recording afterwards must not cut the fix details short to the 35-day TTL.
    assert_ttl_close_to(await client.ttl(keys.metadata), PERMANENT_FIX_TTL)
    metadata = await client.hgetall(keys.metadata)
    assert metadata[b"permanent_fix_applied"] == b"true"
    assert metadata[b"permanent_fix_description"] == b"memory limit raised to 1Gi"


# --- tenants and the older layout ---------------------------------------------------------------


async def test_tenants_are_isolated(store: AnomalyStore, client: redis.asyncio.Redis, now: datetime) -> None:
    for index in range(3):
        await store.record_occurrence("team-a", KEY, SIGNATURE, f"inc-{index}", now, now=now)
    await store.record_occurrence("team-b", KEY, SIGNATURE, "inc-0", now, now=now)
    await store.record_repair_attempt("team-a", KEY, ActionType.SCALE, False, "attempt-1", now)
    await store.record_disposition("team-a", KEY, Disposition.AUTO_REPAIR, "run-1")
    await store.mark_permanent_fix("team-a", KEY)

    team_a = await store.snapshot("team-a", KEY, now=now)
    team_b = await store.snapshot("team-b", KEY, now=now)
    assert (team_a.count_1h, team_a.escalation_level) == (3, EscalationLevel.REPEAT)
    assert (team_b.count_1h, team_b.escalation_level) == (1, None)
    assert (team_b.auto_repair_count, team_b.permanent_fix_applied, team_b.total_dispositions) == (
        0,
        False,
        0,
    )
    assert await store.action_stats("team-b", KEY) == {}
    all_keys = [as_text(key) for key in await client.keys("*")]
    assert all(key.startswith(("team-a:anomaly:", "team-b:anomaly:")) for key in all_keys)


async def test_data_written_by_the_older_system_is_read_and_extended(
    store: AnomalyStore, client: redis.asyncio.Redis, now: datetime
) -> None:
    tenant = "awoooi"
    keys = AnomalyKeys.of(tenant, KEY)
    # What the older counter wrote: the timestamp string as member and score, plain counters,
    # history entries without attempt ids, a naive local first_seen.
    older_occurrences = [now - timedelta(minutes=30), now - timedelta(hours=5), now - timedelta(days=3)]
    await client.zadd(
        keys.timeline, {str(moment.timestamp()): moment.timestamp() for moment in older_occurrences}
    )
    await client.set(keys.repair_count, "2")
    await client.set(keys.permanent_fix, "1", ex=int(PERMANENT_FIX_TTL.total_seconds()))
    await client.hset(keys.dispositions, mapping={"auto_repair": 1, "human_approved": 1, "total": 2})
    for success in (False, False):
        await client.lpush(
            keys.repair_history,
            json.dumps({"action": "restart_pod", "success": success, "timestamp": "2026-03-29T10:00:00"}),
        )
    await client.hset(
        keys.metadata, mapping={"signature": json.dumps(SIGNATURE), "first_seen": "2026-03-29T10:00:00"}
    )

    snapshot = await store.snapshot(tenant, KEY, now=now)
    assert (snapshot.count_1h, snapshot.count_24h, snapshot.count_7d, snapshot.count_30d) == (1, 2, 3, 3)
    assert snapshot.first_seen == datetime.fromtimestamp(older_occurrences[-1].timestamp(), tz=UTC)
    assert (snapshot.auto_repair_count, snapshot.permanent_fix_applied) == (2, True)
    assert (snapshot.dispositions["auto_repair"], snapshot.dispositions["human_approved"]) == (1, 1)

    # New records join the same sorted set, next to the older members.
    extended = await store.record_occurrence(tenant, KEY, SIGNATURE, "incident-uid-9", now, now=now)
    assert (extended.count_1h, extended.count_24h, extended.escalation_level) == (
        2,
        3,
        EscalationLevel.REPEAT,
    )
    assert await client.zcard(keys.timeline) == 4
    assert (await client.hget(keys.metadata, "first_seen")) == b"2026-03-29T10:00:00"

    # Older repair outcomes still steer the skip policy, alongside new ones.
    await store.record_repair_attempt(tenant, KEY, "restart_pod", True, "attempt-1", now)
    stats = await store.action_stats(tenant, KEY)
    assert (stats["restart_pod"].attempts, stats["restart_pod"].successes) == (3, 1)
    await store.record_disposition(tenant, KEY, Disposition.AUTO_REPAIR, "run-1")
    assert await client.hget(keys.dispositions, "total") == b"3"


async def test_a_client_decoding_responses_works_too(clean_redis_url: str, now: datetime) -> None:
    decoding_client = redis.asyncio.Redis.from_url(clean_redis_url, decode_responses=True)
    try:
        store = AnomalyStore(decoding_client, DEFAULT_THRESHOLDS)
        snapshot = await store.record_occurrence(TENANT, KEY, SIGNATURE, "inc-1", now, now=now)
        await store.record_repair_attempt(TENANT, KEY, ActionType.SCALE, True, "attempt-1", now)
        await store.record_disposition(TENANT, KEY, Disposition.COLD_START_TRUST, "run-1")
        assert snapshot.last_seen == now
        assert (await store.action_stats(TENANT, KEY))[ActionType.SCALE].successes == 1
        assert (await store.snapshot(TENANT, KEY, now=now)).dispositions["cold_start_trust"] == 1
    finally:
        await decoding_client.aclose()


# --- input validation ---------------------------------------------------------------------------


async def test_naive_datetimes_are_refused(store: AnomalyStore, now: datetime) -> None:
    with pytest.raises(InvalidInputError) as raised:
        await store.record_occurrence(TENANT, KEY, SIGNATURE, "inc-1", now.replace(tzinfo=None))
    assert raised.value.field == "occurred_at"


@pytest.mark.parametrize(("tenant", "key", "field"), [("", KEY, "tenant"), (TENANT, "a b", "key")])
async def test_blank_tenants_and_keys_are_refused(
    store: AnomalyStore, tenant: str, key: str, field: str
) -> None:
    with pytest.raises(InvalidInputError) as raised:
        await store.snapshot(tenant, key)
    assert raised.value.field == field


# --- degraded -------------------------------------------------------------------------------------


def port_nobody_listens_on() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_unreachable_redis_raises_and_the_delayed_record_counts_once(
    store: AnomalyStore, now: datetime
) -> None:
    occurred_at = now - timedelta(minutes=5)
    unreachable = connect_redis(f"redis://127.0.0.1:{port_nobody_listens_on()}/0", timeout_seconds=0.5)
    try:
        degraded_store = AnomalyStore(unreachable, DEFAULT_THRESHOLDS)
        with pytest.raises(RedisUnavailableError) as raised:
            await degraded_store.record_occurrence(
                TENANT, KEY, SIGNATURE, "incident-uid-1", occurred_at, now=now
            )
        assert isinstance(raised.value.__cause__, redis.exceptions.ConnectionError)
        with pytest.raises(RedisUnavailableError):
            await degraded_store.snapshot(TENANT, KEY, now=now)
        with pytest.raises(RedisUnavailableError):
            await degraded_store.action_stats(TENANT, KEY)
    finally:
        await unreachable.aclose()

    # Redis is back: the operator records the occurrence with its original time, and again after
    # a restart. It counts once, in the window of when it happened.
    later = now + timedelta(minutes=20)
    recorded = await store.record_occurrence(TENANT, KEY, SIGNATURE, "incident-uid-1", occurred_at, now=later)
    replayed = await store.record_occurrence(TENANT, KEY, SIGNATURE, "incident-uid-1", occurred_at, now=later)
    assert recorded.count_1h == replayed.count_1h == 1
    assert replayed.last_seen == occurred_at


async def test_a_stalled_redis_times_out_and_a_later_record_counts_once(
    clean_redis_url: str, store: AnomalyStore, now: datetime
) -> None:
    impatient = connect_redis(clean_redis_url, timeout_seconds=0.2)
    admin = redis.asyncio.Redis.from_url(clean_redis_url)
    try:
        stalled_store = AnomalyStore(impatient, DEFAULT_THRESHOLDS)
        await stalled_store.record_occurrence(TENANT, "warmupwarmupwarm", SIGNATURE, "warm-up", now, now=now)
        # Writes (and scripts) stall for up to 10 s, well past the client's patience; the command
        # may or may not run once the pause ends, and either way it must count once in the end.
        await admin.client_pause(10_000, all=False)
        try:
            with pytest.raises(RedisUnavailableError) as raised:
                await stalled_store.record_occurrence(TENANT, KEY, SIGNATURE, "incident-uid-1", now, now=now)
        finally:
            await admin.client_unpause()
        assert isinstance(raised.value.__cause__, redis.exceptions.TimeoutError)
    finally:
        await impatient.aclose()
        await admin.aclose()

    recorded = await store.record_occurrence(TENANT, KEY, SIGNATURE, "incident-uid-1", now, now=now)
    replayed = await store.record_occurrence(TENANT, KEY, SIGNATURE, "incident-uid-1", now, now=now)
    assert recorded.count_1h == replayed.count_1h == 1
