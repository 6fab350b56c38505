"""The Run resource: one remediation action moving through Flywheel's state machine.

Flywheel creates Runs from Incident decisions. The spec says what to do; the status
records where the Run is and a bounded journal of the steps taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import AwareDatetime, ConfigDict, Field, field_validator

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
    immutable_optional,
)
from flywheel.api.enums import RiskLevel, RunMode, RunState

TRACE_ID_PATTERN = r"^[0-9a-f]{32}$"
TRACE_ID_LENGTH = 32
INVALID_TRACE_ID = "0" * 32
ERROR_CODE_PATTERN = r"^E-[A-Z0-9]+(-[A-Z0-9]+)*$"
MAX_STEPS = 50
STEP_MESSAGE_MAX_LENGTH = 128
DETAIL_MAX_LENGTH = 4096
APPROVAL_TOKEN_ID_MAX_LENGTH = 64

_TRACE_ID_NOT_ZERO = CelRule(
    rule=f"self != '{INVALID_TRACE_ID}'",
    message="traceId must not be all zeros (W3C trace context)",
)


# --------------------------------------------------------------------------- spec


class RunTrigger(SpecModel):
    """What caused this Run, for the timeline."""

    type: str = Field(min_length=1, max_length=63, description="e.g. Incident, Manual.")
    ref: str | None = Field(
        default=None, max_length=253, description="Name of the triggering object, if any."
    )


class RunSpec(SpecModel):
    """The action to execute and its limits.

    What decides what happens (incidentRef, action with its target, riskLevel, requiresApproval,
    maxAttempts, verificationWindowSeconds, mode) and traceId are immutable: Flywheel binds them to its decision when it
    creates the Run (``flywheel.domain.run_binding``), and an edit is refused here already.
    """

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            immutable_optional("requiresApproval"),
            immutable_optional("maxAttempts"),
            immutable_optional("verificationWindowSeconds"),
        )
    )

    incident_ref: ObjectRef = Field(
        description="The Incident this Run remediates. Immutable.",
        json_schema_extra=cel_rules(immutable("incidentRef")),
    )
    action: Action = Field(
        description="The typed action to execute on the Incident's target. Immutable.",
        json_schema_extra=cel_rules(immutable("action")),
    )
    risk_level: RiskLevel = Field(
        description="low, medium, high or critical. Immutable.",
        json_schema_extra=cel_rules(immutable("riskLevel")),
    )
    requires_approval: bool = Field(default=False, description="Wait for an Approval before acting. Immutable.")
    mode: RunMode = Field(
        default=RunMode.AUTO,
        description="Auto acts; Shadow only runs a server-side dry-run. Immutable.",
        json_schema_extra=cel_rules(immutable("mode")),
    )
    timeout_seconds: int = Field(
        default=600, ge=10, le=86400, description="Deadline for the whole Run, from its start."
    )
    max_attempts: int = Field(default=2, ge=1, le=10, description="Attempts before the Run fails. Immutable.")
    verification_window_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86400,
        description=(
            "How long the symptom must stay gone after the rollout completes before the Run succeeds "
            "(added to timeoutSeconds); null: the operator's default. Immutable."
        ),
    )
    trace_id: str = Field(
        min_length=TRACE_ID_LENGTH,
        max_length=TRACE_ID_LENGTH,
        pattern=TRACE_ID_PATTERN,
        description="W3C trace id (32 lowercase hex) shared by logs and events of this Run. Immutable.",
        json_schema_extra=cel_rules(immutable("traceId"), _TRACE_ID_NOT_ZERO),
    )
    trigger: RunTrigger | None = Field(default=None, description="What caused this Run.")

    @field_validator("trace_id")
    @classmethod
    def _trace_id_not_zero(cls, value: str) -> str:
        if value == INVALID_TRACE_ID:
            raise ValueError(_TRACE_ID_NOT_ZERO.message)
        return value


# --------------------------------------------------------------------------- status


class RunStep(StatusModel):
    """One entry of the Run's journal."""

    seq: int = Field(ge=1, description="Position in the journal, from 1, never reused.")
    name: str = Field(
        min_length=1, max_length=128, description="What was done, e.g. execute, verify, approve."
    )
    result: str = Field(
        min_length=1, max_length=64, description="Outcome of the step, e.g. Succeeded, Failed."
    )
    at: AwareDatetime = Field(description="When the step completed.")
    latency_ms: int | None = Field(default=None, ge=0, description="How long the step took.")
    message: str | None = Field(
        default=None,
        max_length=STEP_MESSAGE_MAX_LENGTH,
        description="Short summary (128 characters at most).",
    )


class RunStatus(StatusModel):
    """Observed state of the Run, written by Flywheel only."""

    state: RunState | None = Field(
        default=None,
        description="Pending, WaitingApproval, Running, Verifying, Succeeded, Failed, Cancelled or TimedOut.",
    )
    attempt: int = Field(default=0, ge=0, description="Current attempt, from 1 once the action starts.")
    started_at: AwareDatetime | None = Field(default=None, description="When the Run started executing.")
    completed_at: AwareDatetime | None = Field(
        default=None, description="When the Run reached a final state."
    )
    timeout_at: AwareDatetime | None = Field(default=None, description="Deadline of the current wait.")
    heartbeat_at: AwareDatetime | None = Field(default=None, description="Last sign of progress.")
    error_code: str | None = Field(
        default=None,
        max_length=64,
        pattern=ERROR_CODE_PATTERN,
        description="Failure class, e.g. E-VERIFY-TIMEOUT, E-APPR-REJECTED.",
    )
    error_detail: str | None = Field(
        default=None, max_length=DETAIL_MAX_LENGTH, description="Failure details."
    )
    approval_ref: ObjectRef | None = Field(
        default=None, description="The Approval this Run waits or waited for."
    )
    approval_token_id: str | None = Field(
        default=None,
        max_length=APPROVAL_TOKEN_ID_MAX_LENGTH,
        description=(
            "Id of the approval token of the current attempt. The token itself (HS256, bound to this Run's "
            "uid, the approved action and the attempt) is kept by the operator, never in a resource; it is "
            "verified and spent right before each attempt acts."
        ),
    )
    steps: list[RunStep] = Field(
        default_factory=list,
        max_length=MAX_STEPS,
        description="The latest 50 journal entries; the full journal is in the history database.",
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


def short_step_message(text: str) -> str:
    """Whitespace collapsed and cut to 128 characters, marking the cut with an ellipsis."""
    compact = " ".join(text.split())
    if len(compact) <= STEP_MESSAGE_MAX_LENGTH:
        return compact
    return compact[: STEP_MESSAGE_MAX_LENGTH - 1] + "…"


def append_step(
    steps: Sequence[RunStep],
    *,
    name: str,
    result: str,
    at: datetime,
    latency_ms: int | None = None,
    message: str | None = None,
) -> list[RunStep]:
    """The journal with one more step, numbered after the last one and bounded to 50 entries.

    The oldest entries are dropped first; sequence numbers keep growing so that the
    history database (keyed by Run uid and seq) never sees one reused.
    """
    next_seq = max((step.seq for step in steps), default=0) + 1
    step = RunStep(
        seq=next_seq,
        name=name,
        result=result,
        at=at,
        latency_ms=latency_ms,
        message=short_step_message(message) if message is not None else None,
    )
    return [*steps, step][-MAX_STEPS:]


RUN = CustomResource(
    kind="Run",
    plural="runs",
    singular="run",
    short_names=("fwrun",),
    description=(
        "Run executes one typed remediation action for an Incident, with approval, "
        "verification and a bounded journal of its steps."
    ),
    spec_model=RunSpec,
    status_model=RunStatus,
    printer_columns=(
        PrinterColumn(name="State", json_path=".status.state"),
        PrinterColumn(name="Action", json_path=".spec.action.type"),
        PrinterColumn(name="Target", json_path=".spec.action.target.name"),
        PrinterColumn(name="Incident", json_path=".spec.incidentRef.name"),
        AGE_COLUMN,
    ),
)

__all__ = [
    "MAX_STEPS",
    "RUN",
    "STEP_MESSAGE_MAX_LENGTH",
    "RunSpec",
    "RunStatus",
    "RunStep",
    "RunTrigger",
    "append_step",
    "short_step_message",
]
