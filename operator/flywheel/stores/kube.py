"""Kubernetes API access for the operator: one asyncio client, shared by every store.

The stores talk to the API server through :class:`KubeApi`, a thin owner of one
``kubernetes.aio`` client (the official client's asyncio flavour, on aiohttp): calls run on
the event loop, so an alert storm's requests neither queue for worker threads nor fight
over the GIL with them. Requests go through the client's generic ``param_serialize`` and
``call_api`` (its credentials, TLS and token refresh) with the resource path the store names,
and answers are read as raw JSON: Flywheel works on plain dicts. The client's typed API
classes would import hundreds of models for their signatures (35 MB of the operator's
memory for the four groups it uses) and validate every call's arguments with pydantic.

Every failure comes out as Flywheel's own error: :class:`~flywheel.errors.StoreUnavailableError`
for what is worth retrying (unreachable, timed out, 429, 5xx), else
:class:`~flywheel.errors.KubernetesApiError` carrying the HTTP status and the API server's
own message.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any, Protocol, cast
from urllib.parse import quote

import aiohttp
import kubernetes.aio.client
import kubernetes.aio.config
from kubernetes.aio.client.exceptions import ApiException

from flywheel.errors import (
    ConflictError,
    ForbiddenError,
    GoneError,
    InvalidWriteError,
    KubernetesApiError,
    KubernetesUnavailableError,
    NotFoundError,
    StoreUnavailableError,
)

GROUP = "flywheel.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Requests in flight to the API server at once (the connection pool's size).
DEFAULT_CONNECTIONS = 32
# A request that takes longer is abandoned and reported as the API being unavailable.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 30.0
# Answers are small JSON objects; aiohttp's default read limit (256 KiB per connection) is for streams.
READ_BUFFER_BYTES = 2**16
# HTTP statuses that mean "try again later" rather than "no".
TRANSIENT_STATUSES = frozenset({None, 0, 429, 500, 502, 503, 504})
MERGE_PATCH = "application/merge-patch+json"
JSON = "application/json"
# The error each refusal is told apart by (chosen here once, so callers catch a class, not a number).
ERROR_BY_STATUS: dict[int, type[KubernetesApiError]] = {
    401: ForbiddenError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
}


class _HttpFailure(Protocol):
    status: int | None
    reason: str | None
    body: Any


def _api_status(body: Any) -> Mapping[str, Any]:
    """A Kubernetes Status body as a mapping (empty when it is not one)."""
    try:
        decoded = json.loads(body) if isinstance(body, (str, bytes, bytearray)) else body
    except ValueError:
        return {}
    return decoded if isinstance(decoded, Mapping) else {}


def _api_message(body: Any) -> str:
    """The ``message`` of a Kubernetes Status body, else nothing."""
    return str(_api_status(body).get("message") or "")


def _api_causes(body: Any) -> tuple[tuple[str, str], ...]:
    """``(field, message)`` of each ``details.causes`` entry of a Status body."""
    details = _api_status(body).get("details")
    causes = details.get("causes") if isinstance(details, Mapping) else None
    if not isinstance(causes, list):
        return ()
    return tuple(
        (str(cause.get("field") or ""), str(cause.get("message") or cause.get("reason") or ""))
        for cause in causes
        if isinstance(cause, Mapping)
    )


def status_error(
    status: int | None, reason: str | None, body: Any, what: str
) -> StoreUnavailableError | KubernetesApiError:
    """Our error for an answer with a failure status (transient ones become StoreUnavailableError)."""
    if status in TRANSIENT_STATUSES:
        return KubernetesUnavailableError(f"{what}: Kubernetes API unavailable ({status} {reason or ''})".rstrip())
    message = _api_message(body) or reason or ""
    if status == 422:
        return InvalidWriteError(f"{what}: {status} {message}".rstrip(), _api_causes(body))
    error = ERROR_BY_STATUS.get(status, KubernetesApiError) if status is not None else KubernetesApiError
    return error(f"{what}: {status} {message}".rstrip(), status=status)


def api_error(exc: _HttpFailure, what: str) -> StoreUnavailableError | KubernetesApiError:
    """Our error for a refused request of either client flavour (``ApiException``)."""
    return status_error(exc.status, exc.reason, exc.body, what)


def unreachable_error(exc: BaseException, what: str) -> StoreUnavailableError:
    """A connection-level failure (refused, reset, timed out): the API server is out of reach."""
    return KubernetesUnavailableError(f"{what}: Kubernetes API unreachable ({type(exc).__name__}: {exc})")


async def load_configuration(config_file: str | None = None) -> kubernetes.aio.client.Configuration:
    """The kubeconfig ``config_file``; else in-cluster credentials when running in a pod, else
    the kubeconfig in $KUBECONFIG or ~/.kube/config."""
    configuration = kubernetes.aio.client.Configuration()
    if config_file is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            kubernetes.aio.config.load_incluster_config(client_configuration=configuration)
            return configuration
        except kubernetes.aio.config.ConfigException:
            pass  # a pod without a service account token: fall back to a kubeconfig
    await kubernetes.aio.config.load_kube_config(
        config_file=config_file or os.environ.get("KUBECONFIG") or None, client_configuration=configuration
    )
    return configuration


def resource_path(
    group: str,
    version: str,
    plural: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The API path of a collection or an object: ``/api/v1/...`` for the core group (``""``)."""
    parts = ["/api", version] if not group else ["/apis", group, version]
    if namespace is not None:
        parts += ["namespaces", quote(namespace, safe="")]
    parts.append(plural)
    if name is not None:
        parts.append(quote(name, safe=""))
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


class KubeApi:
    """One ``kubernetes.aio`` client: JSON requests by resource path, errors translated.

    The credentials (``configuration``, else the kubeconfig ``config_file``, else those of
    :func:`load_configuration`) are loaded on first use, so building the object never blocks;
    the aiohttp session belongs to the event loop that made the first request: use one KubeApi
    per loop, and :meth:`close` it on that loop.
    """

    def __init__(
        self,
        configuration: kubernetes.aio.client.Configuration | None = None,
        *,
        config_file: str | None = None,
        connections: int = DEFAULT_CONNECTIONS,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self._configuration = configuration
        self._config_file = config_file
        self._connections = connections
        self.request_timeout = request_timeout
        self._client: kubernetes.aio.client.ApiClient | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> kubernetes.aio.client.ApiClient:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await self._connect()
        return self._client

    async def _connect(self) -> kubernetes.aio.client.ApiClient:
        try:
            configuration = self._configuration or await load_configuration(self._config_file)
        except kubernetes.aio.config.ConfigException as exc:
            raise KubernetesUnavailableError(f"no Kubernetes credentials: {exc}") from exc
        configuration.connection_pool_maxsize = self._connections
        # trust_env would make aiohttp look up proxy variables and ~/.netrc on every request,
        # which doubled the CPU cost of a call (bench/e2e_throughput.py); a proxy for the API
        # server still works when the kubeconfig names it (proxy-url).
        configuration.client_session_kwargs = {
            **(configuration.client_session_kwargs or {}),
            "trust_env": False,
            "read_bufsize": READ_BUFFER_BYTES,
        }
        return kubernetes.aio.client.ApiClient(configuration)

    async def request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = JSON,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send one request to ``path`` (see :func:`resource_path`) and decode the JSON answer.

        ``what`` says what was attempted, for the error messages (``create runs/x``).
        """
        client = await self.client()
        try:
            _, url, headers, payload, _ = await client.param_serialize(
                method,
                path,
                query_params=[(key, value) for key, value in (query or {}).items() if value is not None] or None,
                header_params={"Accept": JSON, "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
            )
            response = await client.call_api(
                method, url, headers, payload, _request_timeout=timeout or self.request_timeout
            )
            answer = await response.read()
        except ApiException as exc:
            raise api_error(exc, what) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise unreachable_error(exc, what) from exc
        if not 200 <= response.status < 300:
            raise status_error(response.status, response.reason, answer, what)
        decoded: dict[str, Any] = json.loads(answer) if answer else {}
        return decoded

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


class FlywheelResources:
    """Create, read and patch Flywheel's custom resources (Incident, Run, Approval) in a namespace."""

    def __init__(self, kube: KubeApi) -> None:
        self._kube = kube

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
            return await self.create_new(plural, namespace, body), True
        except ConflictError:
            pass
        return await self.get(plural, namespace, name), False

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        path = resource_path(GROUP, VERSION, plural, namespace=namespace, name=name)
        return await self._kube.request("GET", path, f"get {plural}/{name}")

    async def find(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self.get(plural, namespace, name)
        except NotFoundError:
            return None

    async def patch_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the status subresource (only if still at ``resource_version``, when given)."""
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        path = resource_path(GROUP, VERSION, plural, namespace=namespace, name=name, subresource="status")
        return await self._kube.request(
            "PATCH", path, f"update the status of {plural}/{name}", body=body, content_type=MERGE_PATCH
        )

    async def write_status(
        self, plural: str, body: Mapping[str, Any], status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Write the status computed from ``body``, only if the object is still as ``body`` shows it.

        Every status write of a pass is a read-modify-write (a merge patch replaces whole lists,
        the conditions among them), so it carries the resourceVersion it read: if anyone wrote
        the object since, the API server refuses it (:class:`~flywheel.errors.ConflictError`)
        and the caller reads the object again and computes again, rather than putting back what
        the other writer changed.
        """
        meta = body["metadata"]
        return await self.patch_status(
            plural, meta["namespace"], meta["name"], status, resource_version=str(meta["resourceVersion"])
        )

    async def patch_annotations(
        self, plural: str, namespace: str, name: str, annotations: Mapping[str, str], *, resource_version: str
    ) -> dict[str, Any]:
        """Merge-patch metadata annotations, only if the object is still at ``resource_version`` (else 409)."""
        body = {"metadata": {"resourceVersion": resource_version, "annotations": dict(annotations)}}
        path = resource_path(GROUP, VERSION, plural, namespace=namespace, name=name)
        return await self._kube.request(
            "PATCH", path, f"annotate {plural}/{name}", body=body, content_type=MERGE_PATCH
        )

    # -- guarded writes, for writers racing with others (the Alertmanager intake) -------
    #
    # These calls take an explicit request timeout, fail on conflicts instead of
    # resolving them, and report connection-level failures as StoreUnavailableError, so
    # that a caller with a deadline can retry what is transient and re-read on a conflict.

    async def list_labelled(
        self, plural: str, namespace: str, label_selector: str, *, request_timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """Objects of ``plural`` in ``namespace`` matching ``label_selector`` (a quorum read)."""
        found = await self._kube.request(
            "GET", resource_path(GROUP, VERSION, plural, namespace=namespace), f"list {plural} -l {label_selector}",
            query={"labelSelector": label_selector}, timeout=request_timeout,
        )
        return cast(list[dict[str, Any]], found.get("items") or [])

    async def create_new(
        self,
        plural: str,
        namespace: str,
        body: dict[str, Any],
        *,
        field_manager: str | None = None,
        request_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Create the object; an existing one of that name is a :class:`KubernetesApiError` with status 409."""
        return await self._kube.request(
            "POST", resource_path(GROUP, VERSION, plural, namespace=namespace),
            f"create {plural}/{body['metadata']['name']}",
            body=body, query={"fieldManager": field_manager} if field_manager else None, timeout=request_timeout,
        )

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
        patch = {"metadata": {"resourceVersion": resource_version}, "spec": spec}
        return await self._kube.request(
            "PATCH", resource_path(GROUP, VERSION, plural, namespace=namespace, name=name), f"patch {plural}/{name}",
            body=patch, query={"fieldManager": field_manager}, content_type=MERGE_PATCH, timeout=request_timeout,
        )
