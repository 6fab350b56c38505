"""The raw-body TypedDicts and readers (flywheel.api.bodies) against the CRDs the models generate,
and the parsed shapes of one Incident read from one body.

What an operator would notice if it were wrong: a TypedDict key spelt unlike the API field
(``alertname`` for ``alertName``) type-checks every parser that reads it and reads nothing at
run time — a Run never seeing its Incident turn remediation Off, the metrics missing every
phase. So every key a body TypedDict names must be a property of the generated schema, at the
same place.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any, get_args, get_origin, get_type_hints, is_typeddict

import pytest

from flywheel.api.approval import APPROVAL, ApprovalStatus
from flywheel.api.bodies import (
    ApprovalBody,
    IncidentBody,
    RunBody,
    created_at,
    deleting,
    generation,
    incident_phase,
    own_status,
)
from flywheel.api.common import CustomResource
from flywheel.api.crdgen import openapi_v3_schema
from flywheel.api.enums import IncidentPhase
from flywheel.api.incident import INCIDENT
from flywheel.api.run import RUN
from flywheel.domain.alerts import StoredIncident
from flywheel.domain.incident import IncidentObject, IncidentView

pytestmark = pytest.mark.unit


def _typed_dict_of(annotation: Any) -> Any:
    """The TypedDict an annotation holds directly or as list items, else None."""
    if is_typeddict(annotation):
        return annotation
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        return item if is_typeddict(item) else None
    return None


def _unknown_keys(typed: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    if schema.get("type") == "array":
        schema = schema["items"]
    properties = schema.get("properties") or {}
    unknown = []
    for key, annotation in get_type_hints(typed).items():
        if key not in properties:
            unknown.append(f"{path}.{key}")
            continue
        nested = _typed_dict_of(annotation)
        if nested is not None:
            unknown += _unknown_keys(nested, properties[key], f"{path}.{key}")
    return unknown


@pytest.mark.parametrize(
    ("body", "resource"), [(IncidentBody, INCIDENT), (RunBody, RUN), (ApprovalBody, APPROVAL)], ids=["incident", "run", "approval"]
)
def test_every_key_of_a_body_typed_dict_is_a_field_of_its_crd(body: Any, resource: CustomResource) -> None:
    schema = openapi_v3_schema(resource)
    hints = get_type_hints(body)
    assert set(hints) <= set(schema["properties"])
    unknown = []
    for part in ("spec", "status"):
        nested = _typed_dict_of(hints[part])
        if nested is not None:
            unknown += _unknown_keys(nested, schema["properties"][part], part)
    assert unknown == []


def test_the_check_finds_a_misspelt_key() -> None:
    class Misspelt(typing.TypedDict, total=False):
        alertname: str

    assert _unknown_keys(Misspelt, openapi_v3_schema(INCIDENT)["properties"]["spec"], "spec") == ["spec.alertname"]


def test_the_readers_read_what_the_api_server_writes() -> None:
    meta = {"name": "a", "namespace": "n", "uid": "u", "creationTimestamp": "2025-03-01T12:00:00Z"}
    body = typing.cast(IncidentBody, {"metadata": meta})
    assert created_at(body["metadata"]).isoformat() == "2025-03-01T12:00:00+00:00"
    assert generation(body["metadata"]) == 1  # not counted yet
    assert generation(typing.cast(Any, {**meta, "generation": 3})) == 3
    assert not deleting(body["metadata"])
    assert deleting(typing.cast(Any, {**meta, "deletionTimestamp": "2025-03-01T12:01:00Z"}))
    assert incident_phase({}) is None
    assert incident_phase({"phase": "Mitigating"}) is IncidentPhase.MITIGATING
    with pytest.raises(ValueError, match="Bogus"):
        incident_phase({"phase": "Bogus"})


def test_own_status_keeps_only_the_fields_of_the_model() -> None:
    raw = {"phase": "Pending", "kopf": {"progress": {}}, "conditions": []}
    assert own_status(raw, ApprovalStatus) == {"phase": "Pending", "conditions": []}


def test_the_shapes_of_one_incident_read_the_same_body_alike() -> None:
    """The full parse, the index view and the intake's stored Incident agree on what they share."""
    labels = {"alertname": "KubePodCrashLooping", "namespace": "shop", "pod": "checkout-7d9f8-x2x4q",
              "container": "app", "severity": "warning"}
    body = typing.cast(IncidentBody, {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "Incident",
        "metadata": {"name": "checkout-crashloop", "namespace": "shop", "uid": "uid-1", "generation": 2,
                     "resourceVersion": "42", "creationTimestamp": "2025-03-01T12:00:00Z"},
        "spec": {"alertName": "KubePodCrashLooping", "service": "checkout", "errorType": "CrashLoopBackOff",
                 "severity": "P2", "source": "alertmanager", "summary": "checkout pods restart in a loop",
                 "targetRef": {"kind": "Deployment", "name": "checkout"},
                 "signals": [{"alertName": "KubePodCrashLooping", "labels": labels, "status": "firing",
                              "startsAt": "2025-03-01T11:58:00Z", "fingerprint": "5c7e9b1a2d3f4e60"}]},
        "status": {"phase": "Mitigating", "runRef": {"name": "checkout-crashloop-1", "uid": "run-1"},
                   "kopf": {"progress": {}}},
    })
    whole, view, stored = IncidentObject.from_body(body), IncidentView.from_body(body), StoredIncident.from_body(body)
    assert (whole.name, whole.uid, whole.created_at) == (view.name, view.uid, view.created_at)
    assert whole.status.phase is view.phase is stored.phase is IncidentPhase.MITIGATING
    assert whole.generation == 2
    assert whole.status.run_ref is not None and view.run_uid == whole.status.run_ref.uid == "run-1"
    assert [s.fingerprint for s in whole.spec.signals] == [s.fingerprint for s in view.signals] \
        == [s.fingerprint for s in stored.signals] == ["5c7e9b1a2d3f4e60"]
    assert view.signals[0].labels == dict(whole.spec.signals[0].labels) == labels
    assert stored.name == view.name and stored.resource_version == "42"
