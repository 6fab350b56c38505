"""Before anything else in a pass: is this Run one of Flywheel's own, bound to its decision?

Every pass over a Run that is not final verifies its binding (``flywheel.domain.run_binding``),
so every attempt is preceded by the check. A Run without a valid one — created by hand,
copied, recreated under the same name, or with a deciding field edited — ends Failed with
``E-RUN-UNTRUSTED`` and a Warning Event saying why, before it asks for an Approval or
touches the workload; nothing is recorded for it on its Incident or in the repair counts.
"""

from __future__ import annotations

from datetime import timedelta

from flywheel.api.enums import ConditionStatus, RunState
from flywheel.controllers.run.passes import OUTCOME_RECORDED, STEP_VERIFY_BINDING, RunPass
from flywheel.controllers.run_binding import RunBinder
from flywheel.domain.approval import Refusal
from flywheel.domain.run_binding import BINDING_PENDING
from flywheel.domain.run_state import RunErrorCode

UNTRUSTED_EVENT_REASON = "RunUntrusted"
# The Incident controller binds a Run right after creating it; a Run that saw its first pass
# in between waits this long for it (the driver comes back), then fails like any unbound Run.
BINDING_GRACE = timedelta(seconds=60)


class TrustCheck:
    """Fails a Run that is not bound to a decision of Flywheel's."""

    def __init__(self, binder: RunBinder | None) -> None:
        self._binder = binder

    async def refused(self, ctx: RunPass) -> bool:
        """True when the pass must not go on: the Run is untrusted (and is now Failed), or its
        binding is still on its way (Flywheel's own proposal, created a moment ago)."""
        if self._binder is None:
            return False
        verdict = await self._binder.verify(ctx.run.binding_body())
        if not isinstance(verdict, Refusal):
            return False
        if verdict.rule == BINDING_PENDING and ctx.now - ctx.run.created_at < BINDING_GRACE:
            return True
        message = f"not executed, the workload was not touched: {verdict}"
        if not ctx.move(RunState.FAILED, STEP_VERIFY_BINDING, "Refused", message, code=RunErrorCode.RUN_UNTRUSTED):
            return True
        ctx.event("Warning", UNTRUSTED_EVENT_REASON, message)
        # Not Flywheel's Run: it says nothing about the Incident or the action's track record.
        ctx.condition(OUTCOME_RECORDED, ConditionStatus.TRUE, "NothingToRecord",
                      "not a repair attempt: the Run is not bound to a Flywheel decision")
        return True


__all__ = ["UNTRUSTED_EVENT_REASON", "TrustCheck"]
