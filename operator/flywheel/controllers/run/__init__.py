"""The Run controller, one module per job (the package's names are what handlers and tests import).

- ``views``: the parsed Run, its Incident's view, the safety-limit view of its peers;
- ``ports``: the stores it acts through, as Protocols;
- ``consistency``: read-your-writes within the process (``RunGuard``, ``AdmittedRuns``);
- ``passes``: one pass's working state, its status patch and its merged Events;
- ``clocks``: deadlines, attempt starts, time-outs, heartbeats;
- the steps per state: ``admission`` (Pending), ``approval_wait`` (WaitingApproval),
  ``execution`` (Running), ``verification`` (Verifying);
- ``outcome``: recording a final Run's outcome and resolving its Incident, with the patches
  in ``incident_patches``;
- ``controller``: ``RunController``, the dispatcher.
"""

from flywheel.controllers.run.clocks import HEARTBEAT_INTERVAL, STALE_AFTER
from flywheel.controllers.run.consistency import GUARD_PATIENCE_SECONDS, AdmittedRuns, RunGuard
from flywheel.controllers.run.controller import MAX_HOPS, RunController, RunPolicy
from flywheel.controllers.run.incident_patches import NOT_REMEDIATED, resolution_patch, unremediated_patch
from flywheel.controllers.run.outcome import UNREMEDIATED_STATES
from flywheel.controllers.run.passes import (
    APPROVAL_EVENT_REASONS,
    AWAITING_APPROVAL,
    OUTCOME_RECORDED,
    SUCCEEDED,
    THROTTLED,
    RunOutcome,
)
from flywheel.controllers.run.ports import (
    AttemptRecord,
    AttemptSink,
    IncidentStatusWriter,
    NamespaceGate,
    RepairRecorder,
    RunStores,
    WorkloadActions,
)
from flywheel.controllers.run.views import RunObject, last_seq, observed_run

__all__ = [
    "APPROVAL_EVENT_REASONS",
    "AWAITING_APPROVAL",
    "GUARD_PATIENCE_SECONDS",
    "HEARTBEAT_INTERVAL",
    "MAX_HOPS",
    "NOT_REMEDIATED",
    "OUTCOME_RECORDED",
    "STALE_AFTER",
    "SUCCEEDED",
    "THROTTLED",
    "UNREMEDIATED_STATES",
    "AdmittedRuns",
    "AttemptRecord",
    "AttemptSink",
    "IncidentStatusWriter",
    "NamespaceGate",
    "RepairRecorder",
    "RunController",
    "RunGuard",
    "RunObject",
    "RunOutcome",
    "RunPolicy",
    "RunStores",
    "WorkloadActions",
    "last_seq",
    "observed_run",
    "resolution_patch",
    "unremediated_patch",
]
