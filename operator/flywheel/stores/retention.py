"""What the retention controller reads and deletes in the cluster: paged lists, guarded deletes."""

from __future__ import annotations

from typing import Any, Final, cast

from flywheel.errors import KubernetesApiError
from flywheel.stores.claims import lease_name
from flywheel.stores.kube import GROUP, VERSION, KubeApi, resource_path

# One page of a list: big enough that a pass over 10,000 objects is 20 requests, small enough
# that the API server never builds one huge answer.
LIST_PAGE_SIZE: Final = 500


class KubeRetentionStore:
    """Lists Flywheel's objects page by page and deletes an Incident only at a known version."""

    def __init__(self, kube: KubeApi) -> None:
        self._kube = kube

    async def list(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        """Every object of ``plural`` in ``namespace`` (all namespaces when None)."""
        path = resource_path(GROUP, VERSION, plural, namespace=namespace)
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            query = {"limit": str(LIST_PAGE_SIZE)}
            if token:
                query["continue"] = token
            page = await self._kube.request("GET", path, f"list {plural}", query=query)
            items.extend(cast(list[dict[str, Any]], page.get("items") or []))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    async def claim_lease(self, namespace: str, anomaly_key: str) -> dict[str, Any] | None:
        """The claim Lease of an anomaly key, or None when there is none."""
        path = resource_path("coordination.k8s.io", "v1", "leases", namespace=namespace, name=lease_name(anomaly_key))
        try:
            return await self._kube.request("GET", path, f"get leases/{lease_name(anomaly_key)}")
        except KubernetesApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete_incident(self, namespace: str, name: str, *, uid: str, resource_version: str) -> bool:
        """Delete the Incident if it is still that object at that version; its dependents go to
        the garbage collector (Background). False when it changed or is already gone."""
        path = resource_path(GROUP, VERSION, "incidents", namespace=namespace, name=name)
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
            "preconditions": {"uid": uid, "resourceVersion": resource_version},
        }
        try:
            await self._kube.request("DELETE", path, f"delete incidents/{name}", body=body)
        except KubernetesApiError as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True


__all__ = ["LIST_PAGE_SIZE", "KubeRetentionStore"]
