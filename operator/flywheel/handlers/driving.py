"""What the Incident and Run handlers share: their driver loop, built at start and stopped at exit.

A write the API server refuses as invalid (422) is refused again however often it is retried,
so it is not retried: the object gets the condition ``Stalled=True`` (reason ``InvalidWrite``,
the message naming the refused fields as the API server did, as kstatus defines the
condition) and a Warning Event, and it is not passed again until its spec changes (a new
``metadata.generation``) or the operator restarts. The first pass that succeeds removes
``Stalled``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from flywheel.api.common import Condition, new_condition, set_condition
from flywheel.api.enums import ConditionStatus
from flywheel.controllers.driver import ObjectDriver, PassDeferred, PassFunction, PassStalled, reread
from flywheel.errors import (
    ConflictError,
    InvalidWriteError,
    KubernetesApiError,
    NotFoundError,
    StoreUnavailableError,
)
from flywheel.logs import get_logger
from flywheel.stores.kube import FlywheelResources
from flywheel.wiring import FlywheelMemo

log = get_logger(__name__)

STALLED = "Stalled"
INVALID_WRITE = "InvalidWrite"
# The slot entry saying which generation of the object stalled (this process, while tracked).
_STALLED_AT = "stalled_at_generation"
# A status write of ours racing another writer is read again and retried this often.
_CONDITION_WRITE_ATTEMPTS = 3
# A pass whose status write lost a race (409) is tried again this soon, over a fresh read.
CONFLICT_RETRY_SECONDS = 0.5


def build_driver(memo: FlywheelMemo, plural: str, run_pass: PassFunction) -> ObjectDriver:
    """A driver over ``plural`` that acts only while this replica is the active peer."""
    deps, peering = memo.deps, memo.peering

    async def is_active() -> bool:
        return bool((await peering.check()).active)

    stalls = StallReporter(deps.resources, plural)
    return ObjectDriver(
        plural, stalls.guard(run_pass), is_active=is_active, refresh=reread(deps.resources.find, plural)
    )


async def stop_driver(memo: kopf.Memo, key: str) -> None:
    driver: Any = memo.get(key)
    if isinstance(driver, ObjectDriver):
        await driver.stop()


def retry_after(
    failure: KubernetesApiError | StoreUnavailableError, kind: str, namespace: str, name: str, delay: float
) -> float | None:
    """What a pass that failed on the API server or Redis answers its driver.

    None when the object was deleted meanwhile (its DELETED event forgets it); otherwise it
    raises :class:`PassDeferred` (the driver tries again after ``delay``, backing off while
    the failures go on; after a write refused by its resourceVersion precondition, soon and
    over a fresh read of the object). An invalid write is raised again, for :class:`StallReporter` to
    report and not retry.
    """
    if isinstance(failure, InvalidWriteError):
        raise failure
    if isinstance(failure, NotFoundError):
        return None
    if isinstance(failure, ConflictError):
        # Another writer changed the object since this pass read it: compute again from a fresh read.
        log.info("pass_conflict_reread", kind=kind, namespace=namespace, name=name)
        raise PassDeferred("Conflict", CONFLICT_RETRY_SECONDS, reread=True) from failure
    log.warning("pass_failed", kind=kind, namespace=namespace, name=name, error=str(failure))
    reason = type(failure).__name__ if failure.__class__ is not KubernetesApiError else f"Http{failure.status}"
    raise PassDeferred(reason, delay) from failure


def _conditions(body: Mapping[str, Any]) -> list[Condition]:
    return [Condition.model_validate(c) for c in (body.get("status") or {}).get("conditions") or []]


def is_stalled(body: Mapping[str, Any]) -> bool:
    """Whether the object says ``Stalled=True`` (read raw: every pass asks, few ever are)."""
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == STALLED and c.get("status") == ConditionStatus.TRUE.value for c in conditions)


class StallReporter:
    """Reports invalid writes on the object they were for (``Stalled``), and clears it after."""

    def __init__(self, resources: FlywheelResources, plural: str) -> None:
        self._resources = resources
        self._plural = plural

    def guard(self, run_pass: PassFunction) -> PassFunction:
        """``run_pass``, with invalid writes reported instead of retried."""

        async def guarded(body: Mapping[str, Any], slot: dict[str, Any]) -> float | None:
            generation = (body.get("metadata") or {}).get("generation")
            if _STALLED_AT in slot and slot[_STALLED_AT] == generation:
                return None  # our own Stalled write came back on the watch: nothing has changed
            try:
                delay = await run_pass(body, slot)
            except InvalidWriteError as exc:
                slot[_STALLED_AT] = generation
                await self.stall(body, exc)
                raise PassStalled(INVALID_WRITE) from exc
            slot.pop(_STALLED_AT, None)
            if is_stalled(body):
                await self._write_conditions(body, lambda conditions: [c for c in conditions if c.type != STALLED])
            return delay

        return guarded

    async def stall(self, body: Mapping[str, Any], error: InvalidWriteError) -> None:
        meta = body.get("metadata") or {}
        message = f"a write was refused as invalid and is not retried until the object changes: {error.describe()}"
        log.error(
            "pass_stalled_on_invalid_write", kind=self._plural, namespace=meta.get("namespace"),
            name=meta.get("name"), error=str(error),
        )
        kopf.event(cast(kopf.Body, dict(body)), type="Warning", reason=INVALID_WRITE, message=message[:1024])
        stalled = new_condition(
            STALLED, ConditionStatus.TRUE, INVALID_WRITE, message, now=datetime.now(UTC),
            observed_generation=meta.get("generation"),
        )
        await self._write_conditions(body, lambda conditions: set_condition(conditions, stalled))

    async def _write_conditions(
        self, body: Mapping[str, Any], change: Callable[[list[Condition]], list[Condition]]
    ) -> None:
        """Change the stored conditions (read fresh, written with a precondition); best effort."""
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        for _ in range(_CONDITION_WRITE_ATTEMPTS):
            try:
                current = await self._resources.find(self._plural, namespace, name)
                if current is None or current["metadata"].get("uid") != meta.get("uid"):
                    return
                conditions = [c.model_dump(mode="json") for c in change(_conditions(current))]
                await self._resources.patch_status(
                    self._plural, namespace, name, {"conditions": conditions},
                    resource_version=current["metadata"]["resourceVersion"],
                )
                return
            except ConflictError:
                continue  # changed since it was read: read it again
            except (KubernetesApiError, StoreUnavailableError):
                break
        log.warning("stalled_condition_not_written", kind=self._plural, namespace=namespace, name=name)
