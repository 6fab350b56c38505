"""One loop that brings objects back for another pass, instead of a Kopf timer per object.

A Kopf timer is a task per object, and Kopf guards every object that has one with a finalizer
(two more writes per object, each echoed back as a watch event). In an alert storm that cost
more than the passes themselves (``bench/e2e_throughput.py``). Here watch events still start
passes at once (the handlers decide when); this loop only brings back the objects whose last
pass asked for it — a rollout to poll, a deadline to keep, a store that was down.

Per object, passes never overlap: the handler's pass and the loop's pass take the same lock.
A pass that fails — it raises :class:`PassDeferred` (a store was unavailable) or anything
unexpected — is tried again after an exponential backoff per object (doubling from the
pass's own delay up to :data:`MAX_RETRY_SECONDS`), reset by the next pass that succeeds. Every
pass is counted by result, its duration measured and its failures counted by reason
(:class:`DriverStats`), for the metrics to publish.
While the operator is paused by Kopf's peering (another replica is active), the loop drives
nothing; what it tracked may change meanwhile under the other replica, so after a pause each
object is read again before its next pass (unless a watch event brought it first).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from flywheel.errors import FlywheelError
from flywheel.logs import get_logger
from flywheel.retrying import exponential_delay

log = get_logger(__name__)

# A pass gets the object's latest body and its slot (state that lives as long as the object is
# tracked, e.g. what the last pass wrote). It answers in how many seconds it wants to be called
# again, or None to wait for the next watch event.
PassFunction = Callable[[Mapping[str, Any], dict[str, Any]], Awaitable[float | None]]
IsActive = Callable[[], Awaitable[bool]]
# Reads the object as stored now; None when it no longer exists.
Refresh = Callable[[Mapping[str, Any]], Awaitable[Mapping[str, Any] | None]]

# How long a pass that raised something unexpected first waits before it is tried again.
FAILED_PASS_RETRY_SECONDS = 5.0
# No failing object waits longer than this for its next try.
MAX_RETRY_SECONDS = 300.0
# Pass durations, seconds (the upper bounds of the histogram's buckets).
DURATION_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# What a pass ended with: done (or asked to come back), deferred by a store, stalled on a
# refused write, or an unexpected error.
PASS_RESULTS: Final = ("succeeded", "deferred", "stalled", "error")


class PassDeferred(FlywheelError):
    """Raised by a pass that could not finish for a transient reason: try again after ``delay``.

    ``reread``: the pass worked from a body that is out of date (its write lost a race, 409),
    so the object is read again before the next try.
    """

    def __init__(self, reason: str, delay: float, *, reread: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay
        self.reread = reread


class PassStalled(FlywheelError):
    """Raised by a pass whose write was refused for good (reported already): no retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def backoff_delay(first: float, failures: int, cap: float = MAX_RETRY_SECONDS) -> float:
    """``first`` doubled for each consecutive failure after the first, at most ``cap``.

    The formula of :class:`flywheel.retrying.Backoff`, without tenacity's loop around it: here
    every object's next try is a deadline in one shared loop, not a sleep in a retry loop.
    """
    return exponential_delay(first, failures, cap)


@dataclass
class DriverStats:
    """What the passes of one driver did since the process started (for the metrics)."""

    results: tuple[str, ...] = PASS_RESULTS
    bounds: tuple[float, ...] = DURATION_BUCKETS
    passes: Counter[str] = field(default_factory=Counter)  # by result
    errors: Counter[str] = field(default_factory=Counter)  # by reason
    retries: int = 0
    duration_buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    duration_sum: float = 0.0
    duration_count: int = 0

    def record(self, result: str, seconds: float, reason: str | None = None) -> None:
        self.passes[result] += 1
        if reason is not None:
            self.errors[reason] += 1
        self.duration_sum += seconds
        self.duration_count += 1
        for index, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.duration_buckets[index] += 1


# How often the loop asks whether this replica is the active peer, at most.
ACTIVITY_CHECK_SECONDS = 2.0


@dataclass(eq=False)
class _Tracked:
    body: Mapping[str, Any]
    due: float = math.inf  # the loop's clock; inf: only a watch event brings it back
    slot: dict[str, Any] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stale: bool = False  # the body predates a pause: read it again before the next pass
    forgotten: bool = False  # forgotten during a pass: dropped when the pass ends
    failures: int = 0  # consecutive failed passes (backoff); 0 after one that succeeds


def _uid(body: Mapping[str, Any]) -> str:
    return str(body["metadata"]["uid"])


def _log_context(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    context: dict[str, Any] = {"kind": kind, "namespace": meta.get("namespace"), "name": meta.get("name")}
    trace = (body.get("spec") or {}).get("traceId")
    if trace:
        context["trace_id"] = trace
    return context


def _identity(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """What a tracked object needs of its body while it waits for a watch event: who it is."""
    meta = body.get("metadata") or {}
    return {"metadata": {key: meta[key] for key in ("uid", "name", "namespace") if key in meta}}


Find = Callable[[str, str, str], Awaitable[Mapping[str, Any] | None]]


def reread(find: Find, plural: str) -> Refresh:
    """A :data:`Refresh` that reads the object by name; a new object under the same name is not it."""

    async def refresh(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
        meta = body["metadata"]
        found = await find(plural, meta["namespace"], meta["name"])
        if found is None or found["metadata"]["uid"] != meta["uid"]:
            return None
        return found

    return refresh


class ObjectDriver:
    """Passes over one kind of object: now (:meth:`drive`), or when the last pass asked to be back."""

    def __init__(
        self,
        kind: str,
        run_pass: PassFunction,
        *,
        is_active: IsActive,
        refresh: Refresh,
        concurrency: int = 16,
    ) -> None:
        self._kind = kind
        self._run_pass = run_pass
        self._is_active = is_active
        self._refresh = refresh
        self._concurrency = asyncio.Semaphore(concurrency)
        self._tracked: dict[str, _Tracked] = {}
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._passes: set[asyncio.Task[None]] = set()
        self._active = True
        self._active_checked_at = -math.inf
        self.stats = DriverStats()

    def __len__(self) -> int:
        return len(self._tracked)

    @property
    def kind(self) -> str:
        return self._kind

    def queue_depth(self) -> int:
        """Tracked objects whose next pass is due now (waiting for the loop or a free slot)."""
        now = asyncio.get_running_loop().time()
        return sum(1 for tracked in self._tracked.values() if tracked.due <= now)

    def failing(self) -> int:
        """Tracked objects whose last pass failed (waiting for their backoff)."""
        return sum(1 for tracked in self._tracked.values() if tracked.failures > 0)

    def tracks(self, uid: str) -> bool:
        return uid in self._tracked

    def observe(self, body: Mapping[str, Any]) -> bool:
        """Keep the latest body of a tracked object; whether it is tracked."""
        tracked = self._tracked.get(_uid(body))
        if tracked is not None:
            tracked.body = body
            tracked.stale = False
        return tracked is not None

    def forget(self, uid: str) -> None:
        """The object is gone or done: no more passes unless a watch event starts one."""
        tracked = self._tracked.get(uid)
        if tracked is None:
            return
        if tracked.lock.locked():
            # Kept until its pass ends, so that a pass started meanwhile waits for that one.
            tracked.forgotten, tracked.due = True, math.inf
        else:
            del self._tracked[uid]

    async def drive(self, body: Mapping[str, Any]) -> None:
        """One pass over the object now (after any pass already running for it)."""
        uid = _uid(body)
        tracked = self._tracked.setdefault(uid, _Tracked(body))
        tracked.body, tracked.stale, tracked.forgotten = body, False, False
        await self._pass(uid, tracked)

    async def _pass(self, uid: str, tracked: _Tracked) -> None:
        async with tracked.lock:
            # Every line a pass logs, down to the stores, carries the object it is about.
            with structlog.contextvars.bound_contextvars(**_log_context(self._kind, tracked.body)):
                try:
                    await self._pass_locked(uid, tracked)
                finally:
                    if tracked.forgotten and self._tracked.get(uid) is tracked:
                        del self._tracked[uid]

    async def _pass_locked(self, uid: str, tracked: _Tracked) -> None:
        if self._tracked.get(uid) is not tracked or tracked.forgotten:
            return  # forgotten while waiting for the previous pass
        passed: Mapping[str, Any] | None = None
        started = time.monotonic()
        try:
            if tracked.stale:
                fresh = await self._refresh(tracked.body)
                if fresh is None:
                    self.forget(uid)
                    return
                tracked.body, tracked.stale = fresh, False
            passed = tracked.body
            delay = await self._run_pass(passed, tracked.slot)
            tracked.failures = 0
            self.stats.record("succeeded", time.monotonic() - started)
        except asyncio.CancelledError:
            raise
        except PassStalled as stalled:
            tracked.failures = 0
            self.stats.record("stalled", time.monotonic() - started, stalled.reason)
            delay = None
        except PassDeferred as deferred:
            if deferred.reread and tracked.body is passed:  # unless a newer body arrived meanwhile
                tracked.stale = True
            delay = self._failed(tracked, "deferred", deferred.reason, deferred.delay, started)
        except Exception as exc:
            log.exception("pass_failed")
            delay = self._failed(tracked, "error", type(exc).__name__, FAILED_PASS_RETRY_SECONDS, started)
        if delay is None:
            # Kept (with its slot) until a watch event shows the object done, but without the
            # body: only a watch event brings it back, with a body of its own. A body is
            # 10–20 KB as Python objects; 10,000 of them were most of the operator's memory.
            tracked.due = math.inf
            if tracked.body is passed:  # not a newer body that arrived meanwhile
                # A pass the loop queued behind this one reads the object again rather than
                # run on its identity; a watch event's body makes that read unnecessary.
                tracked.body, tracked.stale = _identity(passed), True
            return
        tracked.due = asyncio.get_running_loop().time() + max(delay, 0.0)
        self._wakeup.set()

    def _failed(self, tracked: _Tracked, result: str, reason: str, first: float, started: float) -> float:
        tracked.failures += 1
        self.stats.record(result, time.monotonic() - started, reason)
        self.stats.retries += 1
        return backoff_delay(first, tracked.failures)

    # -- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop (once). Call it from a handler: it runs in that handler's context."""
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run_forever(), name=f"flywheel {self._kind} driver")

    async def stop(self) -> None:
        tasks = [task for task in (self._loop_task, *self._passes) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        self._passes.clear()

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            next_due = min((tracked.due for tracked in self._tracked.values()), default=math.inf)
            wait = min(next_due - loop.time(), ACTIVITY_CHECK_SECONDS)
            if wait > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):  # a pass fell due: that is the point
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
            now = loop.time()
            due = [(uid, tracked) for uid, tracked in self._tracked.items() if tracked.due <= now]
            if not due:
                continue
            if not await self._still_active(now):
                await asyncio.sleep(ACTIVITY_CHECK_SECONDS)
                continue
            for uid, tracked in due:
                tracked.due = math.inf  # the pass sets the next one
                await self._concurrency.acquire()
                task = asyncio.create_task(self._bounded_pass(uid, tracked))
                self._passes.add(task)
                task.add_done_callback(self._passes.discard)

    async def _bounded_pass(self, uid: str, tracked: _Tracked) -> None:
        try:
            await self._pass(uid, tracked)
        finally:
            self._concurrency.release()

    async def _still_active(self, now: float) -> bool:
        if now - self._active_checked_at >= ACTIVITY_CHECK_SECONDS:
            self._active_checked_at = now
            active = await self._is_active()
            if active != self._active:
                log.info(
                    "driver_activity_changed", kind=self._kind, active=active, tracked=len(self._tracked)
                )
            self._active = active
            if not active:
                # Another replica may drive these meanwhile: never act on what we saw before.
                for tracked in self._tracked.values():
                    tracked.stale = True
        return self._active
