"""Kopf handlers for Incident: thin glue between Kopf and the IncidentReconciler."""

from __future__ import annotations

from typing import Any

import kopf

from flywheel.api.enums import IncidentPhase
from flywheel.controllers.incident import IncidentObject, IncidentReconciler, PeerIncident
from flywheel.domain.signature import anomaly_key
from flywheel.errors import StoreUnavailableError
from flywheel.stores.kube import GROUP, VERSION

# Incidents whose Redis recording is pending are revisited at this pace.
DEGRADED_RETRY_SECONDS = 15.0


@kopf.index(GROUP, VERSION, "incidents")
def incidents_by_anomaly(
    namespace: str, name: str, uid: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], PeerIncident]:
    """Incidents grouped by (namespace, anomaly key): deduplication asks the API only for new twins."""
    key = anomaly_key(spec.get("alertName"), spec.get("service"), namespace, spec.get("errorType"))
    phase = status.get("phase")
    return {(namespace, key): PeerIncident(name=name, uid=uid, phase=IncidentPhase(phase) if phase else None)}


def _is_degraded(status: kopf.Status, **_: Any) -> bool:
    return bool((status.get("anomaly") or {}).get("degraded"))


@kopf.on.resume(GROUP, VERSION, "incidents")
@kopf.on.create(GROUP, VERSION, "incidents")
@kopf.on.update(GROUP, VERSION, "incidents", field="spec")
@kopf.timer(GROUP, VERSION, "incidents", interval=DEGRADED_RETRY_SECONDS, when=_is_degraded)
async def reconcile_incident(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    incidents_by_anomaly: kopf.Index[tuple[str, str], PeerIncident],
    **_: Any,
) -> None:
    try:
        incident = IncidentObject.from_body(body)
    except ValueError as exc:
        # The CRD schema refuses almost everything; what slips through cannot be retried into shape.
        raise kopf.PermanentError(f"invalid Incident spec: {exc}") from exc
    peers = list(incidents_by_anomaly.get((incident.namespace, incident.anomaly_key), []))
    try:
        outcome = await IncidentReconciler(memo.deps).reconcile(incident, list(peers))
    except StoreUnavailableError as exc:
        raise kopf.TemporaryError(str(exc), delay=10) from exc
    patch.status.update(outcome.status_patch())
    for event in outcome.events_to_post():
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
