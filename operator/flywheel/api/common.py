"""Building blocks shared by the Incident, Run and Approval API models.

The pydantic models here are the single source of truth for the custom resources:
handlers validate bodies with them and ``flywheel.api.crdgen`` turns them into the
CRD schemas. Constraints that only the API server can check (transition rules,
cross-field rules) are declared beside the fields as CEL rules, so the YAML in
``crds/`` never needs hand edits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from flywheel.api.enums import ActionType, ConditionStatus, TargetKind

GROUP = "flywheel.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "flywheel"

# Names of workloads and of Flywheel's own objects are DNS-1123 subdomains.
DNS1123_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1123_SUBDOMAIN_MAX_LENGTH = 253
# Namespaces are DNS-1123 labels.
DNS1123_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_LABEL_MAX_LENGTH = 63
# Object uids are UUIDs in practice; the API only promises an opaque string, so bound it loosely.
UID_MAX_LENGTH = 128

# metav1.Condition's own validation, so that conditions written here are accepted anywhere.
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_TYPE_MAX_LENGTH = 316
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
CONDITION_REASON_MAX_LENGTH = 1024
CONDITION_MESSAGE_MAX_LENGTH = 32768
MAX_CONDITIONS = 32


def camel_case(snake: str) -> str:
    """JSON name of a Python field: ``observed_generation`` → ``observedGeneration``.

    Unlike pydantic's ``to_camel``, a segment starting with a digit is kept as is, so
    ``count_24h`` becomes ``count24h`` (not ``count24H``), the spelling users read.
    """
    head, *rest = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest if part)


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, snake_case in Python.

    Both spellings are accepted on input so that tests and handlers may construct
    models by field name, while ``model_dump(mode="json")`` writes the wire format.
    """

    model_config = ConfigDict(
        alias_generator=camel_case,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class SpecModel(ApiModel):
    """Desired state written by users (or by Flywheel for Runs and Approvals).

    Unknown fields are refused: the API server prunes them anyway, so a typo in Python
    would otherwise silently disappear.
    """

    model_config = ConfigDict(extra="forbid")


class StatusModel(ApiModel):
    """Observed state written by Flywheel.

    Unknown fields are ignored, so that an older operator replica reading a status
    written by a newer one during a rolling upgrade does not fail.
    """

    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- CEL rules


CelReason = Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"]


@dataclass(frozen=True)
class CelRule:
    """One ``x-kubernetes-validations`` entry, evaluated by the API server.

    ``field_path`` (relative to the schema node carrying the rule, e.g. ``.alertName``)
    makes the API server report the error on that field instead of on the parent.
    """

    rule: str
    message: str
    field_path: str | None = None
    reason: CelReason | None = None

    def as_schema(self) -> dict[str, str]:
        entry = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            entry["fieldPath"] = self.field_path
        if self.reason is not None:
            entry["reason"] = self.reason
        return entry


def cel_rules(*rules: CelRule) -> dict[str, Any]:
    """``json_schema_extra`` for a field or a model carrying CEL rules."""
    return {"x-kubernetes-validations": [rule.as_schema() for rule in rules]}


def immutable(json_name: str) -> CelRule:
    """Transition rule, placed on a required field itself: its value can never change."""
    return CelRule(rule="self == oldSelf", message=f"{json_name} is immutable")


def immutable_optional(json_name: str) -> CelRule:
    """Transition rule for an optional field, placed on the parent object.

    A rule on the field itself only runs when the old and the new object both have it,
    so adding or removing the field would slip through; checking from the parent
    covers presence as well as value.
    """
    return CelRule(
        rule=(
            f"has(self.{json_name}) == has(oldSelf.{json_name}) && "
            f"(!has(self.{json_name}) || self.{json_name} == oldSelf.{json_name})"
        ),
        message=f"{json_name} is immutable: it cannot be added, changed or removed after creation",
        field_path=f".{json_name}",
    )


# Conditions are merged by type (server-side apply and strategic thinking alike).
LIST_MAP_BY_TYPE: dict[str, Any] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


# --------------------------------------------------------------------------- conditions


class Condition(StatusModel):
    """One observation about the object, following Kubernetes API conventions (metav1.Condition)."""

    type: str = Field(
        min_length=1,
        max_length=CONDITION_TYPE_MAX_LENGTH,
        pattern=CONDITION_TYPE_PATTERN,
        description="Kind of the condition in CamelCase, e.g. Ready or RedisDegraded.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=CONDITION_REASON_MAX_LENGTH,
        pattern=CONDITION_REASON_PATTERN,
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field(
        default="",
        max_length=CONDITION_MESSAGE_MAX_LENGTH,
        description="Human-readable details about the last transition.",
    )
    last_transition_time: AwareDatetime = Field(
        description="When the status last changed (not when the condition was last written)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this condition was computed from."
    )


def find_condition(conditions: Iterable[Condition], condition_type: str) -> Condition | None:
    """The condition of this type, if present."""
    return next((condition for condition in conditions if condition.type == condition_type), None)


def set_condition(conditions: Sequence[Condition], new: Condition) -> list[Condition]:
    """Conditions with ``new`` replacing the one of the same type (order kept, new ones appended).

    ``lastTransitionTime`` only moves when the status changes: re-writing the same status
    with a fresher reason or message keeps the original transition time, as the API
    conventions ask.
    """
    result: list[Condition] = []
    replaced = False
    for existing in conditions:
        if existing.type != new.type:
            result.append(existing)
            continue
        replaced = True
        if existing.status == new.status:
            result.append(new.model_copy(update={"last_transition_time": existing.last_transition_time}))
        else:
            result.append(new)
    if not replaced:
        result.append(new)
    return result


def new_condition(
    condition_type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    now: datetime,
    observed_generation: int | None = None,
) -> Condition:
    """Convenience constructor, validating type and reason against the API conventions."""
    return Condition(
        type=condition_type,
        status=status,
        reason=reason,
        message=message[:CONDITION_MESSAGE_MAX_LENGTH],
        last_transition_time=now,
        observed_generation=observed_generation,
    )


# --------------------------------------------------------------------------- references


class ObjectRef(SpecModel):
    """Reference to a Flywheel object in the same namespace, pinned to one incarnation by uid."""

    name: str = Field(
        min_length=1,
        max_length=DNS1123_SUBDOMAIN_MAX_LENGTH,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        description="Name of the referenced object (same namespace).",
    )
    uid: str = Field(
        min_length=1,
        max_length=UID_MAX_LENGTH,
        description="metadata.uid of the referenced object; a re-created object with the same name is another object.",
    )


class WorkloadRef(SpecModel):
    """A workload in the owning object's namespace."""

    kind: TargetKind = Field(description="Deployment, StatefulSet or DaemonSet.")
    name: str = Field(
        min_length=1,
        max_length=DNS1123_SUBDOMAIN_MAX_LENGTH,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        description="Name of the workload (a DNS-1123 subdomain).",
    )


# --------------------------------------------------------------------------- actions


class ActionParams(SpecModel):
    """Parameters of a remediation action; which ones apply depends on the action type."""

    replicas: int | None = Field(default=None, ge=1, description="Scale: the desired replica count.")
    to_revision: int | None = Field(
        default=None, ge=1, description="RolloutUndo: the revision to return to (default: the previous one)."
    )


_SCALE_NEEDS_REPLICAS = CelRule(
    rule="self.type != 'Scale' || (has(self.params) && has(self.params.replicas))",
    message="params.replicas is required when type is Scale",
    field_path=".params.replicas",
    reason="FieldValueRequired",
)
_REPLICAS_ONLY_FOR_SCALE = CelRule(
    rule="self.type == 'Scale' || !has(self.params) || !has(self.params.replicas)",
    message="params.replicas is only allowed when type is Scale",
    field_path=".params.replicas",
    reason="FieldValueForbidden",
)
_REVISION_ONLY_FOR_UNDO = CelRule(
    rule="self.type == 'RolloutUndo' || !has(self.params) || !has(self.params.toRevision)",
    message="params.toRevision is only allowed when type is RolloutUndo",
    field_path=".params.toRevision",
    reason="FieldValueForbidden",
)
_NO_SCALE_FOR_DAEMONSET = CelRule(
    rule="self.type != 'Scale' || self.target.kind != 'DaemonSet'",
    message="type Scale does not apply to a DaemonSet (it runs one Pod per eligible node and has no replicas); "
    "use RolloutRestart or RolloutUndo",
    field_path=".type",
    reason="FieldValueForbidden",
)


class Action(SpecModel):
    """A typed remediation from the action catalogue: never a free-form command."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            _SCALE_NEEDS_REPLICAS, _REPLICAS_ONLY_FOR_SCALE, _REVISION_ONLY_FOR_UNDO, _NO_SCALE_FOR_DAEMONSET
        )
    )

    type: ActionType = Field(description="RolloutRestart, Scale or RolloutUndo.")
    target: WorkloadRef = Field(description="The workload acted on, in the same namespace.")
    params: ActionParams | None = Field(default=None, description="Parameters for Scale and RolloutUndo.")

    @model_validator(mode="after")
    def _params_match_type(self) -> Action:
        # Mirrors the CEL rules above, so that Flywheel never builds an action the API server refuses.
        replicas = self.params.replicas if self.params else None
        to_revision = self.params.to_revision if self.params else None
        if self.type is ActionType.SCALE and replicas is None:
            raise ValueError(_SCALE_NEEDS_REPLICAS.message)
        if self.type is not ActionType.SCALE and replicas is not None:
            raise ValueError(_REPLICAS_ONLY_FOR_SCALE.message)
        if self.type is not ActionType.ROLLOUT_UNDO and to_revision is not None:
            raise ValueError(_REVISION_ONLY_FOR_UNDO.message)
        if self.type is ActionType.SCALE and self.target.kind is TargetKind.DAEMONSET:
            raise ValueError(_NO_SCALE_FOR_DAEMONSET.message)
        return self


# --------------------------------------------------------------------------- resource descriptions


@dataclass(frozen=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry shown by ``kubectl get``."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0

    def as_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        if self.priority:
            column["priority"] = self.priority
        return column


AGE_COLUMN = PrinterColumn(name="Age", json_path=".metadata.creationTimestamp", type="date")


@dataclass(frozen=True)
class CustomResource:
    """Everything that names one Flywheel kind: what the CRD says and what handlers need."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    spec_model: type[SpecModel]
    status_model: type[StatusModel]
    printer_columns: tuple[PrinterColumn, ...]
    group: str = GROUP
    version: str = VERSION
    categories: tuple[str, ...] = (CATEGORY,)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def crd_name(self) -> str:
        """``<plural>.<group>``, the CRD's metadata.name."""
        return f"{self.plural}.{self.group}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def manifest(
        self,
        *,
        name: str,
        spec: SpecModel,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """A body ready to create, with the spec in its wire format.

        Owner references are left to the caller (``kopf.adopt``), which knows the owner.
        """
        if not isinstance(spec, self.spec_model):
            raise TypeError(f"{self.kind} needs a {self.spec_model.__name__}, got {type(spec).__name__}")
        metadata: dict[str, Any] = {"name": name}
        if namespace is not None:
            metadata["namespace"] = namespace
        if labels:
            metadata["labels"] = dict(labels)
        if annotations:
            metadata["annotations"] = dict(annotations)
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": metadata,
            "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        }


__all__ = [
    "AGE_COLUMN",
    "API_VERSION",
    "CATEGORY",
    "DNS1123_LABEL_MAX_LENGTH",
    "DNS1123_LABEL_PATTERN",
    "DNS1123_SUBDOMAIN_MAX_LENGTH",
    "DNS1123_SUBDOMAIN_PATTERN",
    "GROUP",
    "LIST_MAP_BY_TYPE",
    "MAX_CONDITIONS",
    "UID_MAX_LENGTH",
    "VERSION",
    "Action",
    "ActionParams",
    "ApiModel",
    "CelRule",
    "Condition",
    "CustomResource",
    "ObjectRef",
    "PrinterColumn",
    "SpecModel",
    "StatusModel",
    "WorkloadRef",
    "camel_case",
    "cel_rules",
    "find_condition",
    "immutable",
    "immutable_optional",
    "new_condition",
    "set_condition",
]
