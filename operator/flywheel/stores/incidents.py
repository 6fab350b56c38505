"""Read and update an Incident's status from outside the Incident's own handler.

The Run controller resolves the Incident it remediated. That write races with the
Incident's own reconcile, so it is an optimistic update: read the Incident, compute the
merge patch from what was read, and send it with the ``resourceVersion`` that was read.
On 409 Conflict the Incident is read again and the patch recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from flywheel.errors import ConflictError, KubernetesApiError, NotFoundError
from flywheel.logs import get_logger
from flywheel.stores.kube import FlywheelResources

log = get_logger(__name__)

PLURAL = "incidents"
CONFLICT_RETRIES = 5

# Computes the status merge patch (``{"status": {...}}``) from the Incident as read; None: nothing to do.
StatusMutation = Callable[[Mapping[str, Any]], dict[str, Any] | None]


class UpdateResult(StrEnum):
    UPDATED = "Updated"
    UNCHANGED = "Unchanged"  # the mutation found nothing to do
    GONE = "Gone"  # no Incident with that name and uid


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    result: UpdateResult
    incident: Mapping[str, Any] | None  # the Incident as read last (patched, when updated)


class IncidentStatusStore:
    def __init__(self, resources: FlywheelResources) -> None:
        self._resources = resources

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Incident, or None when it does not exist."""
        return await self._resources.find(PLURAL, namespace, name)

    async def update_status(
        self, namespace: str, name: str, uid: str, mutation: StatusMutation
    ) -> StatusUpdate:
        """Apply ``mutation`` to the Incident ``name`` if it is still the incarnation ``uid``."""
        for _ in range(CONFLICT_RETRIES):
            incident = await self.get(namespace, name)
            if incident is None or incident["metadata"].get("uid") != uid:
                return StatusUpdate(UpdateResult.GONE, incident)
            patch = mutation(incident)
            if patch is None:
                return StatusUpdate(UpdateResult.UNCHANGED, incident)
            try:
                patched = await self._resources.patch_status(
                    PLURAL, namespace, name, patch.get("status") or {},
                    resource_version=incident["metadata"]["resourceVersion"],
                )
            except ConflictError:
                log.info("incident_status_conflict_retry", incident=name, namespace=namespace)
                continue
            except NotFoundError:
                return StatusUpdate(UpdateResult.GONE, None)
            return StatusUpdate(UpdateResult.UPDATED, patched)
        raise KubernetesApiError(
            f"update the status of incident {namespace}/{name}: {CONFLICT_RETRIES} conflicts in a row", status=409
        )


__all__ = ["IncidentStatusStore", "StatusMutation", "StatusUpdate", "UpdateResult"]
