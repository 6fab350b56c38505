"""The IncidentReconciler's passes, through its Protocols with in-memory stand-ins.

The stand-ins implement the controller's own store interfaces (AnomalyCounts, FlywheelObjects,
AnomalyClaimer) over plain dicts, with the built-in rule catalogue; the real stores (Redis,
the Lease claims, the API server) are exercised in tests/e2e/test_incidents.py and
tests/integration. Each pass's status is written back before the next one, as the handler does.

Scenario matrix:
- a new Incident: occurrence counted, decided, Run ``<incident>-1`` created (labels, owner,
  policy defaults, approval by risk), phase Mitigating, one merged DecisionReady Event;
- a second pass over the written status: nothing counted, decided or created twice;
- remediation Off: decided, phase Investigating, RemediationStarted=False, no Run;
- a twin of an active Incident: Duplicate of it, no decision, no Run; a twin of an Incident
  that is no longer active takes the claim over and starts its own Run;
- Redis down: counts degraded (AnomalyRecorded=False, one Warning across passes), the Incident
  is decided anyway; counted once when Redis is back;
- resolved by a person (spec.resolution): Resolved, manual_resolved counted once, no Run;
  resolved while Redis was down: counted on the pass after Redis is back;
- ids that stay the same when a pass is retried (trace id, Run name), and Event merging.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.api.enums import RiskLevel
from flywheel.api.incident import IncidentStatus
from flywheel.api.names import (
    ANOMALY_EVENT_REASON,
    DECISION_EVENT_REASON,
    LABEL_ANOMALY_KEY,
    LABEL_INCIDENT,
    RUN_CREATED_EVENT_REASON,
    Event,
)
from flywheel.controllers.incident import (
    IncidentOutcome,
    IncidentPolicy,
    IncidentReconciler,
    IncidentStores,
    run_name,
    trace_id,
)
from flywheel.domain.escalation import (
    ActionStats,
    AnomalySnapshot,
    EscalationThresholds,
    Occurrence,
    escalation_level,
)
from flywheel.domain.incident import IncidentObject, IncidentView
from flywheel.domain.rules import default_catalogue
from flywheel.errors import NotFoundError, RedisUnavailableError
from flywheel.stores.anomaly_redis import RecordedOccurrences
from flywheel.stores.claims import Holder, HolderIsActive

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NAMESPACE = "shop"
THRESHOLDS = EscalationThresholds(repeat=3, escalate=5, permanent_fix=10)


class CountsInMemory:
    """AnomalyCounts over dicts: occurrences and dispositions idempotent per id, like the Lua scripts."""

    def __init__(self) -> None:
        self.available = True
        self.occurrences: dict[tuple[str, str], set[str]] = {}
        self.dispositions: dict[tuple[str, str, str], set[str]] = {}
        self.permanent_fixes: set[tuple[str, str]] = set()
        self.fix_descriptions: dict[tuple[str, str], str] = {}

    def _reachable(self) -> None:
        if not self.available:
            raise RedisUnavailableError("redis: connection refused")

    async def record_occurrences(
        self,
        tenant: str,
        key: str,
        signature: Mapping[str, str],
        occurrences: Sequence[Occurrence],
        now: datetime | None = None,
    ) -> RecordedOccurrences:
        self._reachable()
        seen = self.occurrences.setdefault((tenant, key), set())
        fresh = [occurrence for occurrence in occurrences if occurrence.id not in seen]
        seen.update(occurrence.id for occurrence in occurrences)
        count = len(seen)
        first, last = min(o.at for o in occurrences), max(o.at for o in occurrences)
        snapshot = AnomalySnapshot(
            key=key,
            count_1h=count,
            count_24h=count,
            count_7d=count,
            count_30d=count,
            first_seen=first,
            last_seen=last,
            escalation_level=escalation_level(count, THRESHOLDS),
            auto_repair_count=0,
            permanent_fix_applied=(tenant, key) in self.permanent_fixes,
            action_stats={},
        )
        return RecordedOccurrences(
            snapshot, counted=len(fresh), already_counted=len(occurrences) - len(fresh), too_old=0
        )

    async def mark_permanent_fix(self, tenant: str, key: str, description: str = "", at: datetime | None = None) -> None:
        self._reachable()
        self.permanent_fixes.add((tenant, key))
        self.fix_descriptions[(tenant, key)] = description

    async def record_disposition(
        self, tenant: str, key: str, disposition: str, disposition_id: str, at: datetime | None = None
    ) -> bool:
        self._reachable()
        ids = self.dispositions.setdefault((tenant, key, disposition), set())
        new = disposition_id not in ids
        ids.add(disposition_id)
        return new

    async def action_stats(self, tenant: str, key: str) -> dict[str, ActionStats]:
        self._reachable()
        return {}

    def counted(self, disposition: str) -> int:
        return sum(len(ids) for (_, _, kind), ids in self.dispositions.items() if kind == disposition)


class ObjectsInMemory:
    """FlywheelObjects over a dict: create-or-get by name, 404 for what is not there."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.creations = 0
        self._uids = itertools.count(1)

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        try:
            return copy.deepcopy(self.objects[(plural, namespace, name)])
        except KeyError:
            raise NotFoundError(f"get {plural}/{name}: 404 Not Found", status=404) from None

    async def create_or_get(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        key = (plural, namespace, body["metadata"]["name"])
        if key not in self.objects:
            self.creations += 1
            created = copy.deepcopy(body)
            created["metadata"]["uid"] = f"{plural}-uid-{next(self._uids)}"
            self.objects[key] = created
        return copy.deepcopy(self.objects[key])


class ClaimsInMemory:
    """AnomalyClaimer like the Lease: the first claimant holds it; an inactive holder is taken over."""

    def __init__(self) -> None:
        self.holders: dict[tuple[str, str], Holder] = {}

    async def claim(
        self, namespace: str, anomaly_key: str, claimant: Holder, is_active: HolderIsActive
    ) -> Holder | None:
        holder = self.holders.get((namespace, anomaly_key))
        if holder is not None and holder.uid != claimant.uid and await is_active(holder):
            return holder
        self.holders[(namespace, anomaly_key)] = claimant
        return None


def incident_body(name: str = "checkout-crashloop", *, mode: str = "Auto", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "Incident",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": T0.isoformat(),
        },
        "spec": {
            "alertName": "KubePodCrashLooping",
            "service": "checkout",
            "errorType": "CrashLoopBackOff",
            "severity": "P2",
            "source": "alertmanager",
            "summary": "checkout pods restart in a loop",
            "targetRef": {"kind": "Deployment", "name": "checkout"},
            "remediation": {"mode": mode},
            **spec,
        },
    }


class World:
    """One namespace's Incidents, passed through the reconciler and written back like the handler does."""

    def __init__(self, max_automatic_risk: RiskLevel = RiskLevel.MEDIUM) -> None:
        self.counts = CountsInMemory()
        self.objects = ObjectsInMemory()
        self.claims = ClaimsInMemory()
        self.reconciler = IncidentReconciler(
            IncidentPolicy(
                tenant=None,
                max_automatic_risk=max_automatic_risk,
                advisor_timeout_seconds=5.0,
                run_timeout_seconds=300,
                run_max_attempts=3,
            ),
            IncidentStores(
                anomalies=self.counts, resources=self.objects, claims=self.claims, catalogue=default_catalogue()
            ),
        )

    def add(self, body: dict[str, Any]) -> None:
        self.objects.objects[("incidents", NAMESPACE, body["metadata"]["name"])] = copy.deepcopy(body)

    def body(self, name: str) -> dict[str, Any]:
        return self.objects.objects[("incidents", NAMESPACE, name)]

    def peers(self) -> list[IncidentView]:
        """The Incident index's view of every Incident."""
        return [IncidentView.from_body(body) for (plural, _, _), body in self.objects.objects.items()
                if plural == "incidents"]

    async def reconcile(self, name: str, at: timedelta = timedelta(0)) -> IncidentOutcome:
        body = self.body(name)
        outcome = await self.reconciler.reconcile(IncidentObject.from_body(body), self.peers(), now=T0 + at)
        patch = outcome.status_patch()
        body["status"] = {**(body.get("status") or {}), **patch}
        return outcome

    def runs(self) -> list[dict[str, Any]]:
        return [body for (plural, _, _), body in self.objects.objects.items() if plural == "runs"]


def conditions(body: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (body.get("status") or {}).get("conditions") or []}


async def test_a_new_incident_is_counted_decided_and_starts_one_run_owned_by_it() -> None:
    world = World()
    world.add(incident_body())
    outcome = await world.reconcile("checkout-crashloop")
    body = world.body("checkout-crashloop")
    status = body["status"]
    assert status["phase"] == "Mitigating"
    assert status["anomaly"]["count24h"] == 1 and status["anomaly"]["degraded"] is False
    assert status["decision"]["state"] == "Ready"
    assert status["decision"]["action"]["type"] == "RolloutRestart"
    assert conditions(body) == {
        "AnomalyRecorded": ("True", "Recorded"),
        "Decided": ("True", "DecisionReady"),
        "RemediationStarted": ("True", "RunCreated"),
    }
    [run] = world.runs()
    assert run["metadata"]["name"] == "checkout-crashloop-1"
    assert status["runRef"] == {"name": "checkout-crashloop-1", "uid": run["metadata"]["uid"]}
    assert run["metadata"]["labels"] == {
        LABEL_INCIDENT: "checkout-crashloop",
        LABEL_ANOMALY_KEY: IncidentObject.from_body(body).anomaly_key,
    }
    [owner] = run["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Incident", "uid-checkout-crashloop", True)
    spec = run["spec"]
    assert spec["incidentRef"] == {"name": "checkout-crashloop", "uid": "uid-checkout-crashloop"}
    assert (spec["timeoutSeconds"], spec["maxAttempts"], spec["mode"]) == (300, 3, "Auto")
    assert spec["requiresApproval"] is False, "a medium-risk restart is within the automatic limit"
    assert spec["traceId"] == trace_id("uid-checkout-crashloop", 1)
    posted = outcome.events_to_post()
    assert [(e.type, e.reason) for e in posted] == [("Normal", DECISION_EVENT_REASON)]
    assert "seen 1x/1h" in posted[0].message and "Run checkout-crashloop-1 created" in posted[0].message


async def test_a_riskier_decision_than_the_policy_allows_creates_a_run_that_waits_for_approval() -> None:
    world = World(max_automatic_risk=RiskLevel.LOW)
    world.add(incident_body())
    await world.reconcile("checkout-crashloop")
    [run] = world.runs()
    assert run["spec"]["requiresApproval"] is True
    assert "waits for approval" in world.body("checkout-crashloop")["status"]["conditions"][-1]["message"]


async def test_a_second_pass_over_the_written_status_changes_nothing_and_counts_nothing() -> None:
    world = World()
    world.add(incident_body())
    await world.reconcile("checkout-crashloop")
    written = copy.deepcopy(world.body("checkout-crashloop")["status"])
    again = await world.reconcile("checkout-crashloop", timedelta(seconds=5))
    assert again.status_patch() == {}
    assert again.events_to_post() == []
    assert world.body("checkout-crashloop")["status"] == written
    assert world.objects.creations == 1
    assert sum(len(ids) for ids in world.counts.occurrences.values()) == 1


async def test_remediation_off_decides_but_starts_no_run() -> None:
    world = World()
    world.add(incident_body(mode="Off"))
    await world.reconcile("checkout-crashloop")
    body = world.body("checkout-crashloop")
    assert body["status"]["phase"] == "Investigating"
    assert body["status"]["decision"]["state"] == "Ready"
    assert conditions(body)["RemediationStarted"] == ("False", "RemediationOff")
    assert world.runs() == []


async def test_a_twin_of_an_active_incident_is_its_duplicate_and_starts_nothing() -> None:
    world = World()
    world.add(incident_body("checkout-crashloop"))
    await world.reconcile("checkout-crashloop")
    world.add(incident_body("checkout-crashloop-twin"))
    outcome = await world.reconcile("checkout-crashloop-twin")
    twin = world.body("checkout-crashloop-twin")
    assert twin["status"]["phase"] == "Duplicate"
    assert twin["status"]["duplicateOf"] == "checkout-crashloop"
    assert twin["status"].get("decision") is None and twin["status"].get("runRef") is None
    assert conditions(twin)["Duplicate"] == ("True", "ActiveIncidentExists")
    assert [e.reason for e in outcome.events_to_post()] == ["Duplicate"]
    assert len(world.runs()) == 1
    assert twin["status"]["anomaly"]["count24h"] == 2, "the twin still counts as an occurrence"


async def test_a_twin_of_a_resolved_incident_takes_the_claim_and_starts_its_own_run() -> None:
    world = World()
    world.add(incident_body("checkout-crashloop"))
    await world.reconcile("checkout-crashloop")
    world.body("checkout-crashloop")["status"]["phase"] = "Resolved"
    world.add(incident_body("checkout-crashloop-later"))
    await world.reconcile("checkout-crashloop-later")
    assert world.body("checkout-crashloop-later")["status"]["phase"] == "Mitigating"
    assert sorted(run["metadata"]["name"] for run in world.runs()) == ["checkout-crashloop-1", "checkout-crashloop-later-1"]
    key = IncidentObject.from_body(world.body("checkout-crashloop-later")).anomaly_key
    assert world.claims.holders[(NAMESPACE, key)].name == "checkout-crashloop-later"


async def test_a_holder_deleted_from_the_cluster_is_not_active_and_loses_the_claim() -> None:
    world = World()
    world.add(incident_body("checkout-crashloop"))
    key = IncidentObject.from_body(world.body("checkout-crashloop")).anomaly_key
    world.claims.holders[(NAMESPACE, key)] = Holder("gone", "uid-gone")  # neither indexed nor stored
    await world.reconcile("checkout-crashloop")
    assert world.body("checkout-crashloop")["status"]["phase"] == "Mitigating"
    assert world.claims.holders[(NAMESPACE, key)].uid == "uid-checkout-crashloop"


async def test_with_redis_down_the_incident_is_decided_and_counted_once_redis_is_back() -> None:
    world = World()
    world.counts.available = False
    world.add(incident_body())
    first = await world.reconcile("checkout-crashloop")
    body = world.body("checkout-crashloop")
    assert body["status"]["anomaly"]["degraded"] is True
    assert conditions(body)["AnomalyRecorded"] == ("False", "RedisUnavailable")
    assert ("Warning", "RedisUnavailable") in [(e.type, e.reason) for e in first.events_to_post()]
    assert body["status"]["phase"] == "Mitigating", "the rules decide without the counts"
    second = await world.reconcile("checkout-crashloop", timedelta(seconds=15))
    assert "RedisUnavailable" not in [e.reason for e in second.events_to_post()], "warned once, not every pass"
    world.counts.available = True
    await world.reconcile("checkout-crashloop", timedelta(seconds=30))
    await world.reconcile("checkout-crashloop", timedelta(seconds=45))
    body = world.body("checkout-crashloop")
    assert body["status"]["anomaly"]["degraded"] is False
    assert body["status"]["anomaly"]["count24h"] == 1
    assert conditions(body)["AnomalyRecorded"] == ("True", "Recorded")
    assert world.objects.creations == 1


async def test_an_incident_resolved_by_a_person_is_resolved_and_counted_once() -> None:
    world = World()
    world.add(incident_body(resolution={"rootCause": "a bad config map", "note": "config map reverted"}))
    outcome = await world.reconcile("checkout-crashloop")
    body = world.body("checkout-crashloop")
    assert (body["status"]["phase"], body["status"]["disposition"]) == ("Resolved", "manual_resolved")
    assert conditions(body)["Resolved"] == ("True", "ManuallyResolved")
    assert "root cause: a bad config map" in outcome.events_to_post()[-1].message
    assert world.runs() == []
    await world.reconcile("checkout-crashloop", timedelta(seconds=5))
    assert world.counts.counted("manual_resolved") == 1


async def test_a_manual_resolution_while_redis_was_down_is_counted_when_it_is_back() -> None:
    world = World()
    world.counts.available = False
    world.add(incident_body(resolution={"rootCause": "a bad config map", "note": "config map reverted"}))
    await world.reconcile("checkout-crashloop")
    assert world.body("checkout-crashloop")["status"]["phase"] == "Resolved"
    assert world.body("checkout-crashloop")["status"]["anomaly"]["degraded"] is True
    world.counts.available = True
    await world.reconcile("checkout-crashloop", timedelta(seconds=15))
    assert world.counts.counted("manual_resolved") == 1
    assert world.body("checkout-crashloop")["status"]["anomaly"]["degraded"] is False


@given(st.text(min_size=1, max_size=60), st.integers(min_value=1, max_value=10_000))
def test_trace_id_is_w3c_shaped_and_stable(uid: str, sequence: int) -> None:
    first = trace_id(uid, sequence)
    assert first == trace_id(uid, sequence)
    assert len(first) == 32 and all(c in "0123456789abcdef" for c in first)
    assert first != "0" * 32  # W3C forbids the all-zero trace id


@given(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,251}[a-z0-9])?", fullmatch=True), st.integers(1, 999))
def test_run_names_fit_kubernetes_limits(incident_name: str, sequence: int) -> None:
    name = run_name(incident_name, sequence)
    assert len(name) <= 253
    assert name.endswith(f"-{sequence}")


def test_the_anomaly_counts_ride_on_the_next_normal_event_and_never_on_a_warning() -> None:
    counts = Event("Normal", ANOMALY_EVENT_REASON, "anomaly k seen 2x/1h")
    warning = Event("Warning", "AdvisorUnavailable", "advisor timed out")
    ready = Event("Normal", "DecisionReady", "RolloutRestart chosen")
    outcome = IncidentOutcome(status=IncidentStatus(), events=[counts, warning, ready])
    posted = outcome.events_to_post()
    assert [(event.type, event.reason) for event in posted] == [
        ("Warning", "AdvisorUnavailable"),
        ("Normal", "DecisionReady"),
    ]
    assert posted[1].message == "anomaly k seen 2x/1h; RolloutRestart chosen"
    alone = IncidentOutcome(status=IncidentStatus(), events=[counts]).events_to_post()
    assert alone == [counts], "with nothing else to say the counts still get their Event"
    duplicate = Event("Normal", "Duplicate", "duplicate of oom-1")
    assert [(e.reason, e.message) for e in IncidentOutcome(IncidentStatus(), events=[counts, duplicate]).events_to_post()] == [
        ("Duplicate", "anomaly k seen 2x/1h; duplicate of oom-1"),
    ]


def test_a_decision_and_the_run_it_starts_are_one_event() -> None:
    events = [
        Event("Normal", ANOMALY_EVENT_REASON, "anomaly k seen 3x/1h"),
        Event("Normal", DECISION_EVENT_REASON, "DEC-1: restart checkout"),
        Event("Warning", "NeedsPermanentFix", "needs a permanent fix"),
        Event("Normal", RUN_CREATED_EVENT_REASON, "Run oom-1 created (waits for approval)"),
    ]
    posted = IncidentOutcome(status=IncidentStatus(), events=events).events_to_post()
    assert [(event.type, event.reason) for event in posted] == [
        ("Normal", DECISION_EVENT_REASON),
        ("Warning", "NeedsPermanentFix"),
    ]
    assert posted[0].message == "anomaly k seen 3x/1h; DEC-1: restart checkout; Run oom-1 created (waits for approval)"
    long = [Event("Normal", DECISION_EVENT_REASON, "x" * 900), Event("Normal", RUN_CREATED_EVENT_REASON, "y" * 900)]
    assert len(IncidentOutcome(IncidentStatus(), events=long).events_to_post()[0].message) == 1024


async def test_a_declared_permanent_fix_is_kept_with_its_description_on_the_flag_and_in_the_status() -> None:
    world = World()
    fix = "connection pool sized from the pod's memory limit (checkout#812)"
    world.add(incident_body(permanentFix={"description": fix}))
    await world.reconcile("checkout-crashloop")
    anomaly = world.body("checkout-crashloop")["status"]["anomaly"]
    assert list(world.counts.fix_descriptions.values()) == [fix]
    assert anomaly["permanentFixDescription"] == fix
    # Kept on later passes too, although the anomaly status is rebuilt from the counts each time.
    await world.reconcile("checkout-crashloop", timedelta(seconds=5))
    assert world.body("checkout-crashloop")["status"]["anomaly"]["permanentFixDescription"] == fix
