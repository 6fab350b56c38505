"""Retention: finished Incidents leave the cluster once their TTL passed and the history holds them.

One pass (:meth:`RetentionController.sweep`) lists the Incidents, Runs and Approvals of each
watched namespace (all namespaces when the operator watches the cluster), judges every Incident
with :func:`flywheel.domain.retention.judge` (a Duplicate by its primary, as listed in the same pass), and for one that may go asks the history whether
it holds the Incident, each Run it owns and each Approval those Runs own *at the versions just
read* — the projection of their last version committed, nothing about them still waiting in
the writer's queue or spool. Only then is the Incident deleted, with preconditions on its uid
and resourceVersion (a change since the read makes the API server refuse, and the next pass
judges again) and ``propagationPolicy=Background``: the garbage collector deletes what its
ownerReferences chain holds — the Runs, their Approvals and the claim Lease the Incident holds.
A Lease taken over by a newer Incident names that one as owner and stays.

The history keeps everything: nothing here touches it. Passes are idempotent and level-triggered;
an unreachable history database ends the pass (nothing is deleted without its answer).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from flywheel.api.times import format_precise_time
from flywheel.domain.retention import judge, owned_by, primary_of
from flywheel.errors import DatabaseUnavailableError
from flywheel.logs import get_logger
from flywheel.stores.history import HistoryKind

_log = get_logger(__name__)

INCIDENTS: Final = "incidents"
RUNS: Final = "runs"
APPROVALS: Final = "approvals"
# Label values of flywheel_retention_deleted_total.
DELETED_KINDS: Final = ("Incident", "Run", "Approval", "Lease")
# Why a finished Incident past its TTL still stays, beyond the domain's reasons.
HISTORY_PENDING: Final = "history_pending"
HISTORY_UNAVAILABLE: Final = "history_unavailable"
CHANGED: Final = "changed_since_read"


class RetentionResources(Protocol):
    async def list(self, plural: str, namespace: str | None) -> list[dict[str, Any]]: ...

    async def claim_lease(self, namespace: str, anomaly_key: str) -> dict[str, Any] | None: ...

    async def delete_incident(self, namespace: str, name: str, *, uid: str, resource_version: str) -> bool: ...


class HistoryLedger(Protocol):
    async def holds(self, kind: HistoryKind, versions: Mapping[str, str]) -> bool: ...


@dataclass
class SweepReport:
    """What one pass did: the Incidents deleted, and how many stayed for which reason."""

    deleted: list[tuple[str, str]] = field(default_factory=list)
    held: Counter[str] = field(default_factory=Counter)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _versions(bodies: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    return {body["metadata"]["uid"]: str(body["metadata"].get("resourceVersion", "")) for body in bodies}


def _owner_index(bodies: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    index: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for body in bodies:
        for reference in (body.get("metadata") or {}).get("ownerReferences") or []:
            if uid := reference.get("uid"):
                index[uid].append(body)
    return index


class RetentionController:
    """Deletes finished Incidents past ``ttl_seconds`` whose history is stored (see the module doc)."""

    def __init__(
        self,
        resources: RetentionResources,
        history: HistoryLedger,
        *,
        ttl_seconds: int,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if ttl_seconds < 1:
            raise ValueError("a retention controller needs a TTL of at least 1 second (0 disables retention)")
        self._resources = resources
        self._history = history
        self._ttl = timedelta(seconds=ttl_seconds)
        self._clock = clock
        self._deleted: Counter[str] = Counter()

    @property
    def deleted_total(self) -> dict[str, int]:
        """Objects deleted (or handed to the garbage collector with their Incident) since start, by kind."""
        return {kind: self._deleted.get(kind, 0) for kind in DELETED_KINDS}

    async def sweep(self, namespaces: Sequence[str] = ()) -> SweepReport:
        """One pass over ``namespaces`` (every namespace when empty)."""
        report = SweepReport()
        for scope in namespaces or (None,):
            try:
                await self._sweep_scope(scope, report)
            except DatabaseUnavailableError as exc:
                report.held[HISTORY_UNAVAILABLE] += 1
                _log.warning("retention_pass_stopped", reason="history_database_unavailable", deleted=0,
                             namespace=scope, error=str(exc))
                break
        return report

    async def _sweep_scope(self, namespace: str | None, report: SweepReport) -> None:
        incidents = await self._resources.list(INCIDENTS, namespace)
        by_name = {(body["metadata"]["namespace"], body["metadata"]["name"]): body for body in incidents}
        now = self._clock()
        candidates = []
        for incident in incidents:
            # Cheap first: most Incidents are active or young, and need no Run listed.
            verdict = judge(incident, (), ttl=self._ttl, now=now, primary=self._primary(incident, by_name))
            if verdict.hold is None:
                candidates.append(incident)
            else:
                report.held[verdict.hold.value] += 1
        if not candidates:
            return
        runs_by_owner = _owner_index(await self._resources.list(RUNS, namespace))
        approvals_by_owner = _owner_index(await self._resources.list(APPROVALS, namespace))
        for incident in candidates:
            await self._consider(incident, runs_by_owner, approvals_by_owner, now, report, by_name)

    @staticmethod
    def _primary(
        incident: Mapping[str, Any], by_name: Mapping[tuple[str, str], dict[str, Any]]
    ) -> dict[str, Any] | None:
        """A Duplicate's primary as listed in this pass (None: gone, or not a Duplicate)."""
        name = primary_of(incident)
        return by_name.get((incident["metadata"]["namespace"], name)) if name is not None else None

    async def _consider(
        self,
        incident: dict[str, Any],
        runs_by_owner: Mapping[str, list[dict[str, Any]]],
        approvals_by_owner: Mapping[str, list[dict[str, Any]]],
        now: datetime,
        report: SweepReport,
        by_name: Mapping[tuple[str, str], dict[str, Any]],
    ) -> None:
        meta = incident["metadata"]
        uid, namespace, name = meta["uid"], meta["namespace"], meta["name"]
        runs = runs_by_owner.get(uid, [])
        verdict = judge(incident, runs, ttl=self._ttl, now=now, primary=self._primary(incident, by_name))
        if verdict.hold is not None:
            report.held[verdict.hold.value] += 1
            return
        approvals = [approval for run in runs for approval in approvals_by_owner.get(run["metadata"]["uid"], [])]
        for kind, bodies in ((HistoryKind.INCIDENT, [incident]), (HistoryKind.RUN, runs),
                             (HistoryKind.APPROVAL, approvals)):
            if bodies and not await self._history.holds(kind, _versions(bodies)):
                report.held[HISTORY_PENDING] += 1
                _log.debug("finished_incident_kept", namespace=namespace,
                           incident=name, waiting_for=kind.value)
                return
        anomaly_key = ((incident.get("status") or {}).get("anomaly") or {}).get("key")
        lease = await self._resources.claim_lease(namespace, anomaly_key) if anomaly_key else None
        holds_lease = lease is not None and owned_by(lease, [uid])
        if not await self._resources.delete_incident(
            namespace, name, uid=uid, resource_version=str(meta.get("resourceVersion", ""))
        ):
            report.held[CHANGED] += 1
            return
        self._deleted.update({"Incident": 1, "Run": len(runs), "Approval": len(approvals),
                              "Lease": 1 if holds_lease else 0})
        report.deleted.append((namespace, name))
        _log.info(
            "finished_incident_deleted",
            namespace=namespace, incident=name, uid=uid, duplicate_of=primary_of(incident),
            # None for a Duplicate whose primary is gone already.
            finished_at=format_precise_time(verdict.finished_at) if verdict.finished_at else None,
            ttl_seconds=int(self._ttl.total_seconds()),
            runs=[run["metadata"]["name"] for run in runs],
            approvals=[approval["metadata"]["name"] for approval in approvals],
            lease=lease["metadata"]["name"] if lease is not None and holds_lease else None,
        )


__all__ = ["DELETED_KINDS", "HistoryLedger", "RetentionController", "RetentionResources", "SweepReport"]
