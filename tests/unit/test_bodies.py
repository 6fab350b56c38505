"""The raw-body TypedDicts and readers (flywheel.api.bodies) against the CRDs the models generate.

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
