"""The in-memory indexes the handlers keep of every Incident and Run (Kopf calls them per watch event).

Scenarios: one Incident index serves deduplication (by anomaly key), the Runs (by name) and the
metrics (every Incident once); an Incident the index cannot read is left out rather than
breaking the stream; the metrics' live view is built from the Incident and Run indexes alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from flywheel.api.enums import IncidentPhase, RemediationMode, RunMode, RunState, TargetKind
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import ObservedRun
from flywheel.domain.signature import anomaly_key
from flywheel.handlers.incident import all_incidents, incident_index, incident_of, incidents_with_anomaly
from flywheel.handlers.metrics import live_view

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def incident(name: str, *, service: str = "checkout", namespace: str = "shop", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "creationTimestamp": T0.isoformat()},
        "spec": {"alertName": "KubePodOOMKilled", "service": service, "errorType": "OOMKilled", "source": "alertmanager",
                 "remediation": {"mode": "Shadow"}},
        "status": status,
    }


async def indexed(body: Mapping[str, Any]) -> dict[Any, Any] | None:
    meta = body["metadata"]
    return await incident_index(
        namespace=meta.get("namespace"), name=meta["name"], uid=meta["uid"], body=body,  # type: ignore[arg-type]
        spec=body["spec"], status=body["status"],  # type: ignore[arg-type]
    )


def as_index(*entries: dict[Any, Any] | None) -> dict[Any, list[Any]]:
    """What Kopf makes of the functions' answers: key → the values of every object with that key."""
    index: dict[Any, list[Any]] = {}
    for entry in entries:
        for key, value in (entry or {}).items():
            index.setdefault(key, []).append(value)
    return index


async def test_one_incident_index_answers_by_name_by_anomaly_and_as_a_whole() -> None:
    first = await indexed(incident("oom-1", phase="Mitigating", runRef={"name": "oom-1-1", "uid": "run-uid"},
                                   decision={"id": "DEC-1"}, anomaly={"key": "k1"}))
    twin = await indexed(incident("oom-2", phase="Duplicate"))
    other = await indexed(incident("slow-1", service="search"))
    index = as_index(first, twin, other)

    view = incident_of(index, "shop", "oom-1")  # type: ignore[arg-type]
    assert view == IncidentView(
        namespace="shop", name="oom-1", uid="uid-oom-1", created_at=T0, remediation_mode=RemediationMode.SHADOW,
        phase=IncidentPhase.MITIGATING, deleting=False, anomaly_key="k1", alert_name="KubePodOOMKilled",
        source="alertmanager", has_decision=True, run_uid="run-uid", last_progress=T0,
    )
    assert incident_of(index, "shop", "absent") is None  # type: ignore[arg-type]
    assert incident_of(index, "elsewhere", "oom-1") is None  # type: ignore[arg-type]

    key = anomaly_key("KubePodOOMKilled", "checkout", "shop", "OOMKilled")
    peers = sorted(incidents_with_anomaly(index, "shop", key), key=lambda peer: peer.name)  # type: ignore[arg-type]
    assert [(peer.name, peer.uid, peer.phase, peer.active) for peer in peers] == [
        ("oom-1", "uid-oom-1", IncidentPhase.MITIGATING, True),
        ("oom-2", "uid-oom-2", IncidentPhase.DUPLICATE, False),
    ]
    assert peers[0] is view  # one object per Incident, under both of its keys
    assert incidents_with_anomaly(index, "other-namespace", key) == []  # type: ignore[arg-type]
    # Every Incident once, although each sits under two keys.
    assert sorted(view.name for view in all_incidents(index)) == ["oom-1", "oom-2", "slow-1"]  # type: ignore[arg-type]


async def test_an_incident_the_index_cannot_read_is_left_out() -> None:
    unreadable_phase = incident("odd", phase="Exploded")
    assert await indexed(unreadable_phase) is None
    no_timestamp = incident("odd")
    del no_timestamp["metadata"]["creationTimestamp"]
    assert await indexed(no_timestamp) is None


async def test_the_metrics_see_what_the_incident_and_run_indexes_hold() -> None:
    incidents = as_index(await indexed(incident("oom-1", phase="Investigating", decision={"id": "DEC-1"})))
    run = ObservedRun(
        namespace="shop", name="oom-1-1", uid="run-uid", created_at=T0, target_kind=TargetKind.DEPLOYMENT,
        target_name="checkout", mode=RunMode.SHADOW, requires_approval=False, state=RunState.RUNNING, started_at=T0,
    )
    view = live_view(incidents, {"shop": [run]})  # type: ignore[arg-type]
    [watched] = view.incidents
    assert (watched.name, watched.phase, watched.has_decision, watched.source, watched.run_uid) == (
        "oom-1", IncidentPhase.INVESTIGATING, True, "alertmanager", None,
    )
    [watched_run] = view.runs
    assert (watched_run.name, watched_run.state, watched_run.mode) == ("oom-1-1", RunState.RUNNING, RunMode.SHADOW)
    assert not watched_run.executing, "a Shadow Run never counts as executing an action"
