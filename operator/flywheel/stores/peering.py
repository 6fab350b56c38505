"""Is this replica the active Kopf peer? Read from Kopf's own peering objects.

Kopf pauses an operator when a live peer of higher priority (or a second one of the same
priority) shares its peering object, and does not tell handlers. A paused replica's watched
resources freeze, so its metrics would describe the past; the metrics loop asks this observer
before publishing pipeline figures.

Peering objects (``kopf.dev/v1``): ``ClusterKopfPeering`` for a cluster-wide operator,
``KopfPeering`` in every served namespace otherwise. Their ``status`` maps each peer's id to
``{priority, lifetime, lastseen}``; a peer is alive until ``lastseen + lifetime``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from flywheel.api.times import read_time
from flywheel.errors import KubernetesApiError, NotFoundError, StoreUnavailableError
from flywheel.logs import get_logger
from flywheel.stores.kube import KubeApi, resource_path

_log = get_logger(__name__)

PEERING_GROUP: Final = "kopf.dev"
PEERING_VERSION: Final = "v1"
# Kopf assumes 60 s for peers that do not state their lifetime.
DEFAULT_PEER_LIFETIME: Final = timedelta(seconds=60)
REQUEST_TIMEOUT_SECONDS: Final = 10


def literal_namespaces(namespaces: Iterable[str]) -> list[str]:
    """The namespaces that name one namespace: a glob (``*?[``) cannot be read or created by name."""
    return [namespace for namespace in namespaces if not set("*?[") & set(namespace)]


@dataclass(frozen=True, slots=True)
class Leadership:
    active: bool
    reason: str


def leadership(peer_tables: Iterable[Mapping[str, Any]], own_priority: int, now: datetime) -> Leadership:
    """Whether an operator of ``own_priority`` is active, given the ``status`` of its peering objects.

    Mirrors Kopf's rule: paused when a live peer has a higher priority, or when another live
    peer has the same priority (Kopf then pauses both). Our own record cannot be told apart
    from a same-priority twin, so a tie needs two records of our priority. Paused in any
    peering object means paused (Kopf pauses the whole operator).
    """
    for table in peer_tables:
        same_priority = 0
        for identity, record in table.items():
            if not isinstance(record, Mapping):
                continue
            priority = int(record.get("priority", 0))
            if not _alive(record, now):
                continue
            if priority > own_priority:
                return Leadership(False, f"peer {identity} has priority {priority} > {own_priority}")
            if priority == own_priority:
                same_priority += 1
        if same_priority > 1:
            return Leadership(False, f"{same_priority} live peers share priority {own_priority}; Kopf pauses them all")
    return Leadership(True, "no live peer outranks this operator")


def _alive(record: Mapping[str, Any], now: datetime) -> bool:
    lastseen = record.get("lastseen")
    if not lastseen:
        return True  # Kopf counts a peer without lastseen as just seen
    seen = read_time(str(lastseen), assume_utc=True)
    if seen is None:
        return True
    lifetime = timedelta(seconds=int(record.get("lifetime") or DEFAULT_PEER_LIFETIME.total_seconds()))
    return seen + lifetime > now


class PeeringObserver:
    """Answers "is this replica active?" from the peering objects, remembering the last answer.

    Without peering (``--standalone``) the replica is always active. A peering object that
    does not exist yet counts as no peers: the operator creates it at start
    (:func:`ensure_peering_objects`), and Kopf stays paused until it exists. When the objects cannot be
    read (no permission, API unreachable) the previous answer stands, with one warning.
    """

    def __init__(
        self,
        *,
        standalone: bool,
        name: str,
        priority: int,
        clusterwide: bool,
        namespaces: Sequence[str] = (),
        kube: KubeApi | None = None,
    ) -> None:
        if kube is None and not standalone:
            raise ValueError("a PeeringObserver with peering needs a KubeApi to read the peering objects")
        self._standalone = standalone
        self._name = name
        self._priority = priority
        self._clusterwide = clusterwide
        self._namespaces = tuple(namespaces)
        self._kube = kube
        self._last = Leadership(True, "not checked yet")
        self._unreadable_logged = False

    @property
    def last(self) -> Leadership:
        return self._last

    async def check(self, now: datetime | None = None) -> Leadership:
        if self._standalone:
            self._last = Leadership(True, "standalone: no peering")
            return self._last
        moment = now or datetime.now(UTC)
        try:
            tables = await self._read_tables()
        except (KubernetesApiError, StoreUnavailableError) as exc:
            if not self._unreadable_logged:
                _log.warning(
                    "peering_unreadable", keeping="the last leadership verdict",
                    peering=self._name,
                    active=self._last.active,
                    error=str(exc),
                )
                self._unreadable_logged = True
            return self._last
        self._unreadable_logged = False
        verdict = leadership(tables, self._priority, moment)
        if verdict.active != self._last.active:
            _log.info("leadership_changed", peering=self._name, active=verdict.active, reason=verdict.reason)
        self._last = verdict
        return verdict

    async def _read_tables(self) -> list[Mapping[str, Any]]:
        if self._clusterwide:
            found = await self._read_absent_as_none("clusterkopfpeerings", None)
            return [found.get("status") or {}] if found is not None else []
        tables: list[Mapping[str, Any]] = []
        for namespace in self._namespaces:
            found = await self._read_absent_as_none("kopfpeerings", namespace)
            if found is not None:
                tables.append(found.get("status") or {})
        return tables

    async def _read_absent_as_none(self, plural: str, namespace: str | None) -> dict[str, Any] | None:
        assert self._kube is not None  # checked in __init__ for observers with peering
        path = resource_path(PEERING_GROUP, PEERING_VERSION, plural, namespace=namespace, name=self._name)
        where = f"{namespace}/" if namespace else ""
        try:
            return await self._kube.request(
                "GET", path, f"read {plural} {where}{self._name}", timeout=REQUEST_TIMEOUT_SECONDS
            )
        except NotFoundError:
            return None


def ensure_peering_objects(name: str, namespaces: Sequence[str]) -> None:
    """Create the peering object(s) Kopf needs before it lets a replica act; existing ones are kept.

    Kopf waits, paused, for a peering object named by ``--peering`` and never creates one; an
    install would otherwise need the object applied after its CRD (two ``kubectl apply`` runs).
    A ``ClusterKopfPeering`` for a cluster-wide operator, a ``KopfPeering`` per namespace
    otherwise (globs cannot be created by name, so they are skipped). Failures are logged, not
    raised: the object may have been created by an administrator, and Kopf says what it waits for.
    """
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    # The synchronous client: this runs once, before the operator's event loop exists.
    api = kubernetes.client.CustomObjectsApi()
    labels = {"app.kubernetes.io/name": "flywheel", "app.kubernetes.io/managed-by": "flywheel"}
    targets: list[str | None] = list(literal_namespaces(namespaces)) if namespaces else [None]
    for namespace in targets:
        kind = "KopfPeering" if namespace else "ClusterKopfPeering"
        body = {"apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}", "kind": kind,
                "metadata": {"name": name, "labels": labels}}
        try:
            if namespace is None:
                api.create_cluster_custom_object(PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", body)
            else:
                api.create_namespaced_custom_object(PEERING_GROUP, PEERING_VERSION, namespace, "kopfpeerings", body)
            _log.info("peering_object_created", kind=kind, name=name, namespace=namespace)
        except ApiException as exc:
            if exc.status != 409:
                _log.warning("peering_object_not_created", kind=kind, name=name, namespace=namespace,
                             status=exc.status, reason=exc.reason)
        except urllib3.exceptions.HTTPError as exc:
            _log.warning("peering_object_not_created", kind=kind, name=name, namespace=namespace, error=str(exc))


__all__ = ["Leadership", "PeeringObserver", "ensure_peering_objects", "leadership", "literal_namespaces"]
