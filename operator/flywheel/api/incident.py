"""The Incident resource: something is wrong with a workload, and Flywheel should act on it.

SREs and the Alertmanager intake write the spec; Flywheel writes the status
(recurrence summary, decision, the Run it started, conditions).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, ConfigDict, Field, StringConstraints, field_validator

from flywheel.api.common import (
    AGE_COLUMN,
    DNS1123_LABEL_MAX_LENGTH,
    DNS1123_SUBDOMAIN_MAX_LENGTH,
    DNS1123_SUBDOMAIN_PATTERN,
    LIST_MAP_BY_TYPE,
    MAX_CONDITIONS,
    Action,
    CelRule,
    Condition,
    CustomResource,
    ObjectRef,
    PrinterColumn,
    SpecModel,
    StatusModel,
    WorkloadRef,
    cel_rules,
    immutable,
    immutable_optional,
)
from flywheel.api.enums import (
    DecisionSource,
    DecisionState,
    Disposition,
    EscalationLevel,
    IncidentPhase,
    RemediationMode,
    RiskLevel,
    Severity,
    SignalStatus,
)

MAX_SIGNALS = 100
MAX_SIGNAL_LABELS = 64
SUMMARY_MAX_LENGTH = 2048
NOTE_MAX_LENGTH = 4096
ANOMALY_KEY_PATTERN = r"^[0-9a-f]{16}$"
ANOMALY_KEY_LENGTH = 16
DECISION_ID_PATTERN = r"^DEC-[0-9a-f]{12}$"
DECISION_ID_LENGTH = 16

TARGET_NAMESPACE_FORBIDDEN = (
    "targetRef.namespace is not allowed: Flywheel only acts in the Incident's own namespace"
)

LabelValue = Annotated[str, StringConstraints(max_length=1024)]


# --------------------------------------------------------------------------- spec


class Signal(SpecModel):
    """One alert that fired (or resolved) for this Incident."""

    alert_name: str = Field(
        min_length=1, max_length=253, description="The alert's name (Alertmanager alertname)."
    )
    labels: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=MAX_SIGNAL_LABELS, description="The alert's labels."
    )
    starts_at: AwareDatetime = Field(description="When the alert started firing.")
    ends_at: AwareDatetime | None = Field(default=None, description="When the alert resolved, if it did.")
    fingerprint: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Alertmanager's fingerprint; the intake appends signals with the same one to the same Incident.",
    )
    status: SignalStatus = Field(default=SignalStatus.FIRING, description="firing or resolved.")


class IncidentTargetRef(WorkloadRef):
    """The workload to act on, always in the Incident's own namespace."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="!has(self.__namespace__)",
                message=TARGET_NAMESPACE_FORBIDDEN,
                field_path=".namespace",
                reason="FieldValueForbidden",
            )
        )
    )

    # Declared only so that the API server can refuse it with a clear message: without it,
    # the field would be pruned silently and a user could believe a cross-namespace target works.
    namespace: str | None = Field(
        default=None,
        max_length=DNS1123_LABEL_MAX_LENGTH,
        description="Not allowed: Flywheel never acts outside the Incident's namespace.",
    )

    @field_validator("namespace")
    @classmethod
    def _refuse_namespace(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(TARGET_NAMESPACE_FORBIDDEN)
        return value


class Remediation(SpecModel):
    """How far Flywheel may go on its own for this Incident."""

    mode: RemediationMode = Field(
        default=RemediationMode.AUTO,
        description=(
            "Auto: act when policy allows. RequireApproval: always ask. "
            "Shadow: server-side dry-run only. Off: decide but never act."
        ),
    )


class Resolution(SpecModel):
    """Set by a person to resolve the Incident by hand."""

    note: str | None = Field(default=None, max_length=NOTE_MAX_LENGTH, description="What was done.")
    root_cause: str | None = Field(default=None, max_length=NOTE_MAX_LENGTH, description="Why it happened.")


class PermanentFix(SpecModel):
    """Marks that the root cause was fixed, which lifts the PERMANENT_FIX escalation."""

    description: str = Field(
        min_length=1, max_length=NOTE_MAX_LENGTH, description="What was fixed and where."
    )


class IncidentSpec(SpecModel):
    """What went wrong and where. alertName, service, errorType and targetRef are immutable."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(immutable_optional("alertName"), immutable_optional("errorType"))
    )

    alert_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="Name of the alert; part of the anomaly signature. Immutable.",
    )
    service: str = Field(
        min_length=1,
        max_length=253,
        description="The affected service; part of the anomaly signature. Immutable.",
        json_schema_extra=cel_rules(immutable("service")),
    )
    error_type: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="Kind of failure, e.g. OOMKilled; part of the anomaly signature. Immutable.",
    )
    severity: Severity = Field(default=Severity.P2, description="P0 (highest) to P3.")
    source: str = Field(
        default="manual",
        min_length=1,
        max_length=253,
        description="Who reported it: alertmanager, a person, a probe.",
    )
    summary: str | None = Field(
        default=None, max_length=SUMMARY_MAX_LENGTH, description="Free text for humans."
    )
    signals: list[Signal] = Field(
        default_factory=list,
        max_length=MAX_SIGNALS,
        description="Alerts seen for this Incident (at most 100).",
    )
    target_ref: IncidentTargetRef = Field(
        description="The workload to act on, in the Incident's namespace. Immutable.",
        json_schema_extra=cel_rules(immutable("targetRef")),
    )
    remediation: Remediation = Field(default_factory=Remediation, description="Remediation policy.")
    resolution: Resolution | None = Field(default=None, description="Set to resolve the Incident manually.")
    permanent_fix: PermanentFix | None = Field(
        default=None, description="Set once the root cause is fixed for good."
    )


# --------------------------------------------------------------------------- status


class AnomalyStatus(StatusModel):
    """Summary of how often this anomaly recurs; the counters themselves live in Redis."""

    key: str = Field(
        min_length=ANOMALY_KEY_LENGTH,
        max_length=ANOMALY_KEY_LENGTH,
        pattern=ANOMALY_KEY_PATTERN,
        description="Anomaly signature (16 hex characters).",
    )
    count_1h: int = Field(default=0, ge=0, description="Occurrences in the last hour.")
    count_24h: int = Field(default=0, ge=0, description="Occurrences in the last 24 hours.")
    count_7d: int = Field(default=0, ge=0, description="Occurrences in the last 7 days.")
    count_30d: int = Field(default=0, ge=0, description="Occurrences in the last 30 days.")
    first_seen: AwareDatetime | None = Field(default=None, description="First occurrence on record.")
    last_seen: AwareDatetime | None = Field(default=None, description="Latest occurrence on record.")
    escalation_level: EscalationLevel | None = Field(
        default=None, description="REPEAT, ESCALATE or PERMANENT_FIX; null below the first threshold."
    )
    auto_repair_count: int = Field(
        default=0, ge=0, description="Automatic repairs recorded for this anomaly."
    )
    permanent_fix_applied: bool = Field(default=False, description="A permanent fix is on record.")
    permanent_fix_description: str | None = Field(
        default=None,
        max_length=NOTE_MAX_LENGTH,
        description="What the permanent fix was (spec.permanentFix.description), kept with the flag.",
    )
    degraded: bool = Field(
        default=False, description="Redis was unavailable: counts are stale and will be recorded later."
    )


class Decision(StatusModel):
    """The remediation Flywheel chose and why."""

    id: str = Field(
        min_length=DECISION_ID_LENGTH,
        max_length=DECISION_ID_LENGTH,
        pattern=DECISION_ID_PATTERN,
        description="DEC- followed by 12 hex characters.",
    )
    state: DecisionState = Field(description="Init, Analyzing, Ready, Executing, Completed or Error.")
    sequence: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Which decision of the Incident this is (1, then 2, 3… after a failed Run); null means 1.",
    )
    source: DecisionSource | None = Field(default=None, description="rules, advisor or consensus.")
    action: Action | None = Field(default=None, description="The chosen action, once there is one.")
    risk_level: RiskLevel | None = Field(default=None, description="low, medium, high or critical.")
    confidence: float | None = Field(default=None, ge=0.0, le=1.0, description="0 to 1.")
    reasoning: str | None = Field(default=None, max_length=NOTE_MAX_LENGTH, description="Why this action.")
    matched_rule: str | None = Field(
        default=None, max_length=253, description="Rule (playbook) that matched."
    )
    error: str | None = Field(
        default=None,
        max_length=NOTE_MAX_LENGTH,
        description="Why the advisor was not used, or why deciding failed.",
    )


class IncidentStatus(StatusModel):
    """Observed state of the Incident, written by Flywheel only."""

    phase: IncidentPhase | None = Field(
        default=None, description="Investigating, Mitigating, NotRemediated, Resolved, Closed or Duplicate."
    )
    anomaly: AnomalyStatus | None = Field(default=None, description="Recurrence summary.")
    decision: Decision | None = Field(default=None, description="Current remediation decision.")
    run_ref: ObjectRef | None = Field(default=None, description="The Run executing the decision.")
    duplicate_of: str | None = Field(
        default=None,
        max_length=DNS1123_SUBDOMAIN_MAX_LENGTH,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        description="Name of the active Incident with the same anomaly key, when phase is Duplicate.",
    )
    disposition: Disposition | None = Field(default=None, description="How the Incident was resolved.")
    resolved_at: AwareDatetime | None = Field(default=None, description="When the Incident was resolved.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=MAX_CONDITIONS,
        description="Conditions, keyed by type.",
        json_schema_extra=LIST_MAP_BY_TYPE,
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the status was computed from."
    )


INCIDENT = CustomResource(
    kind="Incident",
    plural="incidents",
    singular="incident",
    short_names=("inc",),
    description=(
        "Incident reports a problem with a workload. Flywheel counts how often the same anomaly "
        "recurs, decides on a remediation and starts a Run for it."
    ),
    spec_model=IncidentSpec,
    status_model=IncidentStatus,
    printer_columns=(
        PrinterColumn(name="Phase", json_path=".status.phase"),
        PrinterColumn(name="Alert", json_path=".spec.alertName"),
        PrinterColumn(name="Service", json_path=".spec.service"),
        PrinterColumn(name="Escalation", json_path=".status.anomaly.escalationLevel"),
        PrinterColumn(
            name="24h",
            json_path=".status.anomaly.count24h",
            type="integer",
            description="Occurrences in 24 hours.",
        ),
        PrinterColumn(name="Run", json_path=".status.runRef.name"),
        AGE_COLUMN,
    ),
)

__all__ = [
    "INCIDENT",
    "MAX_SIGNALS",
    "TARGET_NAMESPACE_FORBIDDEN",
    "AnomalyStatus",
    "Decision",
    "IncidentSpec",
    "IncidentStatus",
    "IncidentTargetRef",
    "PermanentFix",
    "Remediation",
    "Resolution",
    "Signal",
]
