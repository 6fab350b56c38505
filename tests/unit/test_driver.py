"""The loop that brings Incidents and Runs back for another pass (flywheel.controllers.driver).

What an operator would notice if it were wrong: a Run whose rollout is being polled never
looked at again, a deleted Run still acted on, two passes over one Run at once (an action
applied twice), a paused replica still acting, one failing Run stopping the others, a
failing object hammered without backoff, failures the metrics do not see.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Mapping
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from flywheel.controllers import driver as driver_module
from flywheel.controllers.driver import (
    MAX_RETRY_SECONDS,
    ObjectDriver,
    PassDeferred,
    PassStalled,
    backoff_delay,
)
from flywheel.metrics.runtime import DriverCollector

pytestmark = pytest.mark.unit


def body(uid: str, version: int = 1) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": f"run-{uid}", "namespace": "ns"}, "spec": {"version": version}}


class Passes:
    """Records every pass; answers with the delay it is told to."""

    def __init__(self, delay: float | None = None, duration: float = 0.0) -> None:
        self.delay = delay
        self.duration = duration
        self.seen: list[tuple[str, int]] = []
        self.running = 0
        self.most_at_once = 0
        self.fail_first: set[str] = set()

    async def __call__(self, seen: Mapping[str, Any], slot: dict[str, Any]) -> float | None:
        uid = seen["metadata"]["uid"]
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.seen.append((uid, seen["spec"]["version"]))
            slot["passes"] = slot.get("passes", 0) + 1
            if self.duration:
                await asyncio.sleep(self.duration)
            if uid in self.fail_first:
                self.fail_first.discard(uid)
                raise RuntimeError("boom")
            return self.delay
        finally:
            self.running -= 1

    def count(self, uid: str) -> int:
        return sum(1 for seen_uid, _ in self.seen if seen_uid == uid)


async def always_active() -> bool:
    return True


def refresh_from(stored: dict[str, dict[str, Any]]) -> Any:
    """Reads "the API server": ``stored`` by uid (absent: deleted)."""

    async def refresh(seen: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return stored.get(seen["metadata"]["uid"])

    return refresh


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_pass_that_asks_to_come_back_is_driven_again_by_the_loop() -> None:
    passes = Passes(delay=0.05)
    driver = ObjectDriver("runs", passes, is_active=always_active, refresh=refresh_from({}))
    driver.start()
    try:
        await driver.drive(body("a"))
        await wait_until(lambda: passes.count("a") >= 3)
    finally:
        await driver.stop()


async def test_a_pass_that_is_done_waits_for_the_next_watch_event() -> None:
    passes = Passes(delay=None)
    driver = ObjectDriver("runs", passes, is_active=always_active, refresh=refresh_from({}))
    driver.start()
    try:
        await driver.drive(body("a"))
        await asyncio.sleep(0.3)
        assert passes.count("a") == 1
        await driver.drive(body("a", version=2))
        assert passes.seen == [("a", 1), ("a", 2)]
    finally:
        await driver.stop()


async def test_the_loop_uses_the_latest_observed_body() -> None:
    passes = Passes(delay=0.1)
    driver = ObjectDriver("runs", passes, is_active=always_active, refresh=refresh_from({}))
    driver.start()
    try:
        await driver.drive(body("a", version=1))
        assert driver.observe(body("a", version=7))
        assert not driver.observe(body("untracked"))
        await wait_until(lambda: passes.count("a") >= 2)
        assert passes.seen[1] == ("a", 7)
    finally:
        await driver.stop()


async def test_a_forgotten_object_gets_no_more_passes() -> None:
    passes = Passes(delay=0.05)
    driver = ObjectDriver("runs", passes, is_active=always_active, refresh=refresh_from({}))
    driver.start()
    try:
        await driver.drive(body("a"))
        driver.forget("a")
        assert not driver.tracks("a")
        await asyncio.sleep(0.3)
        assert passes.count("a") == 1
    finally:
        await driver.stop()


async def test_passes_over_one_object_never_overlap_and_keep_their_slot() -> None:
    passes = Passes(delay=0.0, duration=0.05)
    driver = ObjectDriver("runs", passes, is_active=always_active, refresh=refresh_from({}))
    driver.start()
    try:
        await asyncio.gather(*(driver.drive(body("a", version=n)) for n in range(5)))
        await wait_until(lambda: passes.count("a") >= 8)
        assert passes.most_at_once == 1
    finally:
        await driver.stop()


async def test_different_objects_are_driven_side_by_side() -> None:
    passes = Passes(delay=None, duration=0.2)
    driver = ObjectDriver("runs", passes, is_active=always_active, refresh=refresh_from({}))
    await asyncio.gather(*(driver.drive(body(str(n))) for n in range(4)))
    assert passes.most_at_once == 4


async def test_a_failing_pass_is_retried_and_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver_module, "FAILED_PASS_RETRY_SECONDS", 0.05)
    passes = Passes(delay=None)
    passes.fail_first = {"bad"}
    driver = ObjectDriver("runs", passes, is_active=always_active, refresh=refresh_from({}))
    driver.start()
    try:
        await driver.drive(body("bad"))
        await driver.drive(body("good"))
        await wait_until(lambda: passes.count("bad") == 2)
        await asyncio.sleep(0.2)
        assert (passes.count("bad"), passes.count("good")) == (2, 1)
    finally:
        await driver.stop()


async def test_a_paused_replica_drives_nothing_and_reads_objects_again_when_it_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(driver_module, "ACTIVITY_CHECK_SECONDS", 0.05)
    active = True

    async def is_active() -> bool:
        return active

    # Meanwhile the other replica moved "a" on (version 9) and "b" was deleted.
    stored = {"a": body("a", version=9)}
    passes = Passes(delay=0.05)
    driver = ObjectDriver("runs", passes, is_active=is_active, refresh=refresh_from(stored))
    driver.start()
    try:
        await driver.drive(body("a"))
        await driver.drive(body("b"))
        await wait_until(lambda: passes.count("a") >= 2)
        active = False
        await asyncio.sleep(0.2)
        count = passes.count("a")
        await asyncio.sleep(0.3)
        assert passes.count("a") == count, "a paused replica drives nothing"
        active = True
        await wait_until(lambda: passes.count("a") > count)
        versions_of_a = [version for uid, version in passes.seen if uid == "a"]
        assert versions_of_a[count] == 9, "the first pass after the pause reads the object again"
        await wait_until(lambda: not driver.tracks("b"))
    finally:
        await driver.stop()


async def test_an_object_forgotten_during_its_pass_and_seen_again_is_not_driven_twice_at_once() -> None:
    passes = Passes(delay=None, duration=0.2)
    driver = ObjectDriver("runs", passes, is_active=always_active, refresh=refresh_from({}))
    first = asyncio.create_task(driver.drive(body("a", version=1)))
    await asyncio.sleep(0.05)
    driver.forget("a")  # its watch event said "done" while the pass was still running
    assert driver.tracks("a"), "kept until the running pass ends"
    await driver.drive(body("a", version=2))  # then its spec changed: a new pass, after the first
    await first
    assert passes.seen == [("a", 1), ("a", 2)] and passes.most_at_once == 1
    driver.forget("a")
    assert not driver.tracks("a")


async def test_an_object_waiting_for_its_next_watch_event_does_not_keep_its_body() -> None:
    class WeakBody(dict[str, Any]):
        """A dict that a weak reference can point to."""

    passes = Passes(delay=None)
    driver = ObjectDriver("runs", passes, is_active=always_active, refresh=refresh_from({}))
    seen = WeakBody(body("a"))
    kept = weakref.ref(seen)
    await driver.drive(seen)
    del seen
    gc.collect()
    assert driver.tracks("a"), "still tracked until a watch event shows it done"
    assert kept() is None, "10,000 bodies kept this way were most of the operator's memory"


async def test_a_pass_queued_behind_one_that_ended_done_reads_the_object_again() -> None:
    """The loop's due pass waited for the lock while a watch event's pass ended done.

    The finished pass left only the object's identity behind (it keeps no body while it waits
    for a watch event); the queued pass must read the object again, not run on the identity (a
    Run pass then failed on the missing creationTimestamp, again and again, in the storm bench).
    """
    stored = {"a": body("a", version=3)}
    seen: list[int | None] = []

    async def run_pass(passed: Mapping[str, Any], slot: dict[str, Any]) -> float | None:
        seen.append((passed.get("spec") or {}).get("version"))
        version = passed["spec"]["version"]
        if version == 1:
            return 0.05  # the loop brings it back soon
        if version == 2:
            await asyncio.sleep(0.3)  # still running when that pass falls due
        return None

    driver = ObjectDriver("runs", run_pass, is_active=always_active, refresh=refresh_from(stored))
    driver.start()
    try:
        await driver.drive(body("a", version=1))
        await driver.drive(body("a", version=2))
        await wait_until(lambda: len(seen) >= 3)
        await asyncio.sleep(0.1)
        assert seen == [1, 2, 3], "the queued pass ran over a fresh read, once"
        assert driver.stats.retries == 0
    finally:
        await driver.stop()


# --------------------------------------------------------------------------- backoff and stats


def test_backoff_doubles_from_the_pass_s_own_delay_up_to_the_cap() -> None:
    assert [backoff_delay(5.0, failures) for failures in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert backoff_delay(5.0, 10_000) == MAX_RETRY_SECONDS


@given(st.floats(min_value=0, max_value=600), st.integers(min_value=1, max_value=10_000))
def test_backoff_never_shrinks_and_never_passes_the_cap(first: float, failures: int) -> None:
    delay = backoff_delay(first, failures)
    assert 0 <= delay <= MAX_RETRY_SECONDS
    assert backoff_delay(first, failures + 1) >= delay


class Scripted:
    """A pass that raises what it is told to, in order, then succeeds."""

    def __init__(self, *outcomes: BaseException) -> None:
        self.outcomes = list(outcomes)

    async def __call__(self, seen: Mapping[str, Any], slot: dict[str, Any]) -> float | None:
        if self.outcomes:
            raise self.outcomes.pop(0)
        return None


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_failed_passes_back_off_are_counted_by_reason_and_reset_by_a_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(driver_module, "FAILED_PASS_RETRY_SECONDS", 0.01)
    passes = Scripted(PassDeferred("Http403", 0.01), PassDeferred("Http403", 0.01), RuntimeError("boom"))
    driver = ObjectDriver("incidents", passes, is_active=always_active, refresh=refresh_from({}))
    registry = CollectorRegistry()
    registry.register(DriverCollector(lambda: [driver]))
    await driver.drive(body("bad"))
    assert driver.failing() == 1
    assert sample(registry, "flywheel_reconcile_failing_objects", kind="incidents") == 1
    driver.start()
    try:
        await wait_until(lambda: driver.stats.passes["succeeded"] == 1)
    finally:
        await driver.stop()
    assert driver.failing() == 0
    assert sample(registry, "flywheel_reconcile_passes_total", kind="incidents", result="deferred") == 2
    assert sample(registry, "flywheel_reconcile_passes_total", kind="incidents", result="error") == 1
    assert sample(registry, "flywheel_reconcile_passes_total", kind="incidents", result="succeeded") == 1
    assert sample(registry, "flywheel_reconcile_pass_errors_total", kind="incidents", reason="Http403") == 2
    assert sample(registry, "flywheel_reconcile_pass_errors_total", kind="incidents", reason="RuntimeError") == 1
    assert sample(registry, "flywheel_reconcile_retries_total", kind="incidents") == 3
    assert sample(registry, "flywheel_reconcile_pass_duration_seconds_count", kind="incidents") == 4
    assert sample(registry, "flywheel_reconcile_pass_duration_seconds_bucket", kind="incidents", le="+Inf") == 4
    assert sample(registry, "flywheel_reconcile_failing_objects", kind="incidents") == 0


async def test_consecutive_failures_wait_longer_each_time() -> None:
    passes = Scripted(*(PassDeferred("StoreUnavailableError", 1.0) for _ in range(3)))
    driver = ObjectDriver("runs", passes, is_active=always_active, refresh=refresh_from({}))
    loop = asyncio.get_running_loop()
    waits = []
    for _ in range(3):
        before = loop.time()
        await driver.drive(body("flaky"))
        waits.append(round(driver._tracked["flaky"].due - before))
    assert waits == [1, 2, 4]


async def test_a_stalled_pass_waits_for_the_next_watch_event() -> None:
    driver = ObjectDriver("runs", Scripted(PassStalled("InvalidWrite")), is_active=always_active,
                          refresh=refresh_from({}))
    await driver.drive(body("stuck"))
    assert driver.failing() == 0 and driver.queue_depth() == 0
    assert driver.stats.passes["stalled"] == 1 and driver.stats.errors["InvalidWrite"] == 1


async def test_every_line_a_pass_logs_names_its_object_and_nothing_leaks_to_the_next_pass() -> None:
    contexts: list[dict[str, Any]] = []

    async def logging_pass(seen: Mapping[str, Any], slot: dict[str, Any]) -> float | None:
        contexts.append(dict(structlog.contextvars.get_contextvars()))
        return None

    driver = ObjectDriver("runs", logging_pass, is_active=always_active, refresh=refresh_from({}))
    traced = body("a")
    traced["spec"]["traceId"] = "4bf92f3577b34da6a3ce929d0e0e4736"
    await driver.drive(traced)
    await driver.drive(body("b"))

    assert contexts == [
        {"kind": "runs", "namespace": "ns", "name": "run-a", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
        {"kind": "runs", "namespace": "ns", "name": "run-b"},
    ]
    assert structlog.contextvars.get_contextvars() == {}


async def test_a_pass_that_lost_a_write_race_is_tried_again_over_a_fresh_read() -> None:
    seen: list[int] = []

    async def run_pass(current: Mapping[str, Any], slot: dict[str, Any]) -> float | None:
        seen.append(current["spec"]["version"])
        if current["spec"]["version"] == 1:
            raise PassDeferred("Conflict", 0.01, reread=True)
        return None

    stored = {"raced": body("raced", version=2)}
    driver = ObjectDriver("incidents", run_pass, is_active=always_active, refresh=refresh_from(stored))
    driver.start()
    try:
        await driver.drive(body("raced", version=1))
        await wait_until(lambda: len(seen) >= 2)
        assert seen == [1, 2], "the retry works from the object as stored now, not the body that lost"
        assert driver.stats.errors["Conflict"] == 1
    finally:
        await driver.stop()


async def test_a_deferred_pass_without_a_race_keeps_its_body() -> None:
    seen: list[int] = []

    async def run_pass(current: Mapping[str, Any], slot: dict[str, Any]) -> float | None:
        seen.append(current["spec"]["version"])
        if len(seen) == 1:
            raise PassDeferred("StoreUnavailableError", 0.01)
        return None

    driver = ObjectDriver("incidents", run_pass, is_active=always_active, refresh=refresh_from({}))
    driver.start()
    try:
        await driver.drive(body("down", version=1))
        await wait_until(lambda: len(seen) >= 2)
        assert seen == [1, 1], "no read (it would find nothing here and forget the object)"
    finally:
        await driver.stop()
