"""Generate the CustomResourceDefinitions in ``crds/`` from the pydantic API models.

pydantic's JSON Schema is close to what Kubernetes wants but not *structural*; the
API server refuses (or silently mis-handles) several of its constructs. The
conversion here:

- inlines ``$ref``/``$defs`` (CRD schemas cannot reference anything),
- turns ``anyOf: [T, {type: null}]`` into ``T`` with ``nullable: true``, except for
  enums: the API server checks ``enum`` even on a null value (kube-openapi never
  matches null against an enum), so an optional enum stays non-nullable and an
  explicit null is pruned (treated as absent) instead of being refused,
- drops ``title`` and ``examples``, turns ``const`` into a one-value ``enum``,
- rewrites JSON Schema 2020 exclusive bounds into the OpenAPI 3.0 boolean form,
- drops ``additionalProperties: false`` (structural schemas prune unknown fields
  anyway) and marks free-form maps with ``x-kubernetes-preserve-unknown-fields``,
- keeps CEL rules (``x-kubernetes-validations``) declared beside the fields, merging
  a model's own rules with those of the field that uses it,
- drops every default below ``status`` (the API server must never invent observed
  state) and ``null`` defaults everywhere.

Anything it cannot express structurally (unions, ``Any``, sets) is an error rather
than a silently wrong schema. Output is deterministic: same models, same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from flywheel.api.approval import APPROVAL
from flywheel.api.common import GROUP, CustomResource
from flywheel.api.incident import INCIDENT
from flywheel.api.run import RUN

RESOURCES: tuple[CustomResource, ...] = (INCIDENT, RUN, APPROVAL)

CRD_API_VERSION = "apiextensions.k8s.io/v1"
CRD_LABELS = {"app.kubernetes.io/part-of": "flywheel"}
FILE_HEADER = "# Generated from the pydantic models in flywheel.api by `flywheel crds`. Do not edit.\n"

# Formats that mean the same to pydantic and to the API server; others (e.g. pydantic's
# ISO 8601 "duration" versus Go's duration syntax) would validate differently.
_SUPPORTED_FORMATS = frozenset({"date-time", "date", "int32", "int64", "float", "double", "byte", "uuid"})
# Keywords with no structural equivalent; reaching one is a modelling mistake.
_UNSUPPORTED_KEYWORDS = frozenset(
    {
        "oneOf",
        "not",
        "patternProperties",
        "prefixItems",
        "propertyNames",
        "discriminator",
        "uniqueItems",
        "$defs",
    }
)
_DROPPED_KEYWORDS = frozenset({"title", "examples"})
_COMPOSITION_KEYWORDS = ("anyOf", "allOf", "$ref")

# Schema keys in the order a reader expects them (kubebuilder's order, roughly);
# anything else follows alphabetically.
_KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "nullable",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
)


_RULE_KEY_ORDER = ("rule", "message", "messageExpression", "fieldPath", "reason", "optionalOldSelf")


class UnsupportedSchemaError(ValueError):
    """A model uses a construct that a structural CRD schema cannot express."""


def _ordered(node: Mapping[str, Any]) -> dict[str, Any]:
    rank = {key: index for index, key in enumerate(_KEY_ORDER)}
    return dict(sorted(node.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def _ordered_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    rank = {key: index for index, key in enumerate(_RULE_KEY_ORDER)}
    return dict(sorted(rule.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def _combine(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` (a field's own keywords) over ``base`` (the referenced schema).

    The field's description and default win; CEL rules of both apply.
    """
    combined = dict(base)
    for key, value in overlay.items():
        if key == "x-kubernetes-validations":
            combined[key] = [*base.get(key, []), *value]
        else:
            combined[key] = value
    return combined


class _StructuralConverter:
    def __init__(self, definitions: Mapping[str, Any], *, keep_defaults: bool, where: str) -> None:
        self._definitions = definitions
        self._keep_defaults = keep_defaults
        self._where = where

    def _resolve(self, reference: str) -> Mapping[str, Any]:
        prefix = "#/$defs/"
        if not reference.startswith(prefix) or reference[len(prefix) :] not in self._definitions:
            raise UnsupportedSchemaError(f"{self._where}: cannot resolve {reference!r}")
        definition: Mapping[str, Any] = self._definitions[reference[len(prefix) :]]
        return definition

    def _flatten(self, node: Mapping[str, Any], path: str) -> tuple[dict[str, Any], bool]:
        """Expand ``$ref``, single-element ``allOf`` and ``anyOf[T, null]`` at this level."""
        flat = dict(node)
        nullable = False
        while any(keyword in flat for keyword in _COMPOSITION_KEYWORDS):
            if "anyOf" in flat:
                branches = flat.pop("anyOf")
                concrete = [branch for branch in branches if branch.get("type") != "null"]
                if len(branches) != 2 or len(concrete) != 1:
                    raise UnsupportedSchemaError(
                        f"{self._where}{path}: only 'T | None' unions are structural, got {branches!r}"
                    )
                nullable = True
                flat = _combine(concrete[0], flat)
            elif "allOf" in flat:
                parts = flat.pop("allOf")
                if len(parts) != 1:
                    raise UnsupportedSchemaError(f"{self._where}{path}: allOf with {len(parts)} parts")
                flat = _combine(parts[0], flat)
            else:
                flat = _combine(self._resolve(flat.pop("$ref")), flat)
        return flat, nullable

    def convert(self, node: Mapping[str, Any], path: str = "") -> dict[str, Any]:
        flat, nullable = self._flatten(node, path)
        out: dict[str, Any] = {}
        preserve_unknown = False
        for key, value in flat.items():
            if key in _DROPPED_KEYWORDS:
                continue
            if key in _UNSUPPORTED_KEYWORDS:
                raise UnsupportedSchemaError(f"{self._where}{path}: {key!r} has no structural equivalent")
            if key == "default":
                if value is not None and self._keep_defaults:
                    out[key] = value
            elif key == "const":
                out["enum"] = [value]
            elif key in ("exclusiveMinimum", "exclusiveMaximum"):
                if isinstance(value, bool):
                    out[key] = value
                else:
                    out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
                    out[key] = True
            elif key == "properties":
                out[key] = {name: self.convert(sub, f"{path}.{name}") for name, sub in value.items()}
            elif key == "items":
                if not isinstance(value, Mapping):
                    raise UnsupportedSchemaError(f"{self._where}{path}: tuple-style items are not structural")
                out[key] = self.convert(value, f"{path}[]")
            elif key == "additionalProperties":
                if value is True:
                    preserve_unknown = True
                elif isinstance(value, Mapping):
                    out[key] = self.convert(value, f"{path}{{}}")
                # False: pruning of unknown fields already does what it asked for.
            elif key == "x-kubernetes-validations":
                out[key] = [_ordered_rule(rule) for rule in value]
            elif key == "format":
                if value not in _SUPPORTED_FORMATS:
                    raise UnsupportedSchemaError(
                        f"{self._where}{path}: format {value!r} differs in Kubernetes"
                    )
                out[key] = value
            else:
                out[key] = value
        if nullable and "enum" not in out:
            out["nullable"] = True
        if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
            preserve_unknown = True
        if preserve_unknown:
            out["x-kubernetes-preserve-unknown-fields"] = True
        if "type" not in out:
            raise UnsupportedSchemaError(
                f"{self._where}{path or '.'}: no type (typing.Any or an unconstrained union?)"
            )
        return _ordered(out)


def structural_schema(model: type[BaseModel], *, keep_defaults: bool) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model``, as a CRD accepts it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.pop("$defs", {})
    converter = _StructuralConverter(definitions, keep_defaults=keep_defaults, where=model.__name__)
    return converter.convert(raw)


def openapi_v3_schema(resource: CustomResource) -> dict[str, Any]:
    """Root schema of one kind: the usual apiVersion/kind/metadata plus spec and status."""
    return _ordered(
        {
            "description": resource.description,
            "type": "object",
            "properties": {
                "apiVersion": {
                    "description": "The versioned schema of this representation of an object.",
                    "type": "string",
                },
                "kind": {"description": "The REST resource this object represents.", "type": "string"},
                "metadata": {"type": "object"},
                "spec": structural_schema(resource.spec_model, keep_defaults=True),
                "status": structural_schema(resource.status_model, keep_defaults=False),
            },
            "required": ["spec"],
        }
    )


def build_crd(resource: CustomResource) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, as plain JSON-compatible data."""
    crd = {
        "apiVersion": CRD_API_VERSION,
        "kind": "CustomResourceDefinition",
        "metadata": {"name": resource.crd_name, "labels": dict(CRD_LABELS)},
        "spec": {
            "group": resource.group,
            "names": {
                "kind": resource.kind,
                "listKind": resource.list_kind,
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": list(resource.categories),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": resource.version,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [column.as_crd() for column in resource.printer_columns],
                    "schema": {"openAPIV3Schema": openapi_v3_schema(resource)},
                }
            ],
        },
    }
    # A JSON round trip turns enum members and tuples into plain values and unshares
    # nested objects, so the YAML has neither Python tags nor anchors.
    result: dict[str, Any] = json.loads(json.dumps(crd))
    return result


def build_crds() -> list[dict[str, Any]]:
    """The CRDs of all Flywheel kinds: Incident, Run, Approval."""
    return [build_crd(resource) for resource in RESOURCES]


def crd_file_name(resource: CustomResource) -> str:
    """``<group>_<plural>.yaml``, kubebuilder's naming."""
    return f"{resource.group}_{resource.plural}.yaml"


class _BlockDumper(yaml.SafeDumper):
    """Safe YAML without anchors, with lists indented under their key like kubectl prints them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def render_crd(crd: Mapping[str, Any]) -> str:
    """YAML text of one CRD, header included."""
    body = yaml.dump(
        crd, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=100, allow_unicode=True
    )
    return FILE_HEADER + body


def render_crds() -> dict[str, str]:
    """File name → YAML text for every CRD, in RESOURCES order."""
    return {crd_file_name(resource): render_crd(build_crd(resource)) for resource in RESOURCES}


def _stale_files(directory: Path, expected: Mapping[str, str]) -> list[Path]:
    """Generated-looking files that no model produces any more (e.g. a renamed kind)."""
    return sorted(path for path in directory.glob(f"{GROUP}_*.yaml") if path.name not in expected)


def write_crds(directory: Path) -> list[Path]:
    """Write every CRD into ``directory`` (created if missing) and remove stale generated files.

    Returns the written paths. Files are only rewritten when their content changes, so
    timestamps stay put on a no-op run.
    """
    directory.mkdir(parents=True, exist_ok=True)
    expected = render_crds()
    written: list[Path] = []
    for name, text in expected.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    for stale in _stale_files(directory, expected):
        stale.unlink()
    return written


def check_crds(directory: Path) -> list[str]:
    """Names of files in ``directory`` that differ from what the models generate.

    Missing files, changed files and stale generated files all count; an empty list
    means ``crds/`` is up to date.
    """
    expected = render_crds()
    differing = [
        name
        for name, text in expected.items()
        if not (directory / name).is_file() or (directory / name).read_text(encoding="utf-8") != text
    ]
    if directory.is_dir():
        differing.extend(path.name for path in _stale_files(directory, expected))
    return sorted(differing)


__all__ = [
    "RESOURCES",
    "UnsupportedSchemaError",
    "build_crd",
    "build_crds",
    "check_crds",
    "crd_file_name",
    "openapi_v3_schema",
    "render_crd",
    "render_crds",
    "structural_schema",
    "write_crds",
]
