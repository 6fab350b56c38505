"""Alertmanager payloads → Incidents: validation, field mapping, naming and signal placement.

Scenario matrix:
- payload validation names the wrong field (version, alerts[i].startsAt, label types);
- mapping: alertName, service (service|app|job|deployment, else the workload), errorType,
  severity table, targetRef (deployment, statefulset, flywheel_target / flywheel.dev/target),
  summary (summary|description, cut), source, labels and annotations on the object;
- refusals per alert, naming the field: no namespace, bad namespace, namespace not
  watched (Kopf's pattern semantics), no workload, bad workload, oversized labels;
- names: deterministic per fingerprint, chain of recurrences after resolution;
- placement: create, append, dedupe (same key, late firing after resolution), resolved
  recorded on the episode's Incident, resolved without Incident ignored, ≤ 100 signals;
- properties (Hypothesis): arbitrary label maps give a valid IncidentSpec or a refusal
  naming a field; recording any sequence twice changes nothing the second time.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kopf._cogs.structs.references import NamespaceName, match_namespace

from flywheel.api.common import DNS1123_SUBDOMAIN_PATTERN
from flywheel.api.enums import IncidentPhase, Severity, SignalStatus, TargetKind
from flywheel.api.incident import (
    INCIDENT,
    MAX_SIGNAL_LABELS,
    MAX_SIGNALS,
    SUMMARY_MAX_LENGTH,
    IncidentSpec,
    Signal,
)
from flywheel.domain.alerts import (
    ALERTMANAGER_SOURCE,
    ANNOTATION_EXTERNAL_URL,
    ANNOTATION_GENERATOR_URL,
    ANNOTATION_RECEIVER,
    LABEL_FINGERPRINT,
    UNNAMED_ALERT,
    AlertIntake,
    AlertmanagerAlert,
    AlertRefusal,
    AlreadyRecorded,
    AppendSignal,
    CreateIncident,
    NamespaceScope,
    NothingToRecordOn,
    PayloadContext,
    StoredIncident,
    Workload,
    WorkloadSubject,
    address_alert,
    fingerprint_key,
    incident_base_name,
    incident_name,
    map_severity,
    parse_payload,
    place_signal,
    plan_alert,
    sequence_of,
)
from flywheel.errors import InvalidInputError

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FINGERPRINT = "a1b2c3d4e5f60718"
CONTEXT = PayloadContext(receiver="flywheel", external_url="http://alertmanager.example:9093")
ALL_NAMESPACES = NamespaceScope()
DNS1123_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN_PATTERN)


def alert_json(
    labels: dict[str, str] | None = None,
    *,
    status: str = "firing",
    starts_at: datetime = T0,
    ends_at: str = "0001-01-01T00:00:00Z",
    fingerprint: str = FINGERPRINT,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    base_labels = {
        "alertname": "KubePodCrashLooping",
        "namespace": "shop",
        "deployment": "checkout",
        "severity": "critical",
        "reason": "CrashLoopBackOff",
    }
    return {
        "status": status,
        "labels": base_labels if labels is None else labels,
        "annotations": {"summary": "checkout is crash-looping"} if annotations is None else annotations,
        "startsAt": starts_at.isoformat().replace("+00:00", "Z"),
        "endsAt": ends_at,
        "generatorURL": "http://prometheus.example/graph?g0.expr=up",
        "fingerprint": fingerprint,
    }


def payload_json(*alerts: dict[str, Any], **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "version": "4",
        "groupKey": '{}:{alertname="KubePodCrashLooping"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "flywheel",
        "groupLabels": {"alertname": "KubePodCrashLooping"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts) or [alert_json()],
    }
    payload.update(fields)
    return payload


def alert(labels: dict[str, str] | None = None, **kwargs: Any) -> AlertmanagerAlert:
    return AlertmanagerAlert.model_validate(alert_json(labels, **kwargs))


def map_alert(
    labels: dict[str, str] | None = None, scope: NamespaceScope = ALL_NAMESPACES,
    workload_labels: dict[str, str] | None = None, **kwargs: Any,
) -> AlertIntake | AlertRefusal:
    """Address the alert, stand in for the lookup (the named workload exists), plan it."""
    received = alert(labels, **kwargs)
    address = address_alert(received, scope)
    if isinstance(address, AlertRefusal):
        return address
    subject = address.subject
    assert isinstance(subject, WorkloadSubject), "pod subjects are resolved in test_pod_owners.py"
    return plan_alert(received, CONTEXT, address, Workload(subject.kind, subject.name, workload_labels or {}))


def planned(labels: dict[str, str] | None = None, scope: NamespaceScope = ALL_NAMESPACES, **kwargs: Any) -> AlertIntake:
    result = map_alert(labels, scope, **kwargs)
    assert isinstance(result, AlertIntake), result
    return result


def refused(labels: dict[str, str] | None = None, scope: NamespaceScope = ALL_NAMESPACES, **kwargs: Any) -> AlertRefusal:
    result = map_alert(labels, scope, **kwargs)
    assert isinstance(result, AlertRefusal), result
    return result


def labels_with(**changes: str | None) -> dict[str, str]:
    labels = {"alertname": "KubePodCrashLooping", "namespace": "shop", "deployment": "checkout"}
    for key, value in changes.items():
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
    return labels


# --------------------------------------------------------------------------- payload validation


def test_a_real_alertmanager_payload_is_accepted() -> None:
    payload = parse_payload(payload_json())
    assert payload.receiver == "flywheel"
    assert payload.external_url == "http://alertmanager.example:9093"
    (only,) = payload.alerts
    assert only.status is SignalStatus.FIRING
    assert only.starts_at == T0
    assert only.fingerprint == FINGERPRINT


def test_nanosecond_timestamps_and_unknown_fields_are_accepted() -> None:
    document = payload_json(dict(alert_json(), startsAt="2025-03-01T12:00:00.123456789Z", extra={"x": 1}))
    document["someFutureField"] = True
    (only,) = parse_payload(document).alerts
    assert only.starts_at == T0 + timedelta(microseconds=123456)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (payload_json(version="3"), "version"),
        ({k: v for k, v in payload_json().items() if k != "alerts"}, "alerts"),
        (payload_json(alerts={"not": "a list"}), "alerts"),
        (payload_json(alert_json(), {k: v for k, v in alert_json().items() if k != "startsAt"}), "alerts[1].startsAt"),
        (payload_json(dict(alert_json(), startsAt="yesterday")), "alerts[0].startsAt"),
        (payload_json(dict(alert_json(), status="pending")), "alerts[0].status"),
        (payload_json(dict(alert_json(), labels={"namespace": 7})), "alerts[0].labels.namespace"),
        (payload_json(dict(alert_json(), fingerprint="")), "alerts[0].fingerprint"),
        ([], "body"),
    ],
)
def test_a_payload_of_the_wrong_shape_is_refused_naming_the_field(document: Any, field: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        parse_payload(document)
    assert raised.value.field == field
    assert field in str(raised.value)


# --------------------------------------------------------------------------- mapping


def test_an_alert_maps_onto_an_incident_spec() -> None:
    intake = planned()
    spec = intake.spec
    assert spec.alert_name == "KubePodCrashLooping"
    assert spec.service == "checkout"
    assert spec.error_type == "CrashLoopBackOff"
    assert spec.severity is Severity.P1
    assert spec.source == ALERTMANAGER_SOURCE
    assert spec.summary == "checkout is crash-looping"
    assert (spec.target_ref.kind, spec.target_ref.name) == (TargetKind.DEPLOYMENT, "checkout")
    assert spec.signals == [intake.signal]
    assert intake.signal.fingerprint == FINGERPRINT
    assert intake.signal.status is SignalStatus.FIRING
    assert intake.signal.starts_at == T0
    assert intake.signal.ends_at is None, "a firing alert's provisional end is not an end"
    assert intake.namespace == "shop"
    assert intake.base_name == f"am-kubepodcrashlooping-{FINGERPRINT}"
    assert intake.labels[LABEL_FINGERPRINT] == FINGERPRINT
    assert intake.annotations == {
        ANNOTATION_RECEIVER: "flywheel",
        ANNOTATION_EXTERNAL_URL: "http://alertmanager.example:9093",
        ANNOTATION_GENERATOR_URL: "http://prometheus.example/graph?g0.expr=up",
    }


@pytest.mark.parametrize(
    ("value", "severity"),
    [
        ("page", Severity.P0),
        ("critical", Severity.P1),
        ("Critical", Severity.P1),
        ("warning", Severity.P2),
        ("info", Severity.P3),
        ("P0", Severity.P0),
        ("p3", Severity.P3),
        ("P1", Severity.P1),
        ("catastrophic", Severity.P2),
        ("", Severity.P2),
        (None, Severity.P2),
    ],
)
def test_severity_labels_map_onto_p0_to_p3(value: str | None, severity: Severity) -> None:
    assert map_severity(value) is severity
    assert planned(labels_with(severity=value)).spec.severity is severity


@pytest.mark.parametrize(
    ("workload_labels", "service"),
    [
        ({"app.kubernetes.io/name": "payments", "app": "pay"}, "payments"),
        ({"app": "frontend"}, "frontend"),
        ({"app.kubernetes.io/name": "  ", "app": "frontend"}, "frontend"),
        ({}, "checkout"),
    ],
)
def test_service_comes_from_the_workloads_own_labels_else_its_name(
    workload_labels: dict[str, str], service: str
) -> None:
    exporter_labels = {"service": "prometheus-kube-state-metrics", "job": "kube-state-metrics", "app": "ksm",
                       "endpoint": "http", "instance": "10.244.0.7:8080"}
    result = map_alert(labels_with(**exporter_labels), workload_labels=workload_labels)
    assert isinstance(result, AlertIntake), result
    assert result.spec.service == service


def test_a_statefulset_alert_targets_the_statefulset_and_names_it_as_service() -> None:
    spec = planned(labels_with(deployment=None, statefulset="postgres")).spec
    assert (spec.target_ref.kind, spec.target_ref.name) == (TargetKind.STATEFULSET, "postgres")
    assert spec.service == "postgres"


@pytest.mark.parametrize("label", ["flywheel_target", "flywheel.dev/target"])
@pytest.mark.parametrize(
    ("value", "kind", "name"),
    [
        ("Deployment/web", TargetKind.DEPLOYMENT, "web"),
        ("statefulset/db-0.shard", TargetKind.STATEFULSET, "db-0.shard"),
        (" StatefulSet / cache ", TargetKind.STATEFULSET, "cache"),
    ],
)
def test_the_target_label_names_kind_and_workload(label: str, value: str, kind: TargetKind, name: str) -> None:
    labels = labels_with(deployment=None)
    labels[label] = value
    target = planned(labels).spec.target_ref
    assert (target.kind, target.name) == (kind, name)


def test_a_deployment_label_wins_over_the_target_label() -> None:
    labels = labels_with(flywheel_target="StatefulSet/db")
    assert planned(labels).spec.target_ref.kind is TargetKind.DEPLOYMENT


def test_error_type_comes_from_reason_or_error_type() -> None:
    assert planned(labels_with(error_type="OOMKilled")).spec.error_type == "OOMKilled"
    assert planned(labels_with(reason="Evicted", error_type="OOMKilled")).spec.error_type == "Evicted"
    assert planned(labels_with()).spec.error_type is None


def test_summary_falls_back_to_description_and_is_cut_to_the_schema_limit() -> None:
    assert planned(annotations={"description": "long story"}).spec.summary == "long story"
    assert planned(annotations={}).spec.summary is None
    long = planned(annotations={"summary": "x" * (SUMMARY_MAX_LENGTH + 500)}).spec.summary
    assert long == "x" * SUMMARY_MAX_LENGTH


def test_an_alert_without_alertname_gets_no_alert_name_but_a_named_signal() -> None:
    intake = planned(labels_with(alertname=None))
    assert intake.spec.alert_name is None, "counted by the alertname-null-rate metric"
    assert intake.signal.alert_name == UNNAMED_ALERT
    assert intake.base_name == f"am-alert-{FINGERPRINT}"


def test_a_resolved_alert_keeps_its_end() -> None:
    ended = T0 + timedelta(minutes=7)
    intake = planned(status="resolved", ends_at=ended.isoformat())
    assert intake.signal.status is SignalStatus.RESOLVED
    assert intake.signal.ends_at == ended


def test_signal_labels_keep_identifying_labels_within_the_limits() -> None:
    labels = labels_with(pod="checkout-7d9f", instance="10.0.0.1:8080")
    labels.update({f"extra_{i:03}": "v" * 2000 for i in range(200)})
    kept = planned(labels).signal.labels
    assert len(kept) <= MAX_SIGNAL_LABELS
    assert all(len(value) <= 1024 for value in kept.values())
    for name in ("alertname", "namespace", "deployment", "pod", "instance"):
        assert kept[name] == labels[name]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"namespace": None}, "labels.namespace", "missing"),
        ({"namespace": "Shop_Prod"}, "labels.namespace", "not a namespace"),
        ({"deployment": None}, "labels.pod", "names no workload"),
        ({"deployment": "Checkout!"}, "labels.deployment", "not a workload name"),
        ({"deployment": None, "statefulset": "db/0"}, "labels.statefulset", "not a workload name"),
        ({"deployment": None, "flywheel_target": "web"}, "labels.flywheel_target", "Kind/name"),
        ({"deployment": None, "flywheel_target": "CronJob/agent"}, "labels.flywheel_target", "Kind/name"),
        ({"deployment": None, "flywheel_target": "Deployment/"}, "labels.flywheel_target", "workload name"),
        ({"alertname": "A" * 254}, "labels.alertname", "253"),
        ({"error_type": "e" * 300}, "labels.error_type", "253"),
    ],
)
def test_an_alert_that_cannot_become_an_incident_is_refused_naming_the_field(
    changes: dict[str, str | None], field: str, words: str
) -> None:
    refusal = refused(labels_with(**changes))
    assert refusal.field == field
    assert words in refusal.reason


def test_an_overlong_fingerprint_is_refused() -> None:
    assert refused(fingerprint="f" * 129).field == "fingerprint"


def test_namespaces_outside_the_operator_scope_are_refused() -> None:
    scope = NamespaceScope(("shop-*, !shop-internal", "payments"))
    assert planned(labels_with(namespace="shop-eu"), scope).namespace == "shop-eu"
    assert planned(labels_with(namespace="payments"), scope).namespace == "payments"
    refusal = refused(labels_with(namespace="shop-internal"), scope)
    assert refusal.field == "labels.namespace"
    assert "not watched" in refusal.reason and "payments" in refusal.reason
    assert "not watched" in refused(labels_with(namespace="default"), scope).reason


@given(
    namespace=st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    pattern=st.lists(
        st.from_regex(r"!?[a-z*?][a-z0-9*?-]{0,6}", fullmatch=True), min_size=1, max_size=3
    ).map(", ".join),
)
def test_the_namespace_scope_matches_exactly_like_kopf(namespace: str, pattern: str) -> None:
    assert NamespaceScope((pattern,)).contains(namespace) == match_namespace(NamespaceName(namespace), pattern)


# --------------------------------------------------------------------------- names


def test_names_are_deterministic_dns_names_per_fingerprint() -> None:
    first, again = planned(), planned()
    assert first.base_name == again.base_name
    other = planned(fingerprint="0f0f0f0f0f0f0f0f")
    assert other.base_name != first.base_name
    assert DNS1123_SUBDOMAIN.fullmatch(first.base_name)


def test_foreign_fingerprints_are_hashed_into_a_name_safe_key() -> None:
    key = fingerprint_key("Some/Other Sender#1")
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert key == fingerprint_key("Some/Other Sender#1")
    assert fingerprint_key(FINGERPRINT) == FINGERPRINT
    assert DNS1123_SUBDOMAIN.fullmatch(incident_base_name("Höhe über NN!!", "x\ny"))


def test_recurrences_after_resolution_are_numbered_from_two() -> None:
    base = f"am-x-{FINGERPRINT}"
    assert [incident_name(base, n) for n in (1, 2, 13)] == [base, f"{base}-2", f"{base}-13"]
    for n in (1, 2, 13):
        assert sequence_of(base, incident_name(base, n)) == n
    for stranger in (f"{base}-1", f"{base}-02", f"{base}-x", f"{base}x", "am-other"):
        assert sequence_of(base, stranger) is None


# --------------------------------------------------------------------------- placement


def stored(name: str, *signals: Signal, phase: IncidentPhase | None = IncidentPhase.INVESTIGATING) -> StoredIncident:
    return StoredIncident(name=name, resource_version="1", phase=phase, signals=signals)


def test_a_first_firing_creates_the_first_incident_of_the_chain() -> None:
    intake = planned()
    assert place_signal(intake, []) == CreateIncident(intake.base_name, 1)


def test_a_repeated_notification_is_recorded_once() -> None:
    intake = planned()
    assert place_signal(intake, [stored(intake.base_name, intake.signal)]) == AlreadyRecorded(intake.base_name)


def test_a_new_episode_of_the_same_alert_is_appended_to_the_open_incident() -> None:
    first = planned()
    second = planned(starts_at=T0 + timedelta(hours=2))
    placement = place_signal(second, [stored(first.base_name, first.signal)])
    assert isinstance(placement, AppendSignal)
    assert placement.incident.name == first.base_name
    assert placement.signals == (first.signal, second.signal)


def test_a_firing_after_resolution_of_the_incident_opens_the_next_one() -> None:
    first = planned()
    recurrence = planned(starts_at=T0 + timedelta(days=1))
    chain = [stored(first.base_name, first.signal, phase=IncidentPhase.RESOLVED)]
    assert place_signal(recurrence, chain) == CreateIncident(f"{first.base_name}-2", 2)
    chain.append(stored(f"{first.base_name}-2", recurrence.signal, phase=IncidentPhase.CLOSED))
    third = planned(starts_at=T0 + timedelta(days=2))
    assert place_signal(third, chain) == CreateIncident(f"{first.base_name}-3", 3)


def test_a_resolved_alert_is_recorded_on_the_incident_of_its_episode_even_once_resolved() -> None:
    firing = planned()
    resolved = planned(status="resolved", ends_at=(T0 + timedelta(minutes=5)).isoformat())
    later = planned(starts_at=T0 + timedelta(days=1))
    chain = [
        stored(firing.base_name, firing.signal, phase=IncidentPhase.RESOLVED),
        stored(f"{firing.base_name}-2", later.signal),
    ]
    placement = place_signal(resolved, chain)
    assert isinstance(placement, AppendSignal)
    assert placement.incident.name == firing.base_name
    assert placement.signals[-1].status is SignalStatus.RESOLVED
    repeated = place_signal(resolved, [stored(firing.base_name, firing.signal, resolved.signal)])
    assert repeated == AlreadyRecorded(firing.base_name)


def test_a_resolved_alert_without_any_incident_opens_none() -> None:
    resolved = planned(status="resolved", ends_at=T0.isoformat())
    assert isinstance(place_signal(resolved, []), NothingToRecordOn)


def test_a_late_firing_notification_after_the_resolution_changes_nothing() -> None:
    firing = planned()
    resolved = planned(status="resolved", ends_at=T0.isoformat())
    chain = [stored(firing.base_name, resolved.signal, phase=IncidentPhase.RESOLVED)]
    assert place_signal(firing, chain) == AlreadyRecorded(firing.base_name)


def test_objects_merely_carrying_the_label_are_not_part_of_the_chain() -> None:
    intake = planned()
    assert place_signal(intake, [stored("copied-by-hand", intake.signal)]) == CreateIncident(intake.base_name, 1)


def test_signals_are_capped_dropping_the_oldest() -> None:
    episodes = [planned(starts_at=T0 + timedelta(minutes=i)).signal for i in range(MAX_SIGNALS)]
    newest = planned(starts_at=T0 + timedelta(days=1))
    placement = place_signal(newest, [stored(newest.base_name, *episodes)])
    assert isinstance(placement, AppendSignal)
    assert len(placement.signals) == MAX_SIGNALS
    assert placement.signals[0] == episodes[1]
    assert placement.signals[-1] == newest.signal


def test_a_stored_incident_is_read_from_its_object() -> None:
    intake = planned()
    body = INCIDENT.manifest(name=intake.base_name, namespace="shop", spec=intake.spec)
    body["metadata"]["resourceVersion"] = "42"
    body["status"] = {"phase": "Resolved"}
    incident = StoredIncident.from_body(json.loads(json.dumps(body)))
    assert incident == StoredIncident(intake.base_name, "42", IncidentPhase.RESOLVED, (intake.signal,))
    assert incident.closed
    body["spec"]["signals"][0]["startsAt"] = "not a time"
    with pytest.raises(InvalidInputError) as raised:
        StoredIncident.from_body(body)
    assert raised.value.field == "spec.signals[0]"


# --------------------------------------------------------------------------- properties

_INTERESTING_LABELS = [
    "alertname", "namespace", "deployment", "statefulset", "flywheel_target", "flywheel.dev/target",
    "service", "app", "job", "reason", "error_type", "severity",
]
_label_values = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True),
    st.sampled_from(["Deployment/web", "StatefulSet/db", "critical", "page", "P0", "shop", "", " "]),
    st.text(min_size=250, max_size=1500),
)
_random_label_maps = st.dictionaries(
    keys=st.one_of(st.sampled_from(_INTERESTING_LABELS), st.text(max_size=300)),
    values=_label_values,
    max_size=90,
)
# Half of the examples start from a valid alert, so that the mapping path is exercised as
# thoroughly as the refusals.
_label_maps = st.one_of(
    _random_label_maps,
    st.builds(lambda extra: {**labels_with(), **extra}, _random_label_maps),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(labels=_label_maps, annotations=st.dictionaries(st.text(max_size=20), st.text(max_size=3000), max_size=4),
       fingerprint=st.text(min_size=1, max_size=140))
def test_arbitrary_labels_give_a_valid_spec_or_a_refusal_naming_a_field(
    labels: dict[str, str], annotations: dict[str, str], fingerprint: str
) -> None:
    if "pod" in labels and not any(labels.get(k, "").strip() for k in
                                   ("deployment", "statefulset", "flywheel_target", "flywheel.dev/target")):
        labels = {**labels, "deployment": "web"}
    result = map_alert(labels, annotations=annotations, fingerprint=fingerprint)
    if isinstance(result, AlertRefusal):
        assert result.field.startswith("labels.") or result.field == "fingerprint"
        assert result.reason
        return
    # What the API server receives must pass the very model the CRD schema is generated from.
    body = json.loads(json.dumps(INCIDENT.manifest(name=result.base_name, namespace=result.namespace,
                                                   spec=result.spec, labels=result.labels)))
    spec = IncidentSpec.model_validate(body["spec"])
    assert spec.target_ref.name
    assert len(spec.signals[0].labels) <= MAX_SIGNAL_LABELS
    assert DNS1123_SUBDOMAIN.fullmatch(result.incident_name(7)) and len(result.incident_name(7)) <= 253
    assert re.fullmatch(r"[0-9a-f]{8,16}", result.labels[LABEL_FINGERPRINT])


_deliveries = st.lists(
    st.tuples(st.integers(min_value=0, max_value=30), st.sampled_from(["firing", "resolved"])), max_size=40
)


@settings(max_examples=150)
@given(deliveries=_deliveries, closing=st.sets(st.integers(min_value=0, max_value=40)))
def test_re_delivered_notifications_never_duplicate_anything(
    deliveries: list[tuple[int, str]], closing: set[int]
) -> None:
    """Simulates the store: apply placements, resolve the Incidents at random points, re-deliver."""
    chain: dict[str, StoredIncident] = {}

    def deliver(minute: int, status: str) -> object:
        intake = planned(status=status, starts_at=T0 + timedelta(minutes=minute),
                         ends_at=(T0 + timedelta(minutes=minute, seconds=30)).isoformat())
        placement = place_signal(intake, chain.values())
        match placement:
            case CreateIncident(name=name):
                chain[name] = stored(name, intake.signal)
            case AppendSignal(incident=incident, signals=signals):
                chain[incident.name] = stored(incident.name, *signals, phase=incident.phase)
        return placement

    for step, (minute, status) in enumerate(deliveries):
        deliver(minute, status)
        # Alertmanager re-sending right away (it got a 503 for another alert of the group).
        assert isinstance(deliver(minute, status), AlreadyRecorded | NothingToRecordOn)
        if step in closing:
            chain = {name: stored(name, *i.signals, phase=IncidentPhase.RESOLVED) for name, i in chain.items()}
    for minute, status in deliveries:
        deliver(minute, status)
    for minute, status in deliveries:
        assert isinstance(deliver(minute, status), AlreadyRecorded | NothingToRecordOn)

    recorded = [(signal.starts_at, signal.status) for i in chain.values() for signal in i.signals]
    assert len(recorded) == len(set(recorded)), "a signal was recorded twice"
    firing_episodes = [starts_at for starts_at, status in recorded if status is SignalStatus.FIRING]
    assert len(firing_episodes) == len(set(firing_episodes)), "an episode opened two Incidents"
    assert all(len(incident.signals) <= MAX_SIGNALS for incident in chain.values())
