"""Enumerations shared by the API models, the domain logic and the stores.

String values are the wire format users see in resources and metrics.
"""

from __future__ import annotations

from enum import StrEnum


class Severity(StrEnum):
    P0 = "P0"
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


class TargetKind(StrEnum):
    DEPLOYMENT = "Deployment"
    STATEFULSET = "StatefulSet"
    DAEMONSET = "DaemonSet"


class RemediationMode(StrEnum):
    AUTO = "Auto"
    REQUIRE_APPROVAL = "RequireApproval"
    SHADOW = "Shadow"
    OFF = "Off"


class RunMode(StrEnum):
    AUTO = "Auto"
    SHADOW = "Shadow"


class IncidentPhase(StrEnum):
    INVESTIGATING = "Investigating"
    MITIGATING = "Mitigating"
    RESOLVED = "Resolved"
    CLOSED = "Closed"
    DUPLICATE = "Duplicate"
    # Its remediation ladder is exhausted: no further decision, a person must act.
    NOT_REMEDIATED = "NotRemediated"


class EscalationLevel(StrEnum):
    REPEAT = "REPEAT"
    ESCALATE = "ESCALATE"
    PERMANENT_FIX = "PERMANENT_FIX"


class DecisionState(StrEnum):
    INIT = "Init"
    ANALYZING = "Analyzing"
    READY = "Ready"
    EXECUTING = "Executing"
    COMPLETED = "Completed"
    ERROR = "Error"


class DecisionSource(StrEnum):
    RULES = "rules"
    ADVISOR = "advisor"
    CONSENSUS = "consensus"


class ActionType(StrEnum):
    ROLLOUT_RESTART = "RolloutRestart"
    SCALE = "Scale"
    ROLLOUT_UNDO = "RolloutUndo"


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class RunState(StrEnum):
    PENDING = "Pending"
    WAITING_APPROVAL = "WaitingApproval"
    RUNNING = "Running"
    VERIFYING = "Verifying"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    TIMED_OUT = "TimedOut"


class ApprovalDecision(StrEnum):
    APPROVE = "Approve"
    REJECT = "Reject"


class ApprovalPhase(StrEnum):
    PENDING = "Pending"
    APPROVED = "Approved"
    REJECTED = "Rejected"
    INVALID = "Invalid"
    EXPIRED = "Expired"


class Disposition(StrEnum):
    AUTO_REPAIR = "auto_repair"
    HUMAN_APPROVED = "human_approved"
    MANUAL_RESOLVED = "manual_resolved"
    COLD_START_TRUST = "cold_start_trust"
    TIMEOUT_IGNORED = "timeout_ignored"


class ConditionStatus(StrEnum):
    """Status of a condition, as in Kubernetes API conventions."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class SignalStatus(StrEnum):
    """State of one alert signal attached to an Incident (Alertmanager's vocabulary)."""

    FIRING = "firing"
    RESOLVED = "resolved"
