"""The workload an alert is about, read from the API server: Pod → owner chain → workload.

The intake maps an alert naming a Pod to the workload owning it (Pod → ReplicaSet →
Deployment, Pod → StatefulSet, Pod → DaemonSet), and reads the workload itself for its
service labels; the steps of the chain are pure (:mod:`flywheel.domain.alerts`), the reads
are here.

Why a short-TTL cache and not a watch (a Kopf index) of every Pod: a watch costs an event
per Pod change in every watched namespace all the time — each readiness flip, each rollout
— to serve alerts that come rarely and name few Pods. The cache costs one read per distinct
object an alert names, and an alert storm names the same few Pods over and over (every
alert of a crash-looping Deployment's Pods goes through one ReplicaSet and one Deployment).
Concurrent lookups of one object share one request, so a storm arriving all at once reads
each object once. What can go stale is harmless within the TTL: a Pod's owner never
changes (its controller reference is set at creation), a Pod deleted meanwhile still
names the workload it belonged to, and a workload's labels (the service) are re-read
after at most :data:`OWNER_CACHE_SECONDS`. Negative answers (gone, no supported owner) are
kept shorter, :data:`MISSING_CACHE_SECONDS`, so a Pod created just after an alert about it
is found soon.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from flywheel.api.enums import TargetKind
from flywheel.domain.alerts import (
    AlertRefusal,
    AlertSubject,
    OwnedByReplicaSet,
    PodSubject,
    Workload,
    WorkloadSubject,
    pod_not_found,
    pod_owner,
    replicaset_not_found,
    replicaset_owner,
    workload_not_found,
    workload_of,
)
from flywheel.errors import AlertRefusedError, KubernetesApiError
from flywheel.stores.kube import KubeApi, resource_path

OWNER_CACHE_SECONDS = 60.0
MISSING_CACHE_SECONDS = 10.0
CACHE_MAX_ENTRIES = 20_000
"""Objects remembered at most (Pods, ReplicaSets, workloads); the least recently used go first."""
LOOKUP_TIMEOUT_SECONDS = 3.0

_PLURALS = {
    TargetKind.DEPLOYMENT: "deployments",
    TargetKind.STATEFULSET: "statefulsets",
    TargetKind.DAEMONSET: "daemonsets",
}


class ObjectReader(Protocol):
    """Reads one object by API path; ``None`` when it does not exist (404)."""

    async def get(self, path: str, what: str) -> dict[str, Any] | None: ...


class KubeObjectReader:
    """:class:`ObjectReader` over the operator's shared client."""

    def __init__(self, kube: KubeApi, timeout: float = LOOKUP_TIMEOUT_SECONDS) -> None:
        self._kube = kube
        self._timeout = timeout

    async def get(self, path: str, what: str) -> dict[str, Any] | None:
        try:
            return await self._kube.request("GET", path, what, timeout=self._timeout)
        except KubernetesApiError as exc:
            if exc.status == 404:
                return None
            raise


@dataclass(frozen=True)
class _Entry:
    value: Any
    expires_at: float


class _TtlCache:
    """A bounded LRU map whose entries expire; concurrent misses of one key share one load."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._loading: dict[Hashable, asyncio.Future[tuple[Any, float]]] = {}
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: Hashable, load: Callable[[], Awaitable[tuple[Any, float]]]) -> Any:
        """The cached value of ``key``, else ``load()``'s (value, seconds to keep it)."""
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires_at > self._clock():
                self._entries.move_to_end(key)
                return entry.value
            del self._entries[key]
        pending = self._loading.get(key)
        if pending is not None:
            value, _ = await asyncio.shield(pending)
            return value
        future: asyncio.Future[tuple[Any, float]] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value, keep_seconds = await load()
        except BaseException as exc:
            future.set_exception(exc)
            # Nobody else may be waiting: retrieving the exception keeps asyncio from logging it.
            future.exception()
            raise
        finally:
            del self._loading[key]
        future.set_result((value, keep_seconds))
        self._entries[key] = _Entry(value, self._clock() + keep_seconds)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return value


Resolution = Workload | AlertRefusal


class PodOwnerStore:
    """Resolves an alert's subject to its :class:`Workload` (or the refusal saying why not).

    Raises :class:`~flywheel.errors.StoreUnavailableError` when the API server is out of reach
    and :class:`~flywheel.errors.KubernetesApiError` when it refuses the read itself (RBAC):
    neither is the alert's fault, neither is cached.
    """

    def __init__(
        self,
        reader: ObjectReader,
        *,
        owner_seconds: float = OWNER_CACHE_SECONDS,
        missing_seconds: float = MISSING_CACHE_SECONDS,
        max_entries: int = CACHE_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reader = reader
        self._owner_seconds = owner_seconds
        self._missing_seconds = missing_seconds
        self._cache = _TtlCache(max_entries, clock)
        self.api_reads = 0
        """Reads sent to the API server so far (the benchmark's and the tests' measure of the cache)."""

    async def resolve(self, namespace: str, subject: AlertSubject) -> Resolution:
        if isinstance(subject, PodSubject):
            step = await self._pod_owner(namespace, subject.name)
            if isinstance(step, AlertRefusal):
                return step
            if isinstance(step, OwnedByReplicaSet):
                owner = await self._replicaset_owner(namespace, step.name)
                if isinstance(owner, AlertRefusal):
                    return owner
                step = owner
            subject = step
        return await self._workload(namespace, subject)

    async def _read(self, path: str, what: str) -> dict[str, Any] | None:
        self.api_reads += 1
        return await self._reader.get(path, what)

    async def _pod_owner(self, namespace: str, name: str) -> WorkloadSubject | OwnedByReplicaSet | AlertRefusal:
        async def load() -> tuple[Any, float]:
            pod = await self._read(resource_path("", "v1", "pods", namespace=namespace, name=name), f"read Pod {name}")
            if pod is None:
                return pod_not_found(namespace, name), self._missing_seconds
            try:
                return pod_owner(pod), self._owner_seconds
            except AlertRefusedError as exc:
                return AlertRefusal.of(exc), self._missing_seconds

        result: WorkloadSubject | OwnedByReplicaSet | AlertRefusal = await self._cache.get(("pod", namespace, name), load)
        return result

    async def _replicaset_owner(self, namespace: str, name: str) -> WorkloadSubject | AlertRefusal:
        async def load() -> tuple[Any, float]:
            replica_set = await self._read(
                resource_path("apps", "v1", "replicasets", namespace=namespace, name=name), f"read ReplicaSet {name}"
            )
            if replica_set is None:
                return replicaset_not_found(namespace, name), self._missing_seconds
            try:
                return replicaset_owner(replica_set), self._owner_seconds
            except AlertRefusedError as exc:
                return AlertRefusal.of(exc), self._missing_seconds

        result: WorkloadSubject | AlertRefusal = await self._cache.get(("replicaset", namespace, name), load)
        return result

    async def _workload(self, namespace: str, subject: WorkloadSubject) -> Resolution:
        async def load() -> tuple[Any, float]:
            path = resource_path("apps", "v1", _PLURALS[subject.kind], namespace=namespace, name=subject.name)
            body = await self._read(path, f"read {subject.kind.value}/{subject.name}")
            if body is None:
                return None, self._missing_seconds
            return workload_of(subject.kind, body), self._owner_seconds

        workload: Workload | None = await self._cache.get(("workload", namespace, subject.kind, subject.name), load)
        # The refusal names the label of *this* alert (deployment, pod...), so it is built per alert.
        return workload if workload is not None else workload_not_found(namespace, subject)


__all__ = [
    "CACHE_MAX_ENTRIES",
    "MISSING_CACHE_SECONDS",
    "OWNER_CACHE_SECONDS",
    "KubeObjectReader",
    "ObjectReader",
    "PodOwnerStore",
    "Resolution",
]
