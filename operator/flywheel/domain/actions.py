"""The typed action catalogue: the only remediations Flywheel can ever perform.

An action is a value, never a command line: a type from :class:`ActionType`, the
workload it applies to (always in the Incident's own namespace) and the few
parameters that type accepts. Rules, advisors and approvers all speak in these
values, so nothing free-form can reach the executor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flywheel.api.enums import ActionType, TargetKind
from flywheel.errors import InvalidInputError

# RFC 1123 subdomain, the rule Kubernetes applies to workload names.
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAX_OBJECT_NAME_LENGTH = 253


ACTIONS_BY_KIND: Mapping[TargetKind, frozenset[ActionType]] = {
    TargetKind.DEPLOYMENT: frozenset(ActionType),
    TargetKind.STATEFULSET: frozenset(ActionType),
    # A DaemonSet runs one Pod per eligible node: it has no replica count to scale.
    TargetKind.DAEMONSET: frozenset({ActionType.ROLLOUT_RESTART, ActionType.ROLLOUT_UNDO}),
}
"""The action types each target kind supports; the API schema refuses the others (CEL on ``Action``)."""


def inapplicable_reason(action_type: ActionType, kind: TargetKind) -> str | None:
    """Why ``action_type`` cannot act on a workload of ``kind``; ``None`` when it can."""
    if action_type in ACTIONS_BY_KIND[kind]:
        return None
    supported = " or ".join(sorted(action.value for action in ACTIONS_BY_KIND[kind]))
    return (
        f"{action_type.value} does not apply to a {kind.value} (it runs one Pod per eligible node and "
        f"has no replicas); use {supported}"
    )


def _is_positive_int(value: object) -> bool:
    # bool is an int subclass; ``replicas: true`` must not silently mean 1.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate_action_params(
    action_type: ActionType,
    replicas: int | None,
    to_revision: int | None,
    *,
    field_prefix: str = "action",
) -> None:
    """Refuse parameters the action type does not take or values it cannot use.

    Raises :class:`InvalidInputError` naming ``<field_prefix>.params.<name>``.
    """
    replicas_field = f"{field_prefix}.params.replicas"
    revision_field = f"{field_prefix}.params.toRevision"
    if action_type is ActionType.SCALE:
        if replicas is None:
            raise InvalidInputError(replicas_field, "Scale requires a replica count")
        if not _is_positive_int(replicas):
            raise InvalidInputError(replicas_field, f"must be an integer >= 1, got {replicas!r}")
        if to_revision is not None:
            raise InvalidInputError(revision_field, "Scale does not take a revision")
    elif action_type is ActionType.ROLLOUT_UNDO:
        if replicas is not None:
            raise InvalidInputError(replicas_field, "RolloutUndo does not take a replica count")
        if to_revision is not None and not _is_positive_int(to_revision):
            raise InvalidInputError(revision_field, f"must be an integer >= 1, got {to_revision!r}")
    elif action_type is ActionType.ROLLOUT_RESTART:
        if replicas is not None:
            raise InvalidInputError(replicas_field, "RolloutRestart takes no parameters")
        if to_revision is not None:
            raise InvalidInputError(revision_field, "RolloutRestart takes no parameters")
    else:  # pragma: no cover - ActionType is closed; a new member must be handled here.
        raise InvalidInputError(f"{field_prefix}.type", f"unsupported action type {action_type!r}")


def validate_object_name(name: object, *, field: str) -> str:
    """Return ``name`` if it is a valid Kubernetes object name, else raise naming ``field``."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError(field, "must be a non-empty string")
    if len(name) > _MAX_OBJECT_NAME_LENGTH or not _OBJECT_NAME.match(name):
        raise InvalidInputError(field, f"{name!r} is not a valid Kubernetes object name")
    return name


def _params_dict(replicas: int | None, to_revision: int | None) -> dict[str, int]:
    params: dict[str, int] = {}
    if replicas is not None:
        params["replicas"] = replicas
    if to_revision is not None:
        params["toRevision"] = to_revision
    return params


def _describe(action_type: ActionType, target: str, replicas: int | None, to_revision: int | None) -> str:
    if action_type is ActionType.SCALE:
        return f"scale {target} to {replicas} replicas"
    if action_type is ActionType.ROLLOUT_UNDO:
        revision = f"revision {to_revision}" if to_revision is not None else "the previous revision"
        return f"roll {target} back to {revision}"
    return f"restart the rollout of {target}"


@dataclass(frozen=True, slots=True)
class IncidentTarget:
    """The workload an Incident names, in the Incident's own namespace.

    The only thing any action for that Incident may touch.
    """

    namespace: str
    kind: TargetKind
    name: str

    def __post_init__(self) -> None:
        validate_object_name(self.namespace, field="metadata.namespace")
        if not isinstance(self.kind, TargetKind):
            raise InvalidInputError("spec.targetRef.kind", f"unsupported target kind {self.kind!r}")
        validate_object_name(self.name, field="spec.targetRef.name")

    def __str__(self) -> str:
        return f"{self.kind.value}/{self.name} in namespace {self.namespace}"


@dataclass(frozen=True, slots=True)
class ActionTemplate:
    """An action without a target, as a rule states it ("scale to 3 replicas")."""

    type: ActionType
    replicas: int | None = None
    to_revision: int | None = None

    def __post_init__(self) -> None:
        validate_action_params(self.type, self.replicas, self.to_revision)

    @property
    def params(self) -> dict[str, int]:
        """Parameters in the Run's wire format (``replicas``, ``toRevision``); empty when none."""
        return _params_dict(self.replicas, self.to_revision)

    def bind(self, target_kind: TargetKind, target_name: str) -> ProposedAction:
        """This action applied to one workload."""
        return ProposedAction(
            type=self.type,
            target_kind=target_kind,
            target_name=target_name,
            replicas=self.replicas,
            to_revision=self.to_revision,
        )

    def describe(self) -> str:
        return _describe(self.type, "the target", self.replicas, self.to_revision)


@dataclass(frozen=True, slots=True)
class ProposedAction:
    """A fully specified remediation of one workload in the Incident's namespace.

    The namespace is deliberately absent: an action can only ever apply to the
    namespace of the Incident (and Run) that carries it.
    """

    type: ActionType
    target_kind: TargetKind
    target_name: str
    replicas: int | None = None
    to_revision: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.type, ActionType):
            raise InvalidInputError("action.type", f"unknown action type {self.type!r}")
        if not isinstance(self.target_kind, TargetKind):
            raise InvalidInputError("action.target.kind", f"unsupported target kind {self.target_kind!r}")
        validate_object_name(self.target_name, field="action.target.name")
        validate_action_params(self.type, self.replicas, self.to_revision)
        reason = inapplicable_reason(self.type, self.target_kind)
        if reason is not None:
            raise InvalidInputError("action.type", reason)

    @property
    def params(self) -> dict[str, int]:
        """Parameters in the Run's wire format (``replicas``, ``toRevision``); empty when none."""
        return _params_dict(self.replicas, self.to_revision)

    @property
    def template(self) -> ActionTemplate:
        """The action without its target, e.g. to compare what two advisors proposed."""
        return ActionTemplate(self.type, self.replicas, self.to_revision)

    def to_run_action(self) -> dict[str, Any]:
        """The ``action`` object of a Run's spec and of ``status.decision`` (wire names).

        ``params`` is left out when the action takes none, as the API schema expects.
        """
        action: dict[str, Any] = {
            "type": self.type.value,
            "target": {"kind": self.target_kind.value, "name": self.target_name},
        }
        if self.params:
            action["params"] = self.params
        return action

    def describe(self) -> str:
        """A short human sentence, e.g. ``scale Deployment/web to 3 replicas``."""
        return _describe(
            self.type, f"{self.target_kind.value}/{self.target_name}", self.replicas, self.to_revision
        )


def effective_replicas(requested: int, current: int, maximum: int) -> int:
    """The replica count a Scale action really sets.

    Remediation only ever adds capacity: the result is never below ``current`` (a
    rule written for a small service must not shrink a big one) and never above
    ``maximum``. When the workload already runs more than ``maximum`` replicas the
    current count wins, i.e. the action changes nothing, because lowering it would
    be a scale-down nobody asked for.
    """
    if not _is_positive_int(requested):
        raise InvalidInputError("params.replicas", f"must be an integer >= 1, got {requested!r}")
    if isinstance(current, bool) or not isinstance(current, int) or current < 0:
        raise InvalidInputError("currentReplicas", f"must be an integer >= 0, got {current!r}")
    if not _is_positive_int(maximum):
        raise InvalidInputError("maxReplicas", f"must be an integer >= 1, got {maximum!r}")
    return max(current, min(requested, maximum))
