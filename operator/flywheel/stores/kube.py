"""Kubernetes API access for Flywheel's own resources.

The official ``kubernetes`` client is synchronous, so every call runs in a worker
thread (``asyncio.to_thread``) to keep Kopf's event loop free.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, cast

import kubernetes
import urllib3
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




def api_error(exc: ApiException, what: str) -> Exception:
    """Our error for a refused API request: transient statuses become StoreUnavailableError,
    the rest KubernetesApiError with the API server's own message (Status.message)."""
    if exc.status in (None, 0, 429, 500, 502, 503, 504):
        return StoreUnavailableError(f"{what}: Kubernetes API unavailable ({exc.status} {exc.reason})")
    message = exc.reason or ""
    try:
        message = json.loads(exc.body or "{}").get("message") or message
    except (ValueError, AttributeError):
        pass
    return KubernetesApiError(f"{what}: {exc.status} {message}", status=exc.status)


def unreachable_error(exc: urllib3.exceptions.HTTPError, what: str) -> StoreUnavailableError:
    """A connection-level failure (refused, reset, timed out): the API server is out of reach."""
    return StoreUnavailableError(f"{what}: Kubernetes API unreachable ({type(exc).__name__}: {exc})")


class FlywheelResources:
    """Create and read Flywheel custom resources (Run, Approval) in a namespace."""

    def __init__(self, api: kubernetes.client.CustomObjectsApi | None = None) -> None:
        if api is None:
            configure_client()
        self._api = api or kubernetes.client.CustomObjectsApi()

    async def create_or_get(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create the object; if it already exists (a retried handler), return the existing one.

        Names are deterministic, so a second attempt finds the first one's object instead of
        creating a twin.
        """
        found, _ = await self.create_or_find(plural, namespace, body)
        return found

    async def create_or_find(
        self, plural: str, namespace: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Like :meth:`create_or_get`, also saying whether this call created the object."""
        name = body["metadata"]["name"]
        try:
            created: dict[str, Any] = await asyncio.to_thread(
                self._api.create_namespaced_custom_object, GROUP, VERSION, namespace, plural, body
            )
            return created, True
        except ApiException as exc:
            if exc.status != 409:
                raise api_error(exc, f"create {plural}/{name}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise unreachable_error(exc, f"create {plural}/{name}") from exc
        return await self.get(plural, namespace, name), False

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = await asyncio.to_thread(
                self._api.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
            )
            return found
        except ApiException as exc:
            raise api_error(exc, f"get {plural}/{name}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise unreachable_error(exc, f"get {plural}/{name}") from exc

    async def find(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self.get(plural, namespace, name)
        except KubernetesApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource."""
        what = f"update the status of {plural}/{name}"
        try:
            patched = await asyncio.to_thread(
                self._api.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                {"status": dict(status)},
            )
        except ApiException as exc:
            raise api_error(exc, what) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise unreachable_error(exc, what) from exc
        return cast(dict[str, Any], patched)

    # -- guarded writes, for writers racing with others (the Alertmanager intake) -------
    #
    # These calls take an explicit request timeout, fail on conflicts instead of
    # resolving them, and report connection-level failures as StoreUnavailableError, so
    # that a caller with a deadline can retry what is transient and re-read on a conflict.

    async def list_labelled(
        self, plural: str, namespace: str, label_selector: str, *, request_timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """Objects of ``plural`` in ``namespace`` matching ``label_selector`` (a quorum read)."""
        what = f"list {plural} -l {label_selector}"
        try:
            found = await asyncio.to_thread(
                self._api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural,
                label_selector=label_selector,
                _request_timeout=request_timeout,
            )
        except ApiException as exc:
            raise api_error(exc, what) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise unreachable_error(exc, what) from exc
        return cast(list[dict[str, Any]], cast(dict[str, Any], found).get("items") or [])

    async def create_new(
        self,
        plural: str,
        namespace: str,
        body: dict[str, Any],
        *,
        field_manager: str,
        request_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Create the object; an existing one of that name is a :class:`KubernetesApiError` with status 409."""
        what = f"create {plural}/{body['metadata']['name']}"
        try:
            created = await asyncio.to_thread(
                self._api.create_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural,
                body,
                field_manager=field_manager,
                _request_timeout=request_timeout,
            )
        except ApiException as exc:
            raise api_error(exc, what) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise unreachable_error(exc, what) from exc
        return cast(dict[str, Any], created)

    async def patch_spec_if_unchanged(
        self,
        plural: str,
        namespace: str,
        name: str,
        *,
        resource_version: str,
        spec: dict[str, Any],
        field_manager: str,
        request_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Merge-patch ``spec`` only if the object is still at ``resource_version``.

        The resourceVersion in the patch is a precondition: the API server answers 409
        (a :class:`KubernetesApiError` with that status) when anyone wrote the object
        since it was read, so a read-modify-write never overwrites a concurrent one.
        """
        what = f"patch {plural}/{name}"
        patch = {"metadata": {"resourceVersion": resource_version}, "spec": spec}
        try:
            patched = await asyncio.to_thread(
                self._api.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                patch,
                field_manager=field_manager,
                _request_timeout=request_timeout,
            )
        except ApiException as exc:
            raise api_error(exc, what) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise unreachable_error(exc, what) from exc
        return cast(dict[str, Any], patched)
