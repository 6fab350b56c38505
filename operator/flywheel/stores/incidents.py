"""Read and update an Incident's status from outside the Incident's own handler.

The Run controller resolves the Incident it remediated. That write races with the
Incident's own reconcile, so it is an optimistic update: read the Incident, compute the
merge patch from what was read, and send it with the ``resourceVersion`` that was read.
On 409 Conflict the Incident is read again and the patch recomputed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from flywheel.errors import KubernetesApiError, StoreUnavailableError
from flywheel.logs import get_logger
from flywheel.stores.kube import GROUP, VERSION, api_error, configure_client

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
    def __init__(self, api: kubernetes.client.CustomObjectsApi | None = None) -> None:
        if api is None:
            configure_client()
        self._api = api or kubernetes.client.CustomObjectsApi()

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Incident, or None when it does not exist."""
        return await asyncio.to_thread(self._get, namespace, name)

    async def update_status(
        self, namespace: str, name: str, uid: str, mutation: StatusMutation
    ) -> StatusUpdate:
        """Apply ``mutation`` to the Incident ``name`` if it is still the incarnation ``uid``."""
        return await asyncio.to_thread(self._update_status, namespace, name, uid, mutation)

    def _get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self._api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise api_error(exc, f"get incident {namespace}/{name}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailableError(
                f"get incident {namespace}/{name}: Kubernetes API unreachable: {exc}"
            ) from exc
        return cast(dict[str, Any], found)  # the client types custom objects as ``object``

    def _update_status(self, namespace: str, name: str, uid: str, mutation: StatusMutation) -> StatusUpdate:
        what = f"update the status of incident {namespace}/{name}"
        for _ in range(CONFLICT_RETRIES):
            incident = self._get(namespace, name)
            if incident is None or incident["metadata"].get("uid") != uid:
                return StatusUpdate(UpdateResult.GONE, incident)
            patch = mutation(incident)
            if patch is None:
                return StatusUpdate(UpdateResult.UNCHANGED, incident)
            body = {**patch, "metadata": {"resourceVersion": incident["metadata"]["resourceVersion"]}}
            try:
                patched = self._api.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    body,
                    _content_type="application/merge-patch+json",
                )
            except ApiException as exc:
                if exc.status == 409:
                    log.info("incident_status_conflict_retry", incident=name, namespace=namespace)
                    continue
                if exc.status == 404:
                    return StatusUpdate(UpdateResult.GONE, None)
                raise api_error(exc, what) from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise StoreUnavailableError(f"{what}: Kubernetes API unreachable: {exc}") from exc
            return StatusUpdate(UpdateResult.UPDATED, cast(dict[str, Any], patched))
        raise KubernetesApiError(f"{what}: {CONFLICT_RETRIES} conflicts in a row", status=409)




__all__ = ["IncidentStatusStore", "StatusMutation", "StatusUpdate", "UpdateResult"]
