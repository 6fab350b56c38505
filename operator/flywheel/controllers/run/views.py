"""The parsed views of the bodies a Run pass reads: the Run itself, its Incident, its peers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flywheel.api.bodies import (
    ConditionBody,
    IncidentBody,
    IncidentStatusBody,
    ObjectMeta,
    RunBody,
    SignalBody,
    created_at,
    deleting,
    generation,
    incident_phase,
    own_status,
)
from flywheel.api.enums import (
    DecisionState,
    IncidentPhase,
    RemediationMode,
    RunMode,
    RunState,
    SignalStatus,
    TargetKind,
)
from flywheel.api.run import RunSpec, RunStatus, RunStep
from flywheel.api.times import parse_time
from flywheel.domain.actions import ProposedAction
from flywheel.domain.run_state import ObservedRun
from flywheel.domain.symptom import SignalFacts


@dataclass(frozen=True, slots=True)
class IncidentView:
    """What the operator keeps in memory of every Incident (Kopf's index): enough for a Run to
    see its Incident go away or turn remediation Off, and for the metrics to count it."""

    namespace: str
    name: str
    uid: str
    created_at: datetime
    remediation_mode: RemediationMode
    phase: IncidentPhase | None
    deleting: bool
    anomaly_key: str | None  # as recorded (status.anomaly.key)
    alert_name: str | None = None
    source: str | None = None
    has_decision: bool = False
    run_uid: str | None = None  # status.runRef.uid (or its name, before a uid is known)
    # Its alert signals as the intake recorded them (the symptom check and the re-check before acting).
    signals: tuple[SignalFacts, ...] = ()
    decision_state: DecisionState | None = None
    # The latest lastTransitionTime of its conditions (else its creation): the stuck figure's clock.
    last_progress: datetime | None = None

    @classmethod
    def from_body(cls, body: IncidentBody) -> IncidentView:
        meta = body["metadata"]
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        run_ref = status.get("runRef") or {}
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            created_at=created_at(meta),
            remediation_mode=RemediationMode(
                (spec.get("remediation") or {}).get("mode", RemediationMode.AUTO.value)
            ),
            phase=incident_phase(status),
            deleting=deleting(meta),
            anomaly_key=(status.get("anomaly") or {}).get("key"),
            alert_name=spec.get("alertName") or None,
            source=spec.get("source") or None,
            has_decision=bool(status.get("decision")),
            run_uid=(run_ref.get("uid") or run_ref.get("name")) if run_ref else None,
            signals=tuple(_signal(item) for item in spec.get("signals") or [] if item.get("alertName")),
            decision_state=_decision_state(status.get("decision")),
            last_progress=_last_progress(meta, status),
        )


def _signal(item: SignalBody) -> SignalFacts:
    ends_at = item.get("endsAt")
    return SignalFacts(
        alert_name=str(item["alertName"]),
        labels={str(key): str(value) for key, value in dict(item.get("labels") or {}).items()},
        status=SignalStatus(item.get("status") or SignalStatus.FIRING.value),
        ends_at=parse_time(ends_at) if ends_at else None,
        fingerprint=str(item["fingerprint"]) if item.get("fingerprint") else None,
        starts_at=parse_time(item["startsAt"]) if item.get("startsAt") else None,
    )


def _decision_state(decision: Any) -> DecisionState | None:
    state = decision.get("state") if isinstance(decision, Mapping) else None
    try:
        return DecisionState(str(state)) if state is not None else None
    except ValueError:
        return None


def _last_progress(meta: ObjectMeta, status: IncidentStatusBody) -> datetime:
    moments = [created_at(meta)]
    condition: ConditionBody
    for condition in status.get("conditions") or []:
        moment = condition.get("lastTransitionTime")
        if moment:
            moments.append(parse_time(moment))
    return max(moments)


@dataclass(frozen=True)
class RunObject:
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

