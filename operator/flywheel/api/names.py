"""Names more than one part of the operator reads or writes on an Incident.

The Incident controller writes them, the Run controller resolves the Incident with them, the
handlers and the metrics read them: they belong to the resource, not to one controller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from flywheel.api.enums import IncidentPhase

# Phases of an Incident still being worked on, and phases it never leaves.
# NotRemediated stays active: it still owns its anomaly (new occurrences become its Duplicates)
# and waits for a person.
ACTIVE_PHASES: Final = frozenset(
    {None, IncidentPhase.INVESTIGATING, IncidentPhase.MITIGATING, IncidentPhase.NOT_REMEDIATED}
)
FINAL_PHASES: Final = frozenset({IncidentPhase.RESOLVED, IncidentPhase.CLOSED})

# Condition types on an Incident.
ANOMALY_RECORDED: Final = "AnomalyRecorded"
DEDUPLICATED: Final = "Duplicate"
DECIDED: Final = "Decided"
REMEDIATION_STARTED: Final = "RemediationStarted"
RESOLVED: Final = "Resolved"

# Event reasons: the recurrence counts and the Run's creation ride on the pass's DecisionReady
# (or the counts on its next Normal Event, see IncidentOutcome.events_to_post).
ANOMALY_EVENT_REASON: Final = "AnomalyRecorded"
DECISION_EVENT_REASON: Final = "DecisionReady"
RUN_CREATED_EVENT_REASON: Final = "RunCreated"

# Labels of the Runs an Incident starts.
LABEL_INCIDENT: Final = "flywheel.dev/incident"
LABEL_ANOMALY_KEY: Final = "flywheel.dev/anomaly-key"
# Why the decision requires approval, on the Run (shown in its AwaitingApproval condition).
APPROVAL_REASONS: Final = "flywheel.dev/approval-reasons"

# The longest Event message the API server accepts.
EVENT_MESSAGE_LIMIT: Final = 1024


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event a handler should post for the object its controller reconciled."""

    type: str  # Normal | Warning
    reason: str
    message: str


__all__ = [
    "ACTIVE_PHASES",
    "ANOMALY_EVENT_REASON",
    "ANOMALY_RECORDED",
    "DECIDED",
    "DECISION_EVENT_REASON",
    "DEDUPLICATED",
    "EVENT_MESSAGE_LIMIT",
    "FINAL_PHASES",
    "LABEL_ANOMALY_KEY",
    "LABEL_INCIDENT",
    "REMEDIATION_STARTED",
    "RESOLVED",
    "RUN_CREATED_EVENT_REASON",
    "Event",
]
