"""What the Incident and Run handlers share: their driver loop, built at start and stopped at exit."""

from __future__ import annotations

from typing import Any

import kopf

from flywheel.controllers.driver import ObjectDriver, PassFunction, reread
from flywheel.errors import KubernetesApiError, NotFoundError, StoreUnavailableError
from flywheel.logs import get_logger
from flywheel.wiring import FlywheelMemo

log = get_logger(__name__)


def build_driver(memo: FlywheelMemo, plural: str, run_pass: PassFunction) -> ObjectDriver:
    """A driver over ``plural`` that acts only while this replica is the active peer."""
    deps, peering = memo.deps, memo.peering

    async def is_active() -> bool:
        return bool((await peering.check()).active)

    return ObjectDriver(plural, run_pass, is_active=is_active, refresh=reread(deps.resources.find, plural))


async def stop_driver(memo: kopf.Memo, key: str) -> None:
    driver: Any = memo.get(key)
    if isinstance(driver, ObjectDriver):
        await driver.stop()


def retry_after(
    failure: KubernetesApiError | StoreUnavailableError, kind: str, namespace: str, name: str, delay: float
) -> float | None:
    """What a pass that failed on the API server or Redis answers its driver.

    None when the object was deleted meanwhile (its DELETED event forgets it), else ``delay``.
    """
    if isinstance(failure, NotFoundError):
        return None
    log.warning(
        "pass_failed", kind=kind, namespace=namespace, name=name, retry_in_seconds=delay, error=str(failure)
    )
    return delay
