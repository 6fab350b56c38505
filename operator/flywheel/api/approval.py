"""The Approval resource: a human decision on a risky Run.

Flywheel creates an Approval with everything an approver needs to decide from
``kubectl describe``; the approver patches ``spec.decision`` and ``spec.reason``.
Who approved comes from the API server (admission webhook userInfo) and is recorded
in the status, never taken from a field the approver writes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, ConfigDict, Field, StringConstraints, model_validator

from flywheel.api.common import (
    AGE_COLUMN,
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
    cel_rules,
    immutable,
)
from flywheel.api.enums import ActionType, ApprovalDecision, ApprovalPhase, EscalationLevel, RiskLevel
from flywheel.api.incident import ANOMALY_KEY_LENGTH, ANOMALY_KEY_PATTERN

MAX_PREVIOUS_OUTCOMES = 10
MAX_DECIDED_GROUPS = 64
REASON_MAX_LENGTH = 1024
REASONING_MAX_LENGTH = 4096

GroupName = Annotated[str, StringConstraints(min_length=1, max_length=1024)]

_DECISION_IS_FINAL = CelRule(
    rule="!has(oldSelf.decision) || (has(self.decision) && self.decision == oldSelf.decision)",
    message="decision is immutable once set: it cannot be changed or removed",
    field_path=".decision",
)
_SUCCESSES_WITHIN_ATTEMPTS = CelRule(
    rule="self.successes <= self.attempts",
    message="successes cannot exceed attempts",
    field_path=".successes",
)


# --------------------------------------------------------------------------- spec


class PreviousOutcome(SpecModel):
    """How an action fared on this anomaly before."""

    model_config = ConfigDict(json_schema_extra=cel_rules(_SUCCESSES_WITHIN_ATTEMPTS))

    action: ActionType = Field(description="The action type.")
    attempts: int = Field(ge=0, description="Recorded attempts.")
    successes: int = Field(ge=0, description="Recorded successes.")

    @model_validator(mode="after")
    def _successes_within_attempts(self) -> PreviousOutcome:
        if self.successes > self.attempts:
            raise ValueError(_SUCCESSES_WITHIN_ATTEMPTS.message)
        return self


class AnomalySummary(SpecModel):
    """How often the anomaly behind this Run recurs."""

    key: str = Field(
        min_length=ANOMALY_KEY_LENGTH,
        max_length=ANOMALY_KEY_LENGTH,
        pattern=ANOMALY_KEY_PATTERN,
        description="Anomaly signature (16 hex characters).",
    )
    count_24h: int = Field(default=0, ge=0, description="Occurrences in the last 24 hours.")
    count_7d: int = Field(default=0, ge=0, description="Occurrences in the last 7 days.")


class ApprovalSpec(SpecModel):
    """What is to be approved, and the approver's answer. decision is final once set."""

    model_config = ConfigDict(json_schema_extra=cel_rules(_DECISION_IS_FINAL))

    # Immutable so that an approval cannot be pointed at another Run than the one it was made for.
    run_ref: ObjectRef = Field(
        description="The Run waiting for this decision. Immutable.",
        json_schema_extra=cel_rules(immutable("runRef")),
    )
    action: Action = Field(description="The action the Run will execute if approved.")
    risk_level: RiskLevel = Field(description="low, medium, high or critical.")
    reasoning: str | None = Field(
        default=None, max_length=REASONING_MAX_LENGTH, description="Why Flywheel chose this action."
    )
    escalation_level: EscalationLevel | None = Field(
        default=None, description="Why approval is needed: REPEAT, ESCALATE or PERMANENT_FIX."
    )
    anomaly: AnomalySummary | None = Field(default=None, description="Recurrence of the anomaly.")
    previous_outcomes: list[PreviousOutcome] = Field(
        default_factory=list,
        max_length=MAX_PREVIOUS_OUTCOMES,
        description="Earlier results of actions on this anomaly.",
    )
    expires_at: AwareDatetime = Field(
        description="After this time the Approval expires and the Run times out."
    )
    decision: ApprovalDecision | None = Field(
        default=None, description="Approve or Reject; set by the approver, final once set."
    )
    reason: str | None = Field(
        default=None, max_length=REASON_MAX_LENGTH, description="The approver's reason."
    )


# --------------------------------------------------------------------------- status


class ApprovalStatus(StatusModel):
    """Outcome of the Approval, written by Flywheel only."""

    phase: ApprovalPhase | None = Field(
        default=None, description="Pending, Approved, Rejected, Invalid or Expired."
    )
    decided_by: str | None = Field(
        default=None, max_length=1024, description="User who decided, as authenticated by the API server."
    )
    decided_groups: list[GroupName] = Field(
        default_factory=list,
        max_length=MAX_DECIDED_GROUPS,
        description="Groups of the user who decided, as authenticated by the API server.",
    )
    decided_at: AwareDatetime | None = Field(default=None, description="When the decision was taken.")
    message: str | None = Field(
        default=None, max_length=REASONING_MAX_LENGTH, description="Why the Approval is Invalid or Expired."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=MAX_CONDITIONS,
        description="Conditions, keyed by type.",
        json_schema_extra=LIST_MAP_BY_TYPE,
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the status was computed from."
    )


APPROVAL = CustomResource(
    kind="Approval",
    plural="approvals",
    singular="approval",
    short_names=("appr",),
    description=(
        "Approval asks a person to approve or reject a risky Run. Patch spec.decision "
        "(Approve or Reject) and spec.reason; the decision is final."
    ),
    spec_model=ApprovalSpec,
    status_model=ApprovalStatus,
    printer_columns=(
        PrinterColumn(name="Phase", json_path=".status.phase"),
        PrinterColumn(name="Run", json_path=".spec.runRef.name"),
        PrinterColumn(name="Decided By", json_path=".status.decidedBy"),
        AGE_COLUMN,
    ),
)

__all__ = [
    "APPROVAL",
    "AnomalySummary",
    "ApprovalSpec",
    "ApprovalStatus",
    "PreviousOutcome",
]
