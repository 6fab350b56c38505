"""CRD generation from the pydantic API models.

Scenarios:
- drift: the committed ``crds/`` equals what the models generate, byte for byte;
- structure: no ``$ref``/``$defs``/``anyOf``/``title`` left, every node typed, free-form
  maps marked, OpenAPI 3.0 bounds, no defaults under status, every string/list/map
  bounded so that the API server's CEL cost estimation passes;
- contract: names, categories, printer columns, status subresource, and the CEL
  transition rules that make the documented fields immutable;
- the converter refuses what a structural schema cannot express;
- ``write_crds``/``check_crds`` on a scratch directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import Field

from flywheel.api.approval import APPROVAL
from flywheel.api.common import CustomResource, SpecModel
from flywheel.api.crdgen import (
    RESOURCES,
    UnsupportedSchemaError,
    build_crd,
    build_crds,
    check_crds,
    crd_file_name,
    render_crds,
    structural_schema,
    write_crds,
)
from flywheel.api.incident import INCIDENT
from flywheel.api.run import RUN

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED_CRDS = REPO_ROOT / "crds"
FILE_NAMES = ["flywheel.dev_incidents.yaml", "flywheel.dev_runs.yaml", "flywheel.dev_approvals.yaml"]
NON_STRUCTURAL_KEYS = {
    "$ref",
    "$defs",
    "anyOf",
    "allOf",
    "oneOf",
    "not",
    "title",
    "const",
    "examples",
    "uniqueItems",
}


def root_schema(resource: CustomResource) -> dict[str, Any]:
    schema: dict[str, Any] = build_crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with a readable path (``.spec.signals[].labels{}``)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def all_nodes() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for resource in RESOURCES:
        for path, node in walk(root_schema(resource)):
            yield resource.kind, path, node


def rules_at(resource: CustomResource, path: str) -> list[dict[str, str]]:
    nodes = dict(walk(root_schema(resource)))
    rules: list[dict[str, str]] = nodes[path].get("x-kubernetes-validations", [])
    return rules


# --------------------------------------------------------------------------- drift


def test_committed_crds_match_the_models() -> None:
    differing = check_crds(COMMITTED_CRDS)
    assert differing == [], f"crds/ is out of date for {differing}: run `flywheel crds` and commit the result"


def test_generation_is_deterministic() -> None:
    assert render_crds() == render_crds()
    assert list(render_crds()) == FILE_NAMES


def test_rendered_yaml_is_the_built_crd() -> None:
    for resource, (name, text) in zip(RESOURCES, render_crds().items(), strict=True):
        assert name == crd_file_name(resource)
        assert text.startswith("# Generated")
        assert yaml.safe_load(text) == build_crd(resource)
        assert "&id" not in text and "!!python" not in text


# --------------------------------------------------------------------------- structure


def test_no_non_structural_keywords_are_left() -> None:
    offending = [
        (kind, path, key) for kind, path, node in all_nodes() for key in NON_STRUCTURAL_KEYS & node.keys()
    ]
    assert offending == []


def test_every_node_has_a_type() -> None:
    untyped = [
        (kind, path)
        for kind, path, node in all_nodes()
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert untyped == []


def test_objects_declare_their_fields_or_are_marked_free_form() -> None:
    for kind, path, node in all_nodes():
        if node.get("type") != "object" or path == ".metadata":
            continue
        has_properties = "properties" in node
        has_map_values = isinstance(node.get("additionalProperties"), dict)
        free_form = node.get("x-kubernetes-preserve-unknown-fields") is True
        assert has_properties or has_map_values or free_form, (kind, path)
        assert not (has_properties and "additionalProperties" in node), (kind, path)
        assert not isinstance(node.get("additionalProperties"), bool), (kind, path)


def test_only_declared_free_form_maps_preserve_unknown_fields() -> None:
    # The API models have no free-form data today: every map is typed (labels) and
    # everything else is a declared object. A new free-form field must be deliberate.
    preserved = [
        (kind, path) for kind, path, node in all_nodes() if "x-kubernetes-preserve-unknown-fields" in node
    ]
    assert preserved == []


def test_bounds_use_the_openapi_3_0_form() -> None:
    for kind, path, node in all_nodes():
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(key, False), bool), (kind, path, key)


def test_optional_fields_are_nullable_except_enums() -> None:
    nodes = dict(walk(root_schema(INCIDENT)))
    assert nodes[".spec.alertName"]["nullable"] is True
    assert nodes[".status.anomaly.firstSeen"]["nullable"] is True
    # An explicit null on an enum would fail the API server's enum check; without
    # nullable it is pruned and reads as absent, which is what None means in Python.
    assert "nullable" not in nodes[".status.anomaly.escalationLevel"]
    assert not [(kind, path) for kind, path, node in all_nodes() if "enum" in node and node.get("nullable")]


def test_required_fields_are_never_nullable() -> None:
    for kind, path, node in all_nodes():
        for name in node.get("required", []):
            assert not node["properties"][name].get("nullable"), (kind, f"{path}.{name}")


def test_status_has_no_defaults() -> None:
    defaulted = [
        (kind, path) for kind, path, node in all_nodes() if path.startswith(".status") and "default" in node
    ]
    assert defaulted == []


def test_spec_defaults_are_the_documented_ones() -> None:
    defaults = {
        (kind, path): node["default"]
        for kind, path, node in all_nodes()
        if path.startswith(".spec") and "default" in node
    }
    assert defaults == {
        ("Incident", ".spec.severity"): "P2",
        ("Incident", ".spec.source"): "manual",
        ("Incident", ".spec.signals[].status"): "firing",
        ("Incident", ".spec.remediation.mode"): "Auto",
        ("Run", ".spec.requiresApproval"): False,
        ("Run", ".spec.mode"): "Auto",
        ("Run", ".spec.timeoutSeconds"): 600,
        ("Run", ".spec.maxAttempts"): 2,
        ("Approval", ".spec.anomaly.count24h"): 0,
        ("Approval", ".spec.anomaly.count7d"): 0,
    }


def test_strings_lists_and_maps_are_bounded_for_cel_cost_estimation() -> None:
    # The API server refuses CEL rules whose estimated cost is unbounded; bounding every
    # value (rather than only those a rule reads today) keeps new rules cheap as well.
    unbounded = []
    for kind, path, node in all_nodes():
        if not path.startswith((".spec", ".status")):
            continue  # apiVersion and kind are the API server's, not ours
        node_type = node.get("type")
        if node_type == "string" and not (
            {"maxLength", "enum"} & node.keys() or node.get("format") == "date-time"
        ):
            unbounded.append((kind, path))
        if node_type == "array" and "maxItems" not in node:
            unbounded.append((kind, path))
        if node_type == "object" and "additionalProperties" in node and "maxProperties" not in node:
            unbounded.append((kind, path))
    assert unbounded == []


def test_conditions_are_a_map_keyed_by_type() -> None:
    for resource in RESOURCES:
        conditions = dict(walk(root_schema(resource)))[".status.conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert {"type", "status", "reason", "lastTransitionTime"} <= set(conditions["items"]["required"])
        assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


def test_spec_is_required_and_status_has_no_kopf_field() -> None:
    for resource in RESOURCES:
        root = root_schema(resource)
        assert root["required"] == ["spec"]
        assert "kopf" not in root["properties"]["status"]["properties"]


# --------------------------------------------------------------------------- contract


def test_names_scope_and_subresources() -> None:
    crds = {crd["metadata"]["name"]: crd for crd in build_crds()}
    assert list(crds) == ["incidents.flywheel.dev", "runs.flywheel.dev", "approvals.flywheel.dev"]
    expected_names = {
        "incidents.flywheel.dev": ("Incident", "incidents", "incident", ["inc"]),
        "runs.flywheel.dev": ("Run", "runs", "run", ["fwrun"]),
        "approvals.flywheel.dev": ("Approval", "approvals", "approval", ["appr"]),
    }
    for crd_name, (kind, plural, singular, short_names) in expected_names.items():
        spec = crds[crd_name]["spec"]
        assert crds[crd_name]["apiVersion"] == "apiextensions.k8s.io/v1"
        assert spec["group"] == "flywheel.dev"
        assert spec["scope"] == "Namespaced"
        assert spec["names"] == {
            "kind": kind,
            "listKind": f"{kind}List",
            "plural": plural,
            "singular": singular,
            "shortNames": short_names,
            "categories": ["flywheel"],
        }
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize(
    ("resource", "columns"),
    [
        (
            INCIDENT,
            [
                ("Phase", ".status.phase"),
                ("Alert", ".spec.alertName"),
                ("Service", ".spec.service"),
                ("Escalation", ".status.anomaly.escalationLevel"),
                ("24h", ".status.anomaly.count24h"),
                ("Run", ".status.runRef.name"),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
        (
            RUN,
            [
                ("State", ".status.state"),
                ("Action", ".spec.action.type"),
                ("Target", ".spec.action.target.name"),
                ("Incident", ".spec.incidentRef.name"),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
        (
            APPROVAL,
            [
                ("Phase", ".status.phase"),
                ("Run", ".spec.runRef.name"),
                ("Decided By", ".status.decidedBy"),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
    ],
)
def test_printer_columns(resource: CustomResource, columns: list[tuple[str, str]]) -> None:
    printed = build_crd(resource)["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(column["name"], column["jsonPath"]) for column in printed] == columns
    nodes = dict(walk(root_schema(resource)))
    for column in printed:
        if column["name"] == "Age":
            assert column["type"] == "date"
            continue
        # Every column points at a real field, with the field's type.
        assert column["type"] == nodes[column["jsonPath"]]["type"], column


@pytest.mark.parametrize(
    ("resource", "path", "field"),
    [
        (INCIDENT, ".spec.service", "service"),
        (INCIDENT, ".spec.targetRef", "targetRef"),
        (RUN, ".spec.incidentRef", "incidentRef"),
        (RUN, ".spec.traceId", "traceId"),
        (RUN, ".spec.mode", "mode"),
        (APPROVAL, ".spec.runRef", "runRef"),
    ],
)
def test_required_immutable_fields_carry_a_transition_rule(
    resource: CustomResource, path: str, field: str
) -> None:
    assert {"rule": "self == oldSelf", "message": f"{field} is immutable"} in rules_at(resource, path)


@pytest.mark.parametrize("field", ["alertName", "errorType"])
def test_optional_immutable_incident_fields_are_checked_from_the_spec(field: str) -> None:
    (rule,) = [rule for rule in rules_at(INCIDENT, ".spec") if rule.get("fieldPath") == f".{field}"]
    assert "oldSelf" in rule["rule"]
    assert f"has(self.{field}) == has(oldSelf.{field})" in rule["rule"]
    assert rule["message"].startswith(f"{field} is immutable")


def test_the_fields_that_decide_a_run_are_immutable() -> None:
    # Bound to Flywheel's decision (flywheel.domain.run_binding): an edit is refused by the API server.
    for field_name in ("action", "riskLevel"):
        assert any(rule["rule"] == "self == oldSelf" for rule in rules_at(RUN, f".spec.{field_name}")), field_name
    spec_rules = {rule["fieldPath"]: rule["rule"] for rule in rules_at(RUN, ".spec")}
    for field_name in ("requiresApproval", "maxAttempts"):
        assert f"oldSelf.{field_name}" in spec_rules[f".{field_name}"], field_name


def test_approval_decision_is_final_once_set() -> None:
    (rule,) = rules_at(APPROVAL, ".spec")
    assert rule["fieldPath"] == ".decision"
    assert "oldSelf.decision" in rule["rule"]
    assert rule["message"].startswith("decision is immutable")


def test_cross_namespace_target_is_refused_by_the_api_server() -> None:
    rules = rules_at(INCIDENT, ".spec.targetRef")
    (forbidden,) = [rule for rule in rules if rule.get("fieldPath") == ".namespace"]
    # "namespace" is a reserved word in CEL and must be escaped.
    assert forbidden["rule"] == "!has(self.__namespace__)"
    assert forbidden["reason"] == "FieldValueForbidden"
    assert forbidden["message"].startswith("targetRef.namespace is not allowed")


def test_every_rule_message_names_its_field() -> None:
    for kind, path, node in all_nodes():
        for rule in node.get("x-kubernetes-validations", []):
            named = rule.get("fieldPath", path).rsplit(".", 1)[-1]
            assert named in rule["message"], (kind, path, rule)


# --------------------------------------------------------------------------- converter


class _ConverterProbe(SpecModel):
    """A model using the constructs the converter rewrites."""

    annotations: dict[str, Any] = Field(default_factory=dict, description="Free-form.")
    ratio: float = Field(gt=0, lt=1)
    flavour: Literal["vanilla"] = "vanilla"
    maybe: int | None = None


def test_converter_rewrites_json_schema_2020_constructs() -> None:
    schema = structural_schema(_ConverterProbe, keep_defaults=True)
    properties = schema["properties"]
    assert schema["description"] == "A model using the constructs the converter rewrites."
    assert properties["annotations"] == {
        "description": "Free-form.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert properties["ratio"] == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 1,
        "exclusiveMaximum": True,
    }
    assert properties["flavour"] == {"type": "string", "enum": ["vanilla"], "default": "vanilla"}
    assert properties["maybe"] == {"type": "integer", "nullable": True}
    assert "additionalProperties" not in schema
    assert "default" not in structural_schema(_ConverterProbe, keep_defaults=False)["properties"]["flavour"]


class _Union(SpecModel):
    value: int | str


class _Untyped(SpecModel):
    value: Any


class _Set(SpecModel):
    value: set[str]


class _Duration(SpecModel):
    value: timedelta


@pytest.mark.parametrize("model", [_Union, _Untyped, _Set, _Duration])
def test_converter_refuses_what_is_not_structural(model: type[SpecModel]) -> None:
    with pytest.raises(UnsupportedSchemaError, match=model.__name__):
        structural_schema(model, keep_defaults=True)


# --------------------------------------------------------------------------- files


def test_write_then_check_is_clean(tmp_path: Path) -> None:
    written = write_crds(tmp_path / "crds")
    assert [path.name for path in written] == FILE_NAMES
    assert check_crds(tmp_path / "crds") == []
    assert [yaml.safe_load(path.read_text()) for path in written] == build_crds()


def test_check_reports_missing_changed_and_stale_files(tmp_path: Path) -> None:
    assert check_crds(tmp_path / "absent") == sorted(FILE_NAMES)
    write_crds(tmp_path)
    runs = tmp_path / "flywheel.dev_runs.yaml"
    runs.write_text(runs.read_text().replace("fwrun", "run"))
    (tmp_path / "flywheel.dev_retired.yaml").write_text("# an old kind\n")
    (tmp_path / "kustomization.yaml").write_text("resources: []\n")
    assert check_crds(tmp_path) == ["flywheel.dev_retired.yaml", "flywheel.dev_runs.yaml"]


def test_write_repairs_and_removes_stale_generated_files(tmp_path: Path) -> None:
    write_crds(tmp_path)
    (tmp_path / "flywheel.dev_runs.yaml").write_text("edited by hand\n")
    (tmp_path / "flywheel.dev_retired.yaml").write_text("# an old kind\n")
    (tmp_path / "kustomization.yaml").write_text("resources: []\n")
    write_crds(tmp_path)
    assert check_crds(tmp_path) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*FILE_NAMES, "kustomization.yaml"])
