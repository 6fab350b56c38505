"""Namespace labels kept by a watch, for the opt-in rule (``flywheel.domain.namespaces``).

Kopf's watch of ``v1/namespaces`` (``flywheel.handlers.namespaces``; cluster-scoped, so watched
whatever namespaces the operator reconciles) feeds :meth:`NamespaceLabels.observed` and
:meth:`NamespaceLabels.deleted`; every Run pass and every alert reads the labels from memory.
Only a namespace the watch has not brought yet (the first seconds after start-up, or one that
does not exist) is read once from the API server, and the answer — "no such namespace" too — is
kept for ``miss_ttl_seconds`` unless the watch brings it first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from flywheel.domain.namespaces import OPT_IN_LABEL, RemediationScope
from flywheel.errors import NotFoundError
from flywheel.logs import get_logger
from flywheel.stores.kube import KubeApi, resource_path

log = get_logger(__name__)

MISS_TTL_SECONDS = 30.0


class NamespaceReader(Protocol):
    """One namespace read from the API server (``flywheel.stores.kube.KubeApi``-backed)."""

    async def read_namespace(self, name: str) -> Mapping[str, Any]: ...


class NamespaceLabels:
    """The labels of every namespace the watch has seen; a read on a miss only."""

    def __init__(
        self,
        reader: NamespaceReader | None,
        scope: RemediationScope,
        clock: Callable[[], float] = time.monotonic,
        miss_ttl_seconds: float = MISS_TTL_SECONDS,
    ) -> None:
        self._reader = reader
        self.scope = scope
        self._clock = clock
        self._miss_ttl = miss_ttl_seconds
        self._watched: dict[str, dict[str, str]] = {}
        self._looked_up: dict[str, tuple[float, dict[str, str] | None]] = {}

    def observed(self, name: str, labels: Mapping[str, str] | None) -> None:
        """The watch brought the namespace (listed, added or changed)."""
        new = dict(labels or {})
        old = self._watched.get(name)
        self._watched[name] = new
        self._looked_up.pop(name, None)
        was = old is not None and self.scope.refusal(name, old) is None
        now = self.scope.refusal(name, new) is None
        if was != now:
            # One line per namespace when it enters or leaves the scope: the start-up listing
            # of the opted-in namespaces, then every change.
            log.info("remediation_namespace_enabled" if now else "remediation_namespace_disabled", namespace=name,
                     label=f"{OPT_IN_LABEL}={new.get(OPT_IN_LABEL, '')}")

    def deleted(self, name: str) -> None:
        self._watched.pop(name, None)
        self._looked_up.pop(name, None)

    async def labels(self, name: str) -> dict[str, str] | None:
        """The namespace's labels; None when it does not exist."""
        watched = self._watched.get(name)
        if watched is not None:
            return watched
        cached = self._looked_up.get(name)
        now = self._clock()
        if cached is not None and now - cached[0] < self._miss_ttl:
            return cached[1]
        if self._reader is None:
            return None
        try:
            body = await self._reader.read_namespace(name)
        except NotFoundError:
            labels = None
        else:
            labels = dict((body.get("metadata") or {}).get("labels") or {})
        self._looked_up[name] = (now, labels)
        return labels

    async def refusal(self, namespace: str) -> str | None:
        """Why Flywheel may not act in ``namespace``; None when it may (raises when the API cannot tell)."""
        if namespace in self.scope.listed:
            return None
        return self.scope.refusal(namespace, await self.labels(namespace))


class KubeNamespaceReader:
    """Reads a namespace with the operator's client."""

    def __init__(self, kube: KubeApi) -> None:
        self._kube = kube

    async def read_namespace(self, name: str) -> Mapping[str, Any]:
        return await self._kube.request("GET", resource_path("", "v1", "namespaces", name=name), f"get namespace {name}")


__all__ = ["MISS_TTL_SECONDS", "KubeNamespaceReader", "NamespaceLabels", "NamespaceReader"]
