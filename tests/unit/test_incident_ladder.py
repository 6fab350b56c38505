"""The remediation ladder and the decision states in the IncidentReconciler, through in-memory stand-ins.

The Run controller's report of a failed Run is the real ``unremediated_patch`` applied to the
stored Incident; the notifier is a recording stand-in of the ``Notifier`` port.

- a failed Run → decision 2 (new id, sequence 2), Run ``<incident>-2`` requiring approval,
  decision_ready notified once per decision; a double pass creates nothing twice;
- ``FLYWHEEL_LADDER_REQUIRES_APPROVAL=false``: the next Run acts on its own;
- the cap: NotRemediated, a Warning Event and ladder_exhausted once; no further Run, ever;
- a Duplicate of a Mitigating Incident counts and never starts a Run;
- advisors configured: the decision is written Analyzing before they are asked.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Any

import pytest

from flywheel.api.common import ObjectRef
from flywheel.api.enums import ActionType, IncidentPhase, RiskLevel
from flywheel.api.incident import Decision
from flywheel.controllers.incident import (
    AdvisorPanel,
    IncidentPolicy,
    IncidentReconciler,
    IncidentStores,
)
from flywheel.controllers.run import unremediated_patch
from flywheel.domain.actions import IncidentTarget
from flywheel.domain.advisor import AdvisorResult
from flywheel.domain.decision import decision_id
from flywheel.domain.ladder import LadderPolicy
from flywheel.domain.notifications import Notification
from flywheel.domain.rules import default_catalogue
from flywheel.stores.advisor_client import AdvisorEndpoint
from tests.unit.test_incident_controller import T0, World, incident_body

pytestmark = pytest.mark.unit

NAME = "checkout-crashloop"


class RecordingNotifier:
    def __init__(self) -> None:
        self.submitted: list[Notification] = []

    def submit(self, notification: Notification) -> None:
        self.submitted.append(notification)

    def kinds(self) -> list[str]:
        return [n.kind for n in self.submitted]

    def delivered_once(self) -> list[str | None]:
        """What a delivery that deduplicates by key would send."""
        seen: list[str | None] = []
        for n in self.submitted:
            if n.dedup_key not in seen:
                seen.append(n.dedup_key)
        return seen


def ladder_world(**ladder: Any) -> tuple[World, RecordingNotifier]:
    world = World()
    notifier = RecordingNotifier()
    world.reconciler = IncidentReconciler(
        IncidentPolicy(tenant=None, max_automatic_risk=RiskLevel.MEDIUM, advisor_timeout_seconds=5.0,
                       run_timeout_seconds=300, run_max_attempts=3, ladder=LadderPolicy(**ladder),
                       verification_window_seconds=120),
        IncidentStores(anomalies=world.counts, resources=world.objects, claims=world.claims,
                       catalogue=default_catalogue(), notifier=notifier),
    )
    world.add(incident_body(NAME))
    return world, notifier


def fail_current_run(world: World) -> None:
    """What the Run controller writes when the Incident's Run ends Failed."""
    body = world.body(NAME)
    ref = body["status"]["runRef"]
    patch = unremediated_patch(body, run_ref=ObjectRef(**ref), message=f"Run {ref['name']} failed: E-SYMPTOM-PERSISTS",
                               now=T0)
    assert patch is not None
    status = body["status"]
    status["conditions"] = patch["status"]["conditions"]
    status["decision"] = {**status["decision"], **patch["status"]["decision"]}


def run_named(world: World, name: str) -> dict[str, Any]:
    return next(r for r in world.runs() if r["metadata"]["name"] == name)


async def test_a_failed_run_gives_the_incident_its_second_decision_waiting_for_approval() -> None:
    world, notifier = ladder_world()
    await world.reconcile(NAME)
    assert run_named(world, f"{NAME}-1")["spec"]["verificationWindowSeconds"] == 120
    fail_current_run(world)
    assert world.body(NAME)["status"]["decision"]["state"] == "Completed"
    await world.reconcile(NAME, timedelta(seconds=5))
    status = world.body(NAME)["status"]
    assert status["decision"]["sequence"] == 2 and status["decision"]["state"] == "Ready"
    assert status["decision"]["id"] == decision_id(f"uid-{NAME}", 2)
    assert status["runRef"]["name"] == f"{NAME}-2" and status["phase"] == "Mitigating"
    second = run_named(world, f"{NAME}-2")
    assert second["spec"]["requiresApproval"] is True
    assert world.objects.creations == 2
    before = copy.deepcopy(status)
    await world.reconcile(NAME, timedelta(seconds=6))
    assert world.objects.creations == 2 and world.body(NAME)["status"]["runRef"] == before["runRef"]
    assert notifier.kinds() == ["decision_ready", "decision_ready"]
    assert notifier.delivered_once() == [f"decision_ready/{decision_id(f'uid-{NAME}', n)}" for n in (1, 2)]


async def test_a_pass_killed_before_its_status_write_creates_the_same_run_again() -> None:
    world, notifier = ladder_world()
    await world.reconcile(NAME)
    fail_current_run(world)
    stored = copy.deepcopy(world.body(NAME))
    await world.reconcile(NAME)
    world.add(stored)  # the status write was lost
    await world.reconcile(NAME)
    assert [r["metadata"]["name"] for r in world.runs()] == [f"{NAME}-1", f"{NAME}-2"]
    assert len(set(notifier.delivered_once())) == 2


async def test_the_ladder_may_climb_without_approval_when_allowed() -> None:
    world, _ = ladder_world(later_decisions_require_approval=False)
    await world.reconcile(NAME)
    fail_current_run(world)
    await world.reconcile(NAME)
    assert run_named(world, f"{NAME}-2")["spec"]["requiresApproval"] is False


async def test_failures_up_to_the_cap_leave_it_not_remediated_for_a_person() -> None:
    world, notifier = ladder_world(max_decisions=2)
    await world.reconcile(NAME)
    fail_current_run(world)
    await world.reconcile(NAME)
    fail_current_run(world)
    outcome = await world.reconcile(NAME)
    status = world.body(NAME)["status"]
    assert status["phase"] == "NotRemediated"
    started = next(c for c in status["conditions"] if c["type"] == "RemediationStarted")
    assert (started["status"], started["reason"]) == ("False", "LadderExhausted")
    assert [(e.type, e.reason) for e in outcome.events_to_post() if e.type == "Warning"] == [
        ("Warning", "LadderExhausted")
    ]
    await world.reconcile(NAME, timedelta(minutes=1))
    assert len(world.runs()) == 2, "no further Run, however many passes"
    assert notifier.kinds().count("ladder_exhausted") == 1
    [exhausted] = [n for n in notifier.submitted if n.kind == "ladder_exhausted"]
    assert exhausted.subjects[0].name == NAME and exhausted.dedup_key == f"ladder_exhausted/uid-{NAME}"


async def test_a_duplicate_of_a_mitigating_incident_counts_and_never_starts_a_run() -> None:
    world, _ = ladder_world()
    await world.reconcile(NAME)
    fail_current_run(world)
    world.add(incident_body("checkout-crashloop-again"))
    await world.reconcile("checkout-crashloop-again")
    twin = world.body("checkout-crashloop-again")["status"]
    assert twin["phase"] == "Duplicate" and twin["duplicateOf"] == NAME
    assert twin["anomaly"]["count24h"] == 2
    await world.reconcile("checkout-crashloop-again")
    assert [r["metadata"]["name"] for r in world.runs()] == [f"{NAME}-1"]


class Progress:
    def __init__(self) -> None:
        self.written: list[Decision] = []

    async def analyzing(self, namespace: str, name: str, decision: Decision, condition: dict[str, Any]) -> None:
        self.written.append(decision)
        assert condition["reason"] == "Analyzing"


class Advisors:
    async def ask_all(self, advisors: Sequence[AdvisorEndpoint], messages: Sequence[dict[str, str]], *,
                      expected_target: IncidentTarget, deadline: float | None = None,
                      allowed_actions: Collection[ActionType] | None = None) -> list[AdvisorResult]:
        return []


async def test_the_decision_says_analyzing_while_the_advisors_are_asked() -> None:
    world = World()
    progress = Progress()
    endpoint = AdvisorEndpoint(base_url="http://advisor.invalid/v1", model="m", name="a")
    world.reconciler = IncidentReconciler(
        IncidentPolicy(tenant=None, max_automatic_risk=RiskLevel.MEDIUM, advisor_timeout_seconds=5.0,
                       run_timeout_seconds=300, run_max_attempts=3),
        IncidentStores(anomalies=world.counts, resources=world.objects, claims=world.claims,
                       catalogue=default_catalogue(), advisors=AdvisorPanel(Advisors(), [endpoint]),
                       progress=progress),
    )
    world.add(incident_body(NAME, severity="P0"))
    await world.reconcile(NAME)
    assert [(d.state.value, d.sequence) for d in progress.written] == [("Analyzing", 1)]
    assert world.body(NAME)["status"]["decision"]["state"] == "Ready"
    assert IncidentPhase(world.body(NAME)["status"]["phase"]) is IncidentPhase.MITIGATING
