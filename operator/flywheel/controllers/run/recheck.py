"""The re-check right before the action is applied: has the symptom gone away meanwhile?

A Run that waited (for admission, for an approval) may find that every alert signal of its
Incident resolved since the decision: acting then would restart a healthy workload (the failure
Robusta's users reported in its issue #345). Such a Run is Cancelled with ``E-ALREADY-RESOLVED``
and the workload is not touched.

Crash-safe: a pass killed after applying the action but before storing it comes back with the
attempt already stamped on the workload; the stamp is read (only on this rare path) so that
such a Run is never reported as untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from flywheel.api.enums import RunState, TargetKind
from flywheel.controllers.run.passes import STEP_CANCEL, RunPass
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import RunErrorCode
from flywheel.domain.symptom import all_resolved
from flywheel.stores.workloads import ActionStamp, already_applied


class WorkloadReader(Protocol):
    """Reading a workload as stored (``flywheel.stores.workloads.WorkloadStore.read``)."""

    async def read(self, namespace: str, kind: TargetKind, name: str) -> Mapping[str, Any]: ...


def resolved_message(incident: IncidentView | None) -> str | None:
    """Why the Run must not act (every alert signal resolved), or None."""
    if incident is None or not all_resolved(incident.signals):
        return None
    names = ", ".join(sorted({signal.alert_name for signal in incident.signals}))
    return f"every alert of Incident {incident.name} resolved before the action ({names}): nothing done"


async def cancel_if_resolved(
    ctx: RunPass, incident: IncidentView | None, reader: WorkloadReader | None, stamp: ActionStamp
) -> bool:
    """Cancel the Run (E-ALREADY-RESOLVED) if its Incident's alerts all resolved; True if it did."""
    message = resolved_message(incident)
    if message is None:
        return False
    run = ctx.run
    if reader is not None:
        # Raises the store's errors: the pass is retried, nothing is decided on a guess.
        workload = await reader.read(run.namespace, run.action.target_kind, run.action.target_name)
        if already_applied(workload, stamp, run.action.type):
            return False  # applied by a pass that died before storing it: let the pass journal it
    if ctx.move(RunState.CANCELLED, STEP_CANCEL, "AlreadyResolved", message, code=RunErrorCode.ALREADY_RESOLVED):
        ctx.event("Normal", "AlreadyResolved", message)
    return True
