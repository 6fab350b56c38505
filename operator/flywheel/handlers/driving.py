"""What the Incident and Run handlers share: their driver loop, built at start and stopped at exit."""

from __future__ import annotations

from typing import Any

import kopf

from flywheel.controllers.driver import ObjectDriver, PassFunction, reread


def build_driver(memo: kopf.Memo, plural: str, run_pass: PassFunction) -> ObjectDriver:
    """A driver over ``plural`` that acts only while this replica is the active peer."""
    deps = getattr(memo, "deps", None)
    peering = getattr(memo, "peering", None)
    if deps is None or peering is None:
        raise kopf.TemporaryError("shared dependencies are not built yet", delay=1)

    async def is_active() -> bool:
        return bool((await peering.check()).active)

    return ObjectDriver(plural, run_pass, is_active=is_active, refresh=reread(deps.resources.find, plural))


async def stop_driver(memo: kopf.Memo, key: str) -> None:
    driver: Any = memo.get(key)
    if isinstance(driver, ObjectDriver):
        await driver.stop()
