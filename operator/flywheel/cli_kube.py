"""The user's own connection to the API server, for the approver's commands.

Built from the user's kubeconfig (``--kubeconfig``, else ``$KUBECONFIG``, else
``~/.kube/config``; ``--context``) with the official client, so that the API server
authenticates the user (and Flywheel's admission webhook stamps that identity), never the
operator. ``--as``/``--as-group`` impersonate like kubectl's flags of the same names: one
``Impersonate-User`` header and one ``Impersonate-Group`` header per group (the API server
reads every header of that name; a comma-joined value would be a single group).

Failures come out as Flywheel's errors: :class:`~flywheel.errors.KubernetesApiError` with the
HTTP status and the API server's own message (the admission webhook's denial included), and
:class:`~flywheel.errors.StoreUnavailableError` when the API server cannot be reached.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import click
import kubernetes.client
import kubernetes.config
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from flywheel.errors import ConfigurationError, KubernetesApiError, StoreUnavailableError
from flywheel.stores.kube import GROUP, JSON, MERGE_PATCH, VERSION, _api_message, resource_path

# A CLI waits less than the operator would: a person is looking at the terminal.
REQUEST_TIMEOUT_SECONDS = 15.0
DEFAULT_NAMESPACE = "default"

_Command = TypeVar("_Command", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class KubeTarget:
    """Where and as whom to connect: the kubectl flags the approver's commands share."""

    kubeconfig: str | None = None
    context: str | None = None
    impersonate_user: str | None = None
    impersonate_groups: tuple[str, ...] = ()


def kube_options(command: _Command) -> _Command:
    """``--kubeconfig``, ``--context``, ``--as`` and ``--as-group``, as kubectl spells them."""
    for option in reversed(
        (
            click.option("--kubeconfig", default=None, metavar="PATH",
                         help="Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)."),
            click.option("--context", default=None, metavar="NAME", help="Kubeconfig context to use."),
            click.option("--as", "impersonate_user", default=None, metavar="USER",
                         help="Act as this user (impersonation, like kubectl --as)."),
            click.option("--as-group", "impersonate_groups", multiple=True, metavar="GROUP",
                         help="Act as a member of this group (repeatable, like kubectl --as-group)."),
        )
    ):
        command = option(command)
    return command


def kube_target(kubeconfig: str | None, context: str | None, impersonate_user: str | None,
                impersonate_groups: Sequence[str]) -> KubeTarget:
    if impersonate_groups and not impersonate_user:
        raise click.UsageError("--as-group needs --as (the API server impersonates groups only with a user)")
    return KubeTarget(kubeconfig, context, impersonate_user, tuple(impersonate_groups))


class UserKube:
    """JSON requests to the API server as the user of the kubeconfig (or whom they impersonate)."""

    def __init__(self, target: KubeTarget) -> None:
        self._target = target
        try:
            client = kubernetes.config.new_client_from_config(
                config_file=target.kubeconfig, context=target.context, persist_config=False
            )
            contexts, active = kubernetes.config.list_kube_config_contexts(
                config_file=target.kubeconfig
            )
        except (ConfigException, OSError) as exc:
            raise ConfigurationError(f"kubeconfig: {exc}") from exc
        self._client: kubernetes.client.ApiClient = client
        chosen = next((c for c in contexts if c["name"] == target.context), active) if target.context else active
        self.default_namespace = str((chosen or {}).get("context", {}).get("namespace") or DEFAULT_NAMESPACE)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _headers(self, headers: Mapping[str, str]) -> urllib3.HTTPHeaderDict:
        combined = urllib3.HTTPHeaderDict(headers)
        if self._target.impersonate_user:
            combined["Impersonate-User"] = self._target.impersonate_user
            for group in self._target.impersonate_groups:
                combined.add("Impersonate-Group", group)
        return combined

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = JSON,
    ) -> dict[str, Any]:
        """Send one request to ``path`` and decode the JSON answer."""
        what = f"{method} {path}"
        try:
            _, url, headers, payload, _ = self._client.param_serialize(
                method,
                path,
                query_params=list((query or {}).items()) or None,
                header_params={"Accept": JSON, "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._client.call_api(
                method, url, self._headers(headers), payload, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
            answer = response.read()
        except ApiException as exc:
            raise KubernetesApiError(_api_message(exc.body) or str(exc.reason), status=exc.status) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailableError(f"{what}: Kubernetes API unreachable ({type(exc).__name__}: {exc})") from exc
        if not 200 <= response.status < 300:
            raise KubernetesApiError(_api_message(answer) or str(response.reason), status=response.status)
        decoded: dict[str, Any] = json.loads(answer) if answer else {}
        return decoded

    # ------------------------------------------------------------------ Flywheel's resources

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return self.request("GET", resource_path(GROUP, VERSION, plural, namespace=namespace, name=name))

    def list_objects(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        """Every object of the kind in ``namespace`` (None: the whole cluster)."""
        found = self.request("GET", resource_path(GROUP, VERSION, plural, namespace=namespace))
        return list(found.get("items") or [])

    def merge_patch(
        self, plural: str, namespace: str, name: str, patch: Mapping[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        """A JSON merge patch; ``dry_run`` has the API server (admission webhooks included) answer
        what it would store, without storing it."""
        return self.request(
            "PATCH",
            resource_path(GROUP, VERSION, plural, namespace=namespace, name=name),
            body=dict(patch),
            query={"dryRun": "All"} if dry_run else None,
            content_type=MERGE_PATCH,
        )

    def events(self, namespace: str) -> list[dict[str, Any]]:
        found = self.request("GET", resource_path("", "v1", "events", namespace=namespace))
        return list(found.get("items") or [])


__all__ = ["KubeTarget", "UserKube", "kube_options", "kube_target"]
