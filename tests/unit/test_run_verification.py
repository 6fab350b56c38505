"""Verifying the symptom and re-checking before acting, through the RunController's Protocols.

- rollout complete → Verifying for the window, asking to come back when it ends (no polling);
- at the end: signals resolved → Succeeded (journal: alertmanager-signals); still firing →
  Failed E-SYMPTOM-PERSISTS, a failed repair attempt, the Incident's decision Completed and
  Resolved=False NotRemediated; Prometheus answering decides over a lost notification, and the
  signals decide when it does not answer; signal-less Incidents: the Pods;
- a catalogue rule's own window (spec.verificationWindowSeconds) wins over the default;
- re-check: an approved Run whose Incident's alerts all resolved is Cancelled E-ALREADY-RESOLVED
  with the workload untouched (unless the attempt's stamp is already on it), and its decision
  turns Error; a Run that acts moves the decision Ready → Executing once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from flywheel.api.enums import RunState, TargetKind
from flywheel.controllers.run import RunController, RunStores
from flywheel.domain.symptom import PodFacts
from flywheel.errors import PrometheusUnavailableError
from flywheel.settings import FlywheelSettings
from flywheel.wiring import run_policy
from tests.unit.test_run_controller import (
    DONE,
    INCIDENT_UID,
    RUN_UID,
    T0,
    Harness,
    condition,
    incident_body,
    run_body,
)

pytestmark = pytest.mark.unit

WINDOW = 60
LABELS = {"alertname": "KubePodCrashLooping", "namespace": "shop", "pod": "checkout-1", "container": "app",
          "job": "kube-state-metrics", "reason": "CrashLoopBackOff", "severity": "warning"}


class Prometheus:
    def __init__(self) -> None:
        self.firing_series: list[dict[str, str]] = []
        self.down = False
        self.queries: list[str] = []

    async def firing(self, query: str) -> list[dict[str, str]]:
        self.queries.append(query)
        if self.down:
            raise PrometheusUnavailableError("connection refused")
        return list(self.firing_series)


class Pods:
    def __init__(self) -> None:
        self.items = [PodFacts("checkout-1", True, T0, 0, None)]

    async def pods(self, namespace: str, kind: TargetKind, name: str) -> tuple[int, list[PodFacts]]:
        return 1, list(self.items)


class Reader:
    def __init__(self) -> None:
        self.annotations: dict[str, str] = {}
        self.reads = 0

    async def read(self, namespace: str, kind: TargetKind, name: str) -> dict[str, Any]:
        self.reads += 1
        return {"metadata": {"annotations": dict(self.annotations)}}


def signal(status: str = "firing", episode: int = 0) -> dict[str, Any]:
    """A signal as the intake records it (a resolution is a resolved signal of the same episode)."""
    return {"alertName": "KubePodCrashLooping", "labels": LABELS, "fingerprint": "9f2c1e0b7a6d5c4b",
            "startsAt": (T0 + timedelta(minutes=episode)).isoformat(), "status": status}


def harness(*, signals: list[dict[str, Any]] | None = None, prometheus: bool = False, body: dict[str, Any] | None = None,
            **status: Any) -> tuple[Harness, Prometheus, Pods, Reader]:
    incident = incident_body(runRef={"name": "checkout-oom-1", "uid": RUN_UID}, **status)
    incident["spec"]["signals"] = signals or []
    h = Harness(body, incident)
    prom, pods, reader = Prometheus(), Pods(), Reader()
    h.controller = RunController(
        run_policy(FlywheelSettings(verification_window_seconds=WINDOW)),
        h.repairs,
        RunStores(workloads=h.workloads, incidents=h.incidents, attempts=h.attempts, symptom_checks=True,
                  pods=pods, prometheus=prom if prometheus else None, reader=reader),
    )
    h.workloads.facts = DONE
    return h, prom, pods, reader


async def rolled_out(h: Harness) -> None:
    await h.step()  # admitted
    status = await h.step(1)  # acted; the rollout is complete in the same pass
    assert status.state is RunState.VERIFYING
    assert condition(status, "SymptomGone") == ("Unknown", "Watching")
    assert h.outcomes[-1].requeue_after == WINDOW, "one pass when the window ends, no polling"


def set_signals(h: Harness, *statuses: str) -> None:
    assert h.incidents.body is not None
    h.incidents.body["spec"]["signals"] = [signal(s) for s in ("firing", *statuses)]


async def test_the_run_waits_the_window_and_succeeds_once_every_alert_resolved() -> None:
    h, _, _, _ = harness(signals=[signal()])
    await rolled_out(h)
    status = await h.step(30)
    assert status.state is RunState.VERIFYING and h.outcomes[-1].requeue_after == pytest.approx(WINDOW - 30)
    set_signals(h, "resolved")
    status = await h.step(30)
    assert status.state is RunState.SUCCEEDED
    assert status.steps[-1].message is not None and status.steps[-1].message.startswith("evidence alertmanager-signals")
    assert [s.result for s in status.steps if s.name == "verify"] == ["RolloutComplete", "Succeeded"]
    assert h.repairs.attempts == {f"{RUN_UID}:1": ("RolloutRestart", True)}


async def test_a_symptom_still_there_fails_the_run_and_completes_the_decision() -> None:
    h, _, _, _ = harness(signals=[signal()])
    await rolled_out(h)
    status = await h.step(WINDOW)
    assert (status.state, status.error_code) == (RunState.FAILED, "E-SYMPTOM-PERSISTS")
    assert condition(status, "SymptomGone") == ("False", "Persists")
    assert h.repairs.attempts == {f"{RUN_UID}:1": ("RolloutRestart", False)}, "the history learns the failure"
    assert [(r.succeeded, r.error_code) for r in h.attempts.records] == [(False, "E-SYMPTOM-PERSISTS")]
    assert h.incidents.body is not None
    incident_status = h.incidents.body["status"]
    assert incident_status["decision"]["state"] == "Completed"
    resolved = next(c for c in incident_status["conditions"] if c["type"] == "Resolved")
    assert (resolved["status"], resolved["reason"]) == ("False", "NotRemediated")
    assert "SymptomPersists" in h.events()


async def test_prometheus_decides_over_a_lost_resolved_notification() -> None:
    h, prom, _, _ = harness(signals=[signal()], prometheus=True)
    await rolled_out(h)
    status = await h.step(WINDOW)
    assert status.state is RunState.SUCCEEDED
    assert status.steps[-1].message is not None and status.steps[-1].message.startswith("evidence prometheus")
    assert prom.queries == ['ALERTS{alertstate="firing",alertname="KubePodCrashLooping"}']


async def test_prometheus_firing_fails_it_and_prometheus_down_falls_back_to_the_signals() -> None:
    h, prom, _, _ = harness(signals=[signal()], prometheus=True)
    prom.firing_series = [{"__name__": "ALERTS", "alertstate": "firing", **LABELS}]
    await rolled_out(h)
    set_signals(h, "resolved")
    assert (await h.step(WINDOW)).error_code == "E-SYMPTOM-PERSISTS"

    h, prom, _, _ = harness(signals=[signal()], prometheus=True)
    prom.down = True
    await rolled_out(h)
    set_signals(h, "resolved")
    status = await h.step(WINDOW)
    assert status.state is RunState.SUCCEEDED
    assert status.steps[-1].message is not None and "alertmanager-signals" in status.steps[-1].message


async def test_an_incident_without_signals_is_judged_by_its_pods() -> None:
    h, _, pods, _ = harness()
    await rolled_out(h)
    pods.items = [PodFacts("checkout-1", True, T0, 1, T0 + timedelta(seconds=20))]
    status = await h.step(WINDOW)
    assert (status.state, status.error_code) == (RunState.FAILED, "E-SYMPTOM-PERSISTS")
    assert status.steps[-1].message is not None and "restarted" in (status.error_detail or "")

    h, _, _, _ = harness()
    await rolled_out(h)
    assert (await h.step(WINDOW)).state is RunState.SUCCEEDED


async def test_a_rules_own_window_wins_and_extends_the_deadline() -> None:
    h, _, _, _ = harness(body=run_body(verificationWindowSeconds=5, timeoutSeconds=10))
    await h.step()
    await h.step(1)
    assert h.outcomes[-1].requeue_after == 5
    assert (await h.step(5)).state is RunState.SUCCEEDED


async def test_an_approved_run_whose_alerts_resolved_is_cancelled_untouched() -> None:
    h, _, _, reader = harness(signals=[signal(), signal("resolved")])
    h.body["status"] = {"state": "Running", "approvalRef": {"name": "checkout-oom-1", "uid": "appr-1"}}
    status = await h.step()
    assert (status.state, status.error_code) == (RunState.CANCELLED, "E-ALREADY-RESOLVED")
    assert h.workloads.applied == [], "the workload is not touched"
    assert reader.reads == 1, "the stamp is read before saying so"
    assert condition(status, "OutcomeRecorded") == ("True", "NothingToRecord")
    assert h.repairs.attempts == {}
    assert h.incidents.body is not None and h.incidents.body["status"]["decision"]["state"] == "Error"


async def test_a_run_whose_stamp_is_on_the_workload_is_not_reported_untouched() -> None:
    h, _, _, reader = harness(signals=[signal(), signal("resolved")])
    reader.annotations = {"flywheel.dev/actions": f'[{{"run": "{RUN_UID}", "attempt": 1}}]'}
    h.body["status"] = {"state": "Running", "attempt": 1, "startedAt": T0.isoformat()}
    status = await h.step()
    assert status.state is RunState.VERIFYING, "applied before a crash: the pass journals it instead"


async def test_a_run_with_an_alert_still_firing_acts_and_its_decision_executes_once() -> None:
    h, _, _, reader = harness(signals=[signal(), signal("resolved"), signal(episode=10)])
    await h.step()
    await h.step(1)
    assert len(h.workloads.applied) == 1 and reader.reads == 0
    assert h.incidents.body is not None and h.incidents.body["status"]["decision"]["state"] == "Executing"
    writes = h.incidents.writes
    await h.step(1)
    assert h.incidents.writes == writes
    assert h.incidents.body["metadata"]["uid"] == INCIDENT_UID
