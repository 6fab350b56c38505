"""Retention of finished Incidents, through an in-memory cluster and history with an injected clock.

Scenario matrix:
- a Resolved Incident past its TTL, whose Incident, Runs and Approvals the history holds at the
  versions read, is deleted (uid + resourceVersion preconditions) and counted with its Runs,
  Approvals and the claim Lease it holds; one second before the TTL it stays;
- the TTL is measured from the Resolved condition's lastTransitionTime, else status.resolvedAt;
- Closed counts as finished; Investigating, Mitigating and a Duplicate naming no primary never
  go, whatever their age (Hypothesis over phases and ages);
- a Duplicate follows its primary: kept while the primary is active or young, deleted with it
  once the primary is past its TTL, or once the primary is gone; still held while its own alert
  may be re-sent;
- the history not holding any of them (a newer version not projected yet, a record still
  spooled) keeps the Incident; an unreachable history database ends the pass, nothing deleted;
- a Run still running keeps its resolved Incident;
- an intake chain member with a firing episode whose resolution never arrived stays; with the
  resolved signal it goes;
- a Lease taken over by another Incident is not counted as deleted with this one;
- an Incident changed since the read (409 on the precondition) stays until the next pass;
- namespaces are swept one by one; an empty list means the whole cluster;
- the metrics: history drops by reason, spooled records, deletions by kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.controllers.retention import HISTORY_PENDING, HISTORY_UNAVAILABLE, RetentionController
from flywheel.domain.alerts import LABEL_FINGERPRINT
from flywheel.domain.retention import Hold, alert_may_be_resent, finished_at
from flywheel.errors import DatabaseUnavailableError
from flywheel.stores.history import HistoryKind

pytestmark = pytest.mark.unit

TTL = 300
RESOLVED_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
AFTER_TTL = RESOLVED_AT + timedelta(seconds=TTL)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def incident(name: str, *, phase: str = "Resolved", namespace: str = "shop", resolved_at: datetime | None = RESOLVED_AT,
             condition_at: datetime | None = RESOLVED_AT, labels: Mapping[str, str] | None = None,
             signals: list[dict[str, Any]] | None = None, rv: str = "10") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "anomaly": {"key": f"key-{name}"}, "conditions": []}
    if resolved_at is not None:
        status["resolvedAt"] = _iso(resolved_at)
    if condition_at is not None:
        status["conditions"].append({"type": "Resolved", "status": "True", "reason": "Remediated",
                                     "lastTransitionTime": _iso(condition_at)})
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "resourceVersion": rv,
                     "labels": dict(labels or {})},
        "spec": {"signals": signals or []},
        "status": status,
    }


def owned(kind: str, name: str, owner: dict[str, Any], *, state: str | None = None, rv: str = "5") -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": kind,
        "metadata": {"name": name, "namespace": owner["metadata"]["namespace"], "uid": f"uid-{name}",
                     "resourceVersion": rv,
                     "ownerReferences": [{"uid": owner["metadata"]["uid"], "name": owner["metadata"]["name"]}]},
        "status": {},
    }
    if state is not None:
        body["status"]["state"] = state
    return body


class FakeCluster:
    """The API server's side: lists, the claim Lease, and a delete with preconditions."""

    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {"incidents": [], "runs": [], "approvals": []}
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleted: list[tuple[str, str]] = []
        self.listed: list[tuple[str, str | None]] = []

    def add(self, plural: str, *bodies: dict[str, Any]) -> None:
        self.objects[plural].extend(bodies)

    def lease_for(self, holder: dict[str, Any]) -> None:
        key = holder["status"]["anomaly"]["key"]
        self.leases[(holder["metadata"]["namespace"], key)] = {
            "metadata": {"name": f"flywheel-anomaly-{key}", "ownerReferences": [{"uid": holder["metadata"]["uid"]}]}
        }

    async def list(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        self.listed.append((plural, namespace))
        return [body for body in self.objects[plural] if namespace in (None, body["metadata"]["namespace"])]

    async def claim_lease(self, namespace: str, anomaly_key: str) -> dict[str, Any] | None:
        return self.leases.get((namespace, anomaly_key))

    async def delete_incident(self, namespace: str, name: str, *, uid: str, resource_version: str) -> bool:
        for body in self.objects["incidents"]:
            meta = body["metadata"]
            if (meta["namespace"], meta["name"]) == (namespace, name):
                if (meta["uid"], meta["resourceVersion"]) != (uid, resource_version):
                    return False
                self.objects["incidents"].remove(body)
                self.deleted.append((namespace, name))
                return True
        return False


class FakeHistory:
    """What the history database holds (uid → resourceVersion) and what still waits to be written."""

    def __init__(self, cluster: FakeCluster | None = None) -> None:
        self.stored: dict[str, str] = {}
        self.waiting: set[str] = set()
        self.unavailable = False
        if cluster is not None:
            for bodies in cluster.objects.values():
                for body in bodies:
                    self.stored[body["metadata"]["uid"]] = body["metadata"]["resourceVersion"]

    async def holds(self, kind: HistoryKind, versions: Mapping[str, str]) -> bool:
        if self.unavailable:
            raise DatabaseUnavailableError("history database unavailable")
        return all(uid not in self.waiting and self.stored.get(uid) == rv for uid, rv in versions.items())


def controller(cluster: FakeCluster, history: FakeHistory, now: datetime) -> RetentionController:
    return RetentionController(cluster, history, ttl_seconds=TTL, clock=lambda: now)


def resolved_with_dependents(cluster: FakeCluster, name: str = "checkout-oom") -> dict[str, Any]:
    body = incident(name)
    run = owned("Run", f"{name}-1", body, state="Succeeded")
    approval = owned("Approval", f"{name}-1-approval", run)
    cluster.add("incidents", body)
    cluster.add("runs", run)
    cluster.add("approvals", approval)
    cluster.lease_for(body)
    return body


async def test_a_resolved_incident_past_its_ttl_goes_with_what_it_owns_once_the_history_holds_them() -> None:
    cluster = FakeCluster()
    resolved_with_dependents(cluster)
    history = FakeHistory(cluster)

    early = await controller(cluster, history, AFTER_TTL - timedelta(seconds=1)).sweep()
    assert early.deleted == [] and early.held[Hold.TTL_NOT_PASSED] == 1

    retention = controller(cluster, history, AFTER_TTL)
    report = await retention.sweep()
    assert report.deleted == [("shop", "checkout-oom")] == cluster.deleted
    assert retention.deleted_total == {"Incident": 1, "Run": 1, "Approval": 1, "Lease": 1}
    again = await retention.sweep()
    assert again.deleted == [] and retention.deleted_total["Incident"] == 1, "a pass is idempotent"


@pytest.mark.parametrize("missing", ["uid-checkout-oom", "uid-checkout-oom-1", "uid-checkout-oom-1-approval"])
async def test_the_history_not_holding_one_object_keeps_the_incident(missing: str) -> None:
    cluster = FakeCluster()
    resolved_with_dependents(cluster)
    history = FakeHistory(cluster)
    history.stored[missing] = "1"  # an older version: the last one is not committed yet
    report = await controller(cluster, history, AFTER_TTL).sweep()
    assert report.deleted == [] and report.held[HISTORY_PENDING] == 1

    history.stored.pop(missing)  # never projected at all
    assert (await controller(cluster, history, AFTER_TTL).sweep()).deleted == []

    history.stored[missing] = "10" if missing == "uid-checkout-oom" else "5"
    history.waiting.add(missing)  # committed, but a record about it still waits in the spool
    assert (await controller(cluster, history, AFTER_TTL).sweep()).deleted == []
    history.waiting.clear()
    assert (await controller(cluster, history, AFTER_TTL).sweep()).deleted == [("shop", "checkout-oom")]


async def test_an_unreachable_history_ends_the_pass_and_deletes_nothing() -> None:
    cluster = FakeCluster()
    resolved_with_dependents(cluster, "a")
    cluster.add("incidents", incident("b", namespace="other"))
    history = FakeHistory(cluster)
    history.unavailable = True
    report = await controller(cluster, history, AFTER_TTL).sweep(["shop", "other"])
    assert report.deleted == [] and cluster.deleted == []
    assert report.held[HISTORY_UNAVAILABLE] == 1
    assert ("incidents", "other") not in cluster.listed, "the pass stops at the first unanswered question"


def test_the_ttl_counts_from_the_resolved_condition_else_resolved_at() -> None:
    later = RESOLVED_AT + timedelta(minutes=7)
    assert finished_at(incident("a", condition_at=later)) == later
    assert finished_at(incident("a", condition_at=None)) == RESOLVED_AT
    assert finished_at(incident("a", condition_at=None, resolved_at=None)) is None
    assert finished_at(incident("a", phase="Mitigating")) is None
    closed = incident("a", phase="Closed", condition_at=None)
    assert finished_at(closed) == RESOLVED_AT


async def test_a_finished_incident_without_a_finish_time_stays() -> None:
    cluster = FakeCluster()
    cluster.add("incidents", incident("a", condition_at=None, resolved_at=None))
    report = await controller(cluster, FakeHistory(cluster), AFTER_TTL + timedelta(days=365)).sweep()
    assert report.deleted == [] and report.held[Hold.NO_FINISH_TIME] == 1


@given(
    phase=st.sampled_from(["Investigating", "Mitigating", "Duplicate", "", "Resolved", "Closed"]),
    age_seconds=st.integers(min_value=0, max_value=10 * 365 * 86400),
)
async def test_only_finished_incidents_past_the_ttl_are_ever_deleted(phase: str, age_seconds: int) -> None:
    cluster = FakeCluster()
    cluster.add("incidents", incident("a", phase=phase))
    report = await controller(cluster, FakeHistory(cluster), RESOLVED_AT + timedelta(seconds=age_seconds)).sweep()
    expected = phase in ("Resolved", "Closed") and age_seconds >= TTL
    assert bool(report.deleted) is expected


async def test_a_run_still_running_keeps_its_resolved_incident() -> None:
    cluster = FakeCluster()
    body = incident("a")
    cluster.add("incidents", body)
    cluster.add("runs", owned("Run", "a-1", body, state="Succeeded"), owned("Run", "a-2", body, state="Verifying"))
    report = await controller(cluster, FakeHistory(cluster), AFTER_TTL).sweep()
    assert report.deleted == [] and report.held[Hold.RUN_NOT_FINISHED] == 1


def _signal(status: str, starts_at: datetime, fingerprint: str = "0123456789abcdef") -> dict[str, Any]:
    return {"alertName": "KubePodCrashLooping", "fingerprint": fingerprint, "status": status,
            "startsAt": _iso(starts_at)}


async def test_an_intake_chain_member_stays_while_its_alert_may_be_resent() -> None:
    starts = RESOLVED_AT - timedelta(hours=1)
    labels = {LABEL_FINGERPRINT: "0123456789abcdef"}
    firing = incident("am-kubepodcrashlooping-0123456789abcdef", labels=labels, signals=[_signal("firing", starts)])
    assert alert_may_be_resent(firing)
    cluster = FakeCluster()
    cluster.add("incidents", firing)
    report = await controller(cluster, FakeHistory(cluster), AFTER_TTL).sweep()
    assert report.deleted == [] and report.held[Hold.ALERT_STILL_FIRING] == 1

    firing["spec"]["signals"].append(_signal("resolved", starts))
    assert not alert_may_be_resent(firing)
    report = await controller(cluster, FakeHistory(cluster), AFTER_TTL).sweep()
    assert report.deleted == [("shop", "am-kubepodcrashlooping-0123456789abcdef")]


def test_signals_of_an_incident_not_made_by_the_intake_do_not_hold_it() -> None:
    assert not alert_may_be_resent(incident("manual", signals=[_signal("firing", RESOLVED_AT)]))


async def test_a_lease_taken_over_by_another_incident_is_not_counted_with_this_one() -> None:
    cluster = FakeCluster()
    old = resolved_with_dependents(cluster, "old")
    newer = incident("newer", phase="Mitigating")
    newer["status"]["anomaly"]["key"] = old["status"]["anomaly"]["key"]
    cluster.add("incidents", newer)
    cluster.lease_for(newer)
    retention = controller(cluster, FakeHistory(cluster), AFTER_TTL)
    report = await retention.sweep()
    assert report.deleted == [("shop", "old")]
    assert retention.deleted_total["Lease"] == 0


async def test_an_incident_changed_since_the_read_stays_until_the_next_pass() -> None:
    cluster = FakeCluster()
    body = resolved_with_dependents(cluster)
    history = FakeHistory(cluster)
    retention = controller(cluster, history, AFTER_TTL)
    original_list = cluster.list

    async def list_then_change(plural: str, namespace: str | None) -> list[dict[str, Any]]:
        found = await original_list(plural, namespace)
        if plural == "incidents":
            found = [dict(item, metadata=dict(item["metadata"])) for item in found]
            body["metadata"]["resourceVersion"] = "11"  # written after the list, before the delete
        return found

    cluster.list = list_then_change  # type: ignore[method-assign]
    report = await retention.sweep()
    assert report.deleted == [] and report.held["changed_since_read"] == 1


async def test_namespaces_are_swept_one_by_one_and_none_means_the_cluster() -> None:
    cluster = FakeCluster()
    resolved_with_dependents(cluster, "a")
    cluster.add("incidents", incident("b", namespace="other"))
    history = FakeHistory(cluster)
    report = await controller(cluster, history, AFTER_TTL).sweep(["other"])
    assert report.deleted == [("other", "b")]
    assert {scope for _, scope in cluster.listed} == {"other"}
    report = await controller(cluster, history, AFTER_TTL).sweep()
    assert report.deleted == [("shop", "a")]


def test_a_ttl_of_zero_is_not_a_controller() -> None:
    with pytest.raises(ValueError, match="0 disables retention"):
        RetentionController(FakeCluster(), FakeHistory(), ttl_seconds=0)


async def test_the_metrics_show_drops_by_reason_the_backlog_and_deletions_by_kind(tmp_path: Any) -> None:
    import kopf
    from prometheus_client import CollectorRegistry, generate_latest

    from flywheel.handlers.retention import MEMO_RETENTION, HistoryRetentionCollector, RetentionHandles
    from flywheel.stores.history import AuditEvent, build_history_writer

    writer = build_history_writer(f"sqlite:///{tmp_path / 'history.db'}", migrate=False, max_pending=1)
    writer.submit("run", {"metadata": {}})  # refused: no uid
    for index in range(2):  # the second pushes the first out of the memory spool
        writer.submit(HistoryKind.AUDIT_EVENT, AuditEvent(event_id=f"e{index}", kind="k", occurred_at=RESOLVED_AT,
                                                          summary="s"))
    cluster = FakeCluster()
    resolved_with_dependents(cluster)
    retention = controller(cluster, FakeHistory(cluster), AFTER_TTL)
    await retention.sweep()
    memo = kopf.Memo()
    memo.deps = type("Deps", (), {"history": writer})()
    memo[MEMO_RETENTION] = RetentionHandles(controller=retention, task=None)
    registry = CollectorRegistry()
    registry.register(HistoryRetentionCollector(memo))
    text = generate_latest(registry).decode()
    await writer.close(timeout=0.1)
    for line in (
        'flywheel_history_outbox_dropped_total{reason="overflow"} 1.0',
        'flywheel_history_outbox_dropped_total{reason="refused"} 1.0',
        'flywheel_history_outbox_dropped_total{reason="spool_failed"} 0.0',
        'flywheel_retention_deleted_total{kind="Incident"} 1.0',
        'flywheel_retention_deleted_total{kind="Lease"} 1.0',
    ):
        assert line in text, text
    assert "flywheel_history_spooled_records 1.0" in text


def duplicate(name: str, of: str, **kwargs: Any) -> dict[str, Any]:
    body = incident(name, phase="Duplicate", resolved_at=None, condition_at=None, **kwargs)
    body["status"]["duplicateOf"] = of
    return body


@pytest.mark.parametrize(
    ("primary_phase", "at", "deleted"),
    [
        ("Mitigating", AFTER_TTL + timedelta(days=30), []),
        ("Resolved", AFTER_TTL - timedelta(seconds=1), []),
        ("Resolved", AFTER_TTL, [("shop", "a"), ("shop", "a-twin")]),
    ],
)
async def test_a_duplicate_follows_its_primary_s_ttl(
    primary_phase: str, at: datetime, deleted: list[tuple[str, str]]
) -> None:
    cluster = FakeCluster()
    cluster.add("incidents", incident("a", phase=primary_phase), duplicate("a-twin", "a"))
    report = await controller(cluster, FakeHistory(cluster), at).sweep()
    assert sorted(report.deleted) == deleted
    if not deleted:
        assert report.held[Hold.PRIMARY_NOT_EXPIRED] == 1


async def test_a_duplicate_whose_primary_is_gone_goes_unless_its_alert_may_be_resent() -> None:
    cluster = FakeCluster()
    starts = RESOLVED_AT - timedelta(hours=1)
    labels = {LABEL_FINGERPRINT: "0123456789abcdef"}
    cluster.add(
        "incidents",
        duplicate("orphan", "deleted-by-hand"),
        duplicate("firing", "deleted-by-hand", labels=labels, signals=[_signal("firing", starts)]),
        duplicate("nameless", ""),
    )
    report = await controller(cluster, FakeHistory(cluster), RESOLVED_AT).sweep()
    assert report.deleted == [("shop", "orphan")]
    assert report.held[Hold.ALERT_STILL_FIRING] == 1 and report.held[Hold.NO_PRIMARY] == 1
