"""Kubernetes API access for Flywheel's own resources.

The official ``kubernetes`` client is synchronous, so every call runs in a worker
thread (``asyncio.to_thread``) to keep Kopf's event loop free.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from flywheel.errors import KubernetesApiError, StoreUnavailableError

GROUP = "flywheel.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

_configured = False


def configure_client() -> None:
    """Load in-cluster credentials when running in a pod, else the kubeconfig."""
    global _configured
    if _configured:
        return
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    _configured = True


def _translate(exc: ApiException, what: str) -> Exception:
    if exc.status in (None, 0, 429, 500, 502, 503, 504):
        return StoreUnavailableError(f"{what}: Kubernetes API unavailable ({exc.status} {exc.reason})")
    return KubernetesApiError(f"{what}: {exc.status} {exc.reason}: {exc.body}", status=exc.status)


class FlywheelResources:
    """Create and read Flywheel custom resources (Run, Approval) in a namespace."""

    def __init__(self, api: kubernetes.client.CustomObjectsApi | None = None) -> None:
        configure_client()
        self._api = api or kubernetes.client.CustomObjectsApi()

    async def create_or_get(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create the object; if it already exists (a retried handler), return the existing one.

        Names are deterministic, so a second attempt finds the first one's object instead of
        creating a twin.
        """
        name = body["metadata"]["name"]
        try:
            created: dict[str, Any] = await asyncio.to_thread(
                self._api.create_namespaced_custom_object, GROUP, VERSION, namespace, plural, body
            )
            return created
        except ApiException as exc:
            if exc.status != 409:
                raise _translate(exc, f"create {plural}/{name}") from exc
        return await self.get(plural, namespace, name)

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = await asyncio.to_thread(
                self._api.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
            )
            return found
        except ApiException as exc:
            raise _translate(exc, f"get {plural}/{name}") from exc
