"""Kopf handlers for Incident: thin glue between Kopf's watch events and the IncidentReconciler.

A pass runs when an Incident appears (created, or listed at operator start) or its spec
changes (``metadata.generation`` ahead of ``status.observedGeneration``); status changes —
ours, or the Run controller resolving the Incident — start none. An Incident whose pass
could not finish (the API server or Redis was down) is brought back by one loop
(:class:`~flywheel.controllers.driver.ObjectDriver`). Watching raw events instead of Kopf's
change handlers spares a write per Incident (Kopf's last-handled-configuration annotation)
and the watch event it echoes back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import kopf

from flywheel.api.bodies import incident_body, own_status
from flywheel.api.enums import IncidentPhase
from flywheel.api.incident import IncidentStatus
from flywheel.controllers.driver import ObjectDriver
from flywheel.controllers.incident import IncidentReconciler, ladder_due
from flywheel.domain.incident import IncidentObject, IncidentView
from flywheel.domain.signature import anomaly_key
from flywheel.errors import KubernetesApiError, StoreUnavailableError
from flywheel.handlers.driving import build_driver, retry_after, stop_driver
from flywheel.handlers.history import project
from flywheel.handlers.kopf_bodies import as_body
from flywheel.stores.history import HistoryKind
from flywheel.stores.kube import GROUP, VERSION

if TYPE_CHECKING:
    from flywheel.wiring import Dependencies, FlywheelMemo


# Incidents whose Redis recording is pending are revisited at this pace.
DEGRADED_RETRY_SECONDS = 15.0
# Back-off when the Kubernetes API is unavailable.
UNAVAILABLE_RETRY_SECONDS = 10.0
MEMO_INCIDENT_DRIVER = "incident_driver"


# Keys of the Incident index: (namespace, name) and (namespace, ANOMALY, key), both → the same IncidentView.
ANOMALY = "anomaly"
IncidentIndexKey = tuple[str, str] | tuple[str, str, str]
IncidentIndex = kopf.Index[IncidentIndexKey, IncidentView]

# Kopf passes indexes, `old` and `operation` as keyword arguments its callback Protocols do not
# declare, so mypy cannot match such handlers to them: the decorators below carry an ignore for it.


@kopf.index(GROUP, VERSION, "incidents")
async def incident_index(
    namespace: str | None, name: str, body: kopf.Body, spec: kopf.Spec, **_: Any
) -> dict[IncidentIndexKey, IncidentView] | None:
    """Every Incident in memory, by name and by anomaly key: deduplication, the Runs and the metrics
    read it instead of the API.

    One index for every use: Kopf calls each index function of a kind on every watch event of
    that kind, and the call, not the function, is what costs. Both keys hold the same object, so
    an Incident costs one view in memory.
    """
    if namespace is None:
        return None
    key = anomaly_key(spec.get("alertName"), spec.get("service"), namespace, spec.get("errorType"))
    try:
        view = IncidentView.from_body(incident_body(body))
    except (KeyError, ValueError):
        return None  # an invalid Incident is refused by its own pass
    return {(namespace, name): view, (namespace, ANOMALY, key): view}


def incident_of(index: IncidentIndex, namespace: str, name: str) -> IncidentView | None:
    """The Incident ``namespace/name`` as the operator last saw it."""
    return next(iter(index.get((namespace, name), ())), None)


def incidents_with_anomaly(index: IncidentIndex, namespace: str, key: str) -> list[IncidentView]:
    """The Incidents of ``namespace`` with the anomaly ``key``."""
    return list(index.get((namespace, ANOMALY, key), ()))


def all_incidents(index: IncidentIndex) -> Iterator[IncidentView]:
    """Every Incident the operator sees (each once)."""
    for key, store in index.items():
        if len(key) == 2:
            yield from store


def _spec_unseen(body: Mapping[str, Any]) -> bool:
    """The spec has changed since the last pass that wrote the status (or no pass has yet)."""
    status = body.get("status") or {}
    return bool(status.get("observedGeneration") != (body.get("metadata") or {}).get("generation"))


def _ladder_due(body: Mapping[str, Any]) -> bool:
    """Its Run ended without remediating it (the Run controller completed the decision): decide again."""
    raw = body.get("status") or {}
    if raw.get("phase") != IncidentPhase.MITIGATING.value or (raw.get("decision") or {}).get("state") != "Completed":
        return False  # most watch events: no model parsing for them
    try:
        status = IncidentStatus.model_validate(own_status(body.get("status") or {}, IncidentStatus))
    except ValueError:
        return False
    return ladder_due(status)


def _degraded(body: Mapping[str, Any]) -> bool:
    return bool(((body.get("status") or {}).get("anomaly") or {}).get("degraded"))


class IncidentPasses:
    """One pass over an Incident: reconcile, write the status patch, post the Events."""

    def __init__(self, deps: Dependencies, incident_index: IncidentIndex) -> None:
        self._deps = deps
        self._incident_index = incident_index

    async def __call__(self, body: Mapping[str, Any], slot: dict[str, Any]) -> float | None:
        try:
            incident = IncidentObject.from_body(incident_body(body))
        except ValueError as exc:
            # The CRD schema refuses almost everything; what slips through cannot be retried into shape.
            kopf.warn(as_body(body), reason="InvalidIncident", message=f"invalid Incident spec: {exc}")
            return None
        peers = incidents_with_anomaly(self._incident_index, incident.namespace, incident.anomaly_key)
        try:
            outcome = await IncidentReconciler(self._deps.incident_policy, self._deps.incident_stores).reconcile(incident, peers)
            status_patch = outcome.status_patch()
            if status_patch:
                await self._deps.resources.write_status("incidents", body, status_patch)
        except (KubernetesApiError, StoreUnavailableError) as exc:
            return retry_after(exc, "Incident", incident.namespace, incident.name, UNAVAILABLE_RETRY_SECONDS)
        regarding = dict(body)
        for event in outcome.events_to_post():
            kopf.event(as_body(regarding), type=event.type, reason=event.reason, message=event.message)
        anomaly = outcome.status.anomaly
        return DEGRADED_RETRY_SECONDS if anomaly is not None and anomaly.degraded else None


@kopf.on.startup()  # type: ignore[arg-type]
async def start_incident_driver(memo: FlywheelMemo, incident_index: IncidentIndex, **_: Any) -> None:
    deps = memo.deps
    memo[MEMO_INCIDENT_DRIVER] = build_driver(memo, "incidents", IncidentPasses(deps, incident_index))


@kopf.on.cleanup()
async def stop_incident_driver(memo: kopf.Memo, **_: Any) -> None:
    await stop_driver(memo, MEMO_INCIDENT_DRIVER)


@kopf.on.event(GROUP, VERSION, "incidents", id="reconcile-incidents")
async def incident_changed(event: kopf.RawEvent, memo: FlywheelMemo, **_: Any) -> None:
    driver: ObjectDriver = memo[MEMO_INCIDENT_DRIVER]
    project(HistoryKind.INCIDENT, event, memo)
    body = event["object"]
    if event["type"] == "DELETED":
        driver.forget(body["metadata"]["uid"])
        return
    driver.start()  # from a handler, so that the loop's passes can post Events through Kopf
    tracked = driver.observe(body)
    if event["type"] in (None, "ADDED") or _spec_unseen(body) or _ladder_due(body):
        await driver.drive(body)
    elif tracked and not _degraded(body):
        driver.forget(body["metadata"]["uid"])  # done; a degraded one stays for the driver's retry
