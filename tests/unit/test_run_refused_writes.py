"""Writes refused as invalid (422) end a Run instead of holding it forever (issue 18).

Scenario matrix:
- a Run whose pass had a write refused (its Approval, its own status) ends: Failed from a state
  that acted, Cancelled from one that did not, ``E-INVALID-WRITE`` with the API server's causes,
  a Warning Event, and its Incident told it was not remediated; a final Run is left alone;
- the outcome's Incident write refused as invalid is not retried: condition
  ``IncidentUpdated=False`` (InvalidWrite), a Warning Event, and the outcome is recorded.
"""

from __future__ import annotations

import pytest

from flywheel.api.enums import RunState
from flywheel.errors import InvalidWriteError
from tests.unit.test_run_controller import DONE, IN_PROGRESS, Harness, RunObject, condition

pytestmark = pytest.mark.unit

REFUSAL = InvalidWriteError(
    "create approvals/x: 422 invalid", (("spec.previousOutcomes[0].action", "Unsupported value: \"restart_pod\""),)
)


def ended_by_refusal(h: Harness) -> None:
    outcome = h.controller.refused(RunObject.from_body(h.body), REFUSAL, now=h.now)
    for key, value in outcome.status_patch(RunObject.from_body(h.body).status).items():
        if value is None:
            h.body["status"].pop(key, None)
        else:
            h.body["status"][key] = value
    h.outcomes.append(outcome)


@pytest.mark.parametrize(("acted", "final"), [(False, RunState.CANCELLED), (True, RunState.FAILED)])
async def test_a_run_with_a_refused_write_ends_and_its_incident_is_told(acted: bool, final: RunState) -> None:
    h = Harness()
    if acted:
        h.workloads.facts = IN_PROGRESS
        await h.step()
        assert (await h.step(1)).state is RunState.VERIFYING
    ended_by_refusal(h)
    status = h.status
    assert status.state is final
    assert status.error_code == "E-INVALID-WRITE"
    assert condition(status, "Succeeded") == ("False", "InvalidWrite")
    assert "spec.previousOutcomes[0].action" in status.steps[-1].message
    assert "InvalidWrite" in h.events()

    status = await h.step(1)
    assert condition(status, "OutcomeRecorded")[0] == "True"
    incident = h.incidents.body
    assert incident is not None
    resolved = next(c for c in incident["status"]["conditions"] if c["type"] == "Resolved")
    assert (resolved["status"], resolved["reason"]) == ("False", "NotRemediated")


async def test_a_final_run_is_left_as_it_is() -> None:
    h = Harness()
    await h.step()
    await h.step(1)
    assert (await h.step(1)).state is RunState.SUCCEEDED
    before = dict(h.body["status"])
    assert h.controller.refused(RunObject.from_body(h.body), REFUSAL, now=h.now).status_patch(
        RunObject.from_body(h.body).status
    ) == {}
    assert h.body["status"] == before


async def test_an_incident_write_refused_as_invalid_is_not_retried() -> None:
    h = Harness()
    h.workloads.facts = DONE
    await h.step()
    h.incidents.fail_next = REFUSAL
    status = await h.step(1)
    assert status.state is RunState.SUCCEEDED
    assert condition(status, "OutcomeRecorded")[0] == "True", "recorded without the refused write"
    assert condition(status, "IncidentUpdated") == ("False", "InvalidWrite")
    assert "InvalidWrite" in h.events()
    writes = h.incidents.writes
    await h.step(5)
    assert h.incidents.writes == writes, "not retried"
