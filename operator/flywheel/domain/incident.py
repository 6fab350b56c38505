"""An Incident parsed from its body: whole (its own reconcile), or slim (kept in memory for every Incident).

Both are read from the same raw body (``flywheel.api.bodies.IncidentBody``) through the same
metadata readers. The intake's ``StoredIncident`` (``flywheel.domain.alerts``) is the third and
last shape, for a reason of its own; docs/architecture.md, "Shapes of an Incident and a Run", lists them.

The parsed Incident lives here, not in the API layer, because what it answers (its anomaly key,
its target, its alerts as the rules see them) is domain logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from flywheel.api.bodies import (
    ConditionBody,
    IncidentBody,
    IncidentStatusBody,
    ObjectMeta,
    SignalBody,
    created_at,
    deleting,
    generation,
    incident_phase,
    own_status,
)
from flywheel.api.enums import DecisionState, IncidentPhase, RemediationMode, SignalStatus
from flywheel.api.incident import IncidentSpec, IncidentStatus
from flywheel.api.names import ACTIVE_PHASES
from flywheel.api.times import parse_time
from flywheel.domain.actions import IncidentTarget
from flywheel.domain.funnel import ObjectSample
from flywheel.domain.rules import AlertFacts
from flywheel.domain.signature import anomaly_key
from flywheel.domain.symptom import SignalFacts


@dataclass
class IncidentObject:
    """The whole Incident, spec and status validated by their models: what its own pass reads and writes back."""

    name: str
    namespace: str
    uid: str
    generation: int
    created_at: datetime
    spec: IncidentSpec
    status: IncidentStatus

    @classmethod
    def from_body(cls, body: IncidentBody) -> IncidentObject:
        """``ValueError`` (pydantic's ValidationError) for an Incident the models refuse."""
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            generation=generation(meta),
            created_at=created_at(meta),
            spec=IncidentSpec.model_validate(dict(body.get("spec") or {})),
            status=IncidentStatus.model_validate(own_status(body.get("status") or {}, IncidentStatus)),
        )

    @property
    def anomaly_key(self) -> str:
        return anomaly_key(self.spec.alert_name, self.spec.service, self.namespace, self.spec.error_type)

    @property
    def target(self) -> IncidentTarget:
        return IncidentTarget(self.namespace, self.spec.target_ref.kind, self.spec.target_ref.name)

    @property
    def alerts(self) -> tuple[AlertFacts, ...]:
        """Its alerts as the catalogue's selector rules see them: each signal with its labels,
        or, without signals, one alert named by ``spec.alertName``."""
        if not self.spec.signals:
            return (AlertFacts(self.spec.alert_name, self.namespace),)
        return tuple(AlertFacts(signal.alert_name, self.namespace, signal.labels) for signal in self.spec.signals)

    @property
    def alert_names(self) -> tuple[str, ...]:
        names = [self.spec.alert_name] if self.spec.alert_name else []
        names += [signal.alert_name for signal in self.spec.signals if signal.alert_name not in names]
        return tuple(names)


@dataclass(frozen=True, slots=True)
class IncidentView:
    """What the operator keeps of every Incident in Kopf's index (10,000 of them: plain slotted fields,
    no models): the deduplication's peers, a Run's Incident (gone, deleting, remediation Off, its
    signals), and the health figures and metrics."""

    namespace: str
    name: str
    uid: str
    created_at: datetime
    phase: IncidentPhase | None
    remediation_mode: RemediationMode = RemediationMode.AUTO
    deleting: bool = False
    anomaly_key: str | None = None  # as recorded (status.anomaly.key)
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
        """``KeyError``/``ValueError`` for a body missing what the API server always sets, or with an unknown value."""
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

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    @property
    def has_run(self) -> bool:
        return self.run_uid is not None

    @property
    def waiting_without_run(self) -> bool:
        """Active, not a duplicate, and no Run remediates it (yet)."""
        return self.active and not self.has_run

    def sample(self) -> ObjectSample:
        return ObjectSample("Incident", self.namespace, self.name, self.uid)


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


def _decision_state(decision: object) -> DecisionState | None:
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


__all__ = ["IncidentObject", "IncidentView"]
