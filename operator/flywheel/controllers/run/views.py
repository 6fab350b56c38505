"""The parsed shapes of a Run: whole (``RunObject``, its own pass) and slim (``observed_run``, the index).

The Incident a pass reads is ``flywheel.domain.incident.IncidentView`` (from the Incident index)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flywheel.api.bodies import (
    RunBody,
    created_at,
    deleting,
    generation,
    own_status,
)
from flywheel.api.enums import (
    RunMode,
    RunState,
    TargetKind,
)
from flywheel.api.run import RunSpec, RunStatus, RunStep
from flywheel.api.times import parse_time
from flywheel.domain.actions import ProposedAction
from flywheel.domain.run_state import ObservedRun


@dataclass(frozen=True)
class RunObject:
    """The whole Run, spec and status validated by their models: what its own pass reads and writes back."""

    name: str
    namespace: str
    uid: str
    generation: int
    created_at: datetime
    labels: Mapping[str, str]
    deleting: bool
    spec: RunSpec
    status: RunStatus
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: RunBody) -> RunObject:
        """Parse a Run; raises ``ValueError`` (pydantic's ValidationError) for an invalid one."""
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            generation=generation(meta),
            created_at=created_at(meta),
            labels=dict(meta.get("labels") or {}),
            deleting=deleting(meta),
            spec=RunSpec.model_validate(dict(body.get("spec") or {})),
            status=RunStatus.model_validate(own_status(body.get("status") or {}, RunStatus)),
            annotations=dict(meta.get("annotations") or {}),
        )

    @property
    def action(self) -> ProposedAction:
        params = self.spec.action.params
        return ProposedAction(
            type=self.spec.action.type,
            target_kind=self.spec.action.target.kind,
            target_name=self.spec.action.target.name,
            replicas=params.replicas if params else None,
            to_revision=params.to_revision if params else None,
        )

    def binding_body(self) -> dict[str, Any]:
        """What the binding covers, as a body (``flywheel.domain.run_binding.verify_binding``)."""
        return {
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid,
                         "annotations": dict(self.annotations)},
            "spec": self.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        }

    @property
    def shadow(self) -> bool:
        return self.spec.mode is RunMode.SHADOW

    def observed(self) -> ObservedRun:
        return ObservedRun(
            namespace=self.namespace,
            name=self.name,
            uid=self.uid,
            created_at=self.created_at,
            target_kind=self.spec.action.target.kind,
            target_name=self.spec.action.target.name,
            mode=self.spec.mode,
            requires_approval=self.spec.requires_approval,
            state=self.status.state,
            started_at=self.status.started_at,
        )


def observed_run(body: RunBody) -> ObservedRun:
    """The safety-limit view of a Run body (for the operator's index); ``KeyError``/``ValueError`` if invalid."""
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    action = spec["action"]
    state = status.get("state")
    started_at = status.get("startedAt")
    return ObservedRun(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta["uid"],
        created_at=created_at(meta),
        target_kind=TargetKind(action["target"]["kind"]),
        target_name=str(action["target"]["name"]),
        mode=RunMode(spec.get("mode", RunMode.AUTO.value)),
        requires_approval=bool(spec.get("requiresApproval", False)),
        state=RunState(state) if state else None,
        started_at=parse_time(started_at) if started_at else None,
    )


def last_seq(steps: Sequence[RunStep]) -> int:
    return max((step.seq for step in steps), default=0)

