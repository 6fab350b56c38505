"""Alertmanager webhook payloads turned into Incidents: validation and mapping, no I/O.

The intake (``flywheel.intake``) receives Alertmanager's webhook payload (version 4),
validates it with :func:`parse_payload`, finds what every alert is about with
:func:`address_alert`, has the workload looked up (``flywheel.stores.pod_owners``: the
only I/O, cached), maps the alert with :func:`plan_alert` and decides with
:func:`place_signal` where the alert's signal goes, given the Incidents already recorded
for its fingerprint. Everything here is deterministic, so that Alertmanager's retries (it
re-sends a whole group on any 5xx) never duplicate a signal or an Incident.

Mapping of one alert (labels are the alert's own labels):

- namespace ← ``namespace``; required, and it must be one the operator watches;
- the workload, in this order: a label naming it — ``deployment``, ``statefulset``,
  ``daemonset`` (what kube-state-metrics series carry), else ``flywheel.dev/target`` or
  its classic-charset spelling ``flywheel_target`` holding ``Kind/name`` (Alertmanager and
  Prometheus before 3.0 only accept ``[a-zA-Z_][a-zA-Z0-9_]*`` label names) — else the
  ``pod`` label, mapped to the workload that owns the Pod (Pod → ReplicaSet → Deployment,
  Pod → StatefulSet, Pod → DaemonSet, read from the API server). An alert naming neither,
  a Pod that is gone or has no supported owner, and a workload that does not exist are
  refused, each with its reason (:class:`RefusalReason`);
- service ← the workload's own label ``app.kubernetes.io/name``, else ``app``, else the
  workload's name. The alert's labels never are: ``job``, ``instance``, ``endpoint``,
  ``service``, ``pod`` and ``container`` describe the scrape target, which for the
  standard alerts is an exporter (kube-state-metrics, node-exporter, the kubelet's
  cAdvisor) and not the workload the alert is about;
- a ``pod`` label that names the exporter's own Pod (an exporter's series without a pod
  label of its own gets the scrape target's) is refused rather than mapped to the exporter;
- alertName ← ``alertname``; errorType ← ``reason`` | ``error_type``;
- severity ← ``severity``: page→P0, critical→P1, warning→P2, info→P3, P0..P3 as is,
  anything else P2;
- summary ← annotation ``summary`` | ``description``, cut to the schema's limit.

One Incident per fingerprint: its name is ``am-<alertname-slug>-<fingerprint>``, and a
new firing of the same alert is appended to it as a signal. Once that Incident is
Resolved or Closed, the next firing episode (a new ``startsAt``) opens the next
Incident of the chain, ``am-<slug>-<fingerprint>-2`` and so on: otherwise a
recurrence would land on a finished Incident, be neither counted nor remediated.
Resolved alerts are recorded as signals (status resolved, endsAt) and never resolve
an Incident: a person or a verified Run does.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from flywheel.api.bodies import IncidentBody, incident_phase
from flywheel.api.common import (
    DNS1123_LABEL_MAX_LENGTH,
    DNS1123_LABEL_PATTERN,
    DNS1123_SUBDOMAIN_MAX_LENGTH,
    DNS1123_SUBDOMAIN_PATTERN,
)
from flywheel.api.enums import IncidentPhase, Severity, SignalStatus, TargetKind
from flywheel.api.incident import (
    MAX_SIGNAL_LABELS,
    MAX_SIGNALS,
    SUMMARY_MAX_LENGTH,
    IncidentSpec,
    IncidentTargetRef,
    Signal,
)
from flywheel.errors import AlertRefusedError, InvalidInputError

ALERTMANAGER_SOURCE = "alertmanager"
"""``spec.source`` of Incidents opened by the intake."""

LABEL_FINGERPRINT = "flywheel.dev/alert-fingerprint"
"""Label on intake Incidents: the fingerprint key, to find an alert's Incidents in one list call."""
LABEL_SOURCE = "flywheel.dev/source"
ANNOTATION_RECEIVER = "flywheel.dev/alertmanager-receiver"
ANNOTATION_EXTERNAL_URL = "flywheel.dev/alertmanager-url"
ANNOTATION_GENERATOR_URL = "flywheel.dev/generator-url"
ANNOTATION_MAX_LENGTH = 2048
"""URLs are for humans to click; a longer one is cut rather than bloating the object."""

TARGET_LABELS = ("flywheel.dev/target", "flywheel_target")
WORKLOAD_LABELS: tuple[tuple[str, TargetKind], ...] = (
    ("deployment", TargetKind.DEPLOYMENT),
    ("statefulset", TargetKind.STATEFULSET),
    ("daemonset", TargetKind.DAEMONSET),
)
"""Labels naming the workload itself (kube-state-metrics' object labels); they win over ``pod``."""
POD_LABEL = "pod"
SERVICE_WORKLOAD_LABELS = ("app.kubernetes.io/name", "app")
"""The workload's own labels that name its service, in this order; else the workload's name."""
SCRAPE_TARGET_LABELS = ("job", "instance", "endpoint", "service", "pod", "container")
"""Labels the Prometheus Operator attaches to every series of a scrape target. None of them
ever becomes the Incident's service; ``pod`` names the alert's subject only when it is not
the exporter's own Pod."""
EXPORTER_JOBS = frozenset({"kube-state-metrics", "node-exporter", "kubelet", "cadvisor"})
"""``job`` values of the exporters that report about other objects (kube-prometheus-stack)."""
EXPORTER_NAMES = frozenset({"kube-state-metrics", "prometheus-node-exporter", "node-exporter"})
"""``app.kubernetes.io/name`` of the exporters' own workloads."""
EXPORTER_NAMES_BY_JOB: Mapping[str, frozenset[str]] = {
    "kube-state-metrics": frozenset({"kube-state-metrics"}),
    "node-exporter": frozenset({"prometheus-node-exporter", "node-exporter"}),
    # The kubelet (and its cAdvisor) is no Pod: a pod label on its series is always the subject's.
    "kubelet": frozenset(),
    "cadvisor": frozenset(),
}
"""The workloads (``app.kubernetes.io/name``) each exporter job runs as: an alert from that job
whose ``pod`` is one of them names the exporter itself. Another exporter's Pod is a subject like
any other (kube-state-metrics reporting node-exporter's DaemonSet Pod crash looping)."""
_EXPORTER_SERVICE = re.compile(
    r"(?:^|-)(?:kube-state-metrics|prometheus-node-exporter|node-exporter|kubelet)$"
    r"|^(?:prometheus|alertmanager|thanos-ruler)-operated$"
)
"""Services of the exporters as kube-prometheus-stack names them (``<release>-kube-state-metrics``,
``<release>-prometheus-node-exporter``, ``<release>-kube-prometheus-kubelet``) and the ones the
Prometheus Operator generates (``prometheus-operated``, the kubelet Service...)."""
ERROR_TYPE_LABELS = ("reason", "error_type")
SUMMARY_ANNOTATIONS = ("summary", "description")

SEVERITY_BY_LABEL: Mapping[str, Severity] = {
    "page": Severity.P0,
    "critical": Severity.P1,
    "warning": Severity.P2,
    "info": Severity.P3,
    **{level.value.lower(): level for level in Severity},
}
DEFAULT_SEVERITY = Severity.P2

UNNAMED_ALERT = "unnamed"
"""Signal name of an alert without ``alertname`` (the Incident's alertName stays empty)."""

NAME_PREFIX = "am"
SLUG_MAX_LENGTH = 40
FINGERPRINT_KEY_LENGTH = 16
ALERT_NAME_MAX_LENGTH = 253
SERVICE_MAX_LENGTH = 253
ERROR_TYPE_MAX_LENGTH = 253
"""The schema limits of alertName, service and errorType; a longer label is refused, not cut,
because these fields make up the anomaly signature."""
FINGERPRINT_MAX_LENGTH = 128
"""``Signal.fingerprint``'s schema limit; Alertmanager's own fingerprints are 16 hex characters."""

SIGNAL_LABEL_VALUE_MAX_LENGTH = 1024
SIGNAL_LABELS_MAX_CHARS = 8192
"""Characters of label names and values kept per signal. With at most 100 signals an
Incident stays far below etcd's object size limit, whatever a sender puts in labels."""

# Labels that identify the alert for a human or for Flywheel itself: kept first when a
# signal has to drop labels to fit the limits above.
_PRIORITY_LABELS = (
    "alertname",
    "namespace",
    "severity",
    *(label for label, _ in WORKLOAD_LABELS),
    *TARGET_LABELS,
    *ERROR_TYPE_LABELS,
    "pod",
    "container",
    "service",
    "job",
    "instance",
)

CLOSED_PHASES = frozenset({IncidentPhase.RESOLVED, IncidentPhase.CLOSED})
"""An Incident in these phases takes no new firing episode: the next one opens a new Incident."""

_KINDS_BY_LOWER_NAME = {kind.value.lower(): kind for kind in TargetKind}
_DNS1123_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN_PATTERN)
_DNS1123_LABEL = re.compile(DNS1123_LABEL_PATTERN)
_HEX_FINGERPRINT = re.compile(r"[0-9a-f]{8,16}")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
# Alertmanager writes Go's zero time for "no end yet".
_GO_ZERO_TIME_YEAR = 1


MIN_INTAKE_TOKEN_LENGTH: Final = 32
"""The shortest intake token accepted (FLYWHEEL_INTAKE_TOKEN): a remediation credential, not a password."""


# --------------------------------------------------------------------------- payload


LabelMap = dict[str, str]


class _PayloadModel(BaseModel):
    # Unknown fields are ignored: Alertmanager adds fields over time within version 4.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class AlertmanagerAlert(_PayloadModel):
    """One alert of an Alertmanager webhook payload."""

    status: SignalStatus
    labels: LabelMap
    annotations: LabelMap = Field(default_factory=dict)
    starts_at: AwareDatetime = Field(alias="startsAt")
    ends_at: AwareDatetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: Annotated[str, StringConstraints(min_length=1)]


class AlertmanagerPayload(_PayloadModel):
    """Alertmanager's webhook payload, version 4 (the only version it has ever sent)."""

    version: Literal["4"]
    group_key: str = Field(default="", alias="groupKey")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    status: SignalStatus
    receiver: str
    group_labels: LabelMap = Field(default_factory=dict, alias="groupLabels")
    common_labels: LabelMap = Field(default_factory=dict, alias="commonLabels")
    common_annotations: LabelMap = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[AlertmanagerAlert]


def _field_path(location: Iterable[int | str]) -> str:
    """Pydantic's error location as a path users read: ``alerts[2].labels.namespace``."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "body"


def parse_payload(data: Any) -> AlertmanagerPayload:
    """The validated payload, or :class:`InvalidInputError` naming the first wrong field."""
    try:
        return AlertmanagerPayload.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise InvalidInputError(_field_path(first["loc"]), first["msg"]) from exc


# --------------------------------------------------------------------------- namespaces


@dataclass(frozen=True)
class NamespaceScope:
    """The namespaces the operator watches, as Kopf's ``--namespace`` patterns.

    No pattern means cluster-wide. Each pattern follows Kopf's syntax, matched the
    same way Kopf matches it so that the intake accepts exactly what the operator
    will reconcile: comma-separated globs, ``!`` excludes, a leading exclusion implies
    a preceding ``*``; a namespace is in scope when any pattern matches it.
    """

    patterns: tuple[str, ...] = ()

    def contains(self, namespace: str) -> bool:
        return not self.patterns or any(_matches_kopf_pattern(namespace, p) for p in self.patterns)

    def describe(self) -> str:
        return ", ".join(self.patterns) if self.patterns else "all namespaces"


def _matches_kopf_pattern(namespace: str, pattern: str) -> bool:
    globs = [glob.strip() for glob in pattern.split(",")]
    if not globs or globs[0].startswith("!"):
        globs.insert(0, "*")
    matches = first_match = fnmatch.fnmatchcase(namespace, globs[0])
    for glob in globs[1:]:
        if glob.startswith("!"):
            matches = matches and not fnmatch.fnmatchcase(namespace, glob.lstrip("!"))
        else:
            matches = matches or (first_match and fnmatch.fnmatchcase(namespace, glob))
    return matches


# --------------------------------------------------------------------------- one alert


class RefusalReason(StrEnum):
    """Why an alert was refused, in a closed vocabulary: the ``reason`` label of
    ``flywheel_intake_alerts_refused_total`` (the human sentence is in the report and the log)."""

    NO_NAMESPACE = "no_namespace"
    NAMESPACE_NOT_WATCHED = "namespace_not_watched"
    NAMESPACE_NOT_ENABLED = "namespace_not_enabled"
    """The namespace has not opted in to remediation (``flywheel.domain.namespaces``)."""
    INVALID_LABEL = "invalid_label"
    """A label (or the fingerprint) is not a valid name or is longer than the schema allows."""
    NO_WORKLOAD = "no_workload"
    """Neither a workload label nor a ``pod`` label."""
    EXPORTER_POD = "exporter_pod"
    """The ``pod`` label names the exporter that reported the alert, not its subject."""
    POD_NOT_FOUND = "pod_not_found"
    UNSUPPORTED_OWNER = "unsupported_owner"
    """The Pod (or its ReplicaSet) is not owned by a Deployment, StatefulSet or DaemonSet."""
    WORKLOAD_NOT_FOUND = "workload_not_found"
    REFUSED_BY_API = "refused_by_api"
    """The API server refused the Incident (its content or its namespace)."""
    UNREADABLE_INCIDENT = "unreadable_incident"


@dataclass(frozen=True)
class AlertRefusal:
    """Why one alert cannot become an Incident; ``field`` is relative to the alert."""

    field: str
    reason: str
    code: RefusalReason = RefusalReason.INVALID_LABEL

    @classmethod
    def of(cls, error: InvalidInputError) -> AlertRefusal:
        code = RefusalReason(error.code) if isinstance(error, AlertRefusedError) else RefusalReason.INVALID_LABEL
        return cls(error.field, error.reason, code)


def _refuse(code: RefusalReason, field: str, reason: str) -> AlertRefusedError:
    return AlertRefusedError(code.value, field, reason)


@dataclass(frozen=True)
class PayloadContext:
    """What the payload says about all of its alerts."""

    receiver: str
    external_url: str = ""

    @classmethod
    def of(cls, payload: AlertmanagerPayload) -> PayloadContext:
        return cls(receiver=payload.receiver, external_url=payload.external_url)


@dataclass(frozen=True)
class AlertIntake:
    """One valid alert: where its Incident lives, the signal to record, the spec to create."""

    namespace: str
    fingerprint_key: str
    base_name: str
    signal: Signal
    spec: IncidentSpec
    labels: Mapping[str, str]
    annotations: Mapping[str, str]

    def incident_name(self, sequence: int) -> str:
        return incident_name(self.base_name, sequence)


def fingerprint_key(fingerprint: str) -> str:
    """A short lowercase-hex identity of the fingerprint, usable in names and label values.

    Alertmanager's fingerprints (16 hex characters) are kept as they are, so a user can
    match ``kubectl get inc`` against Alertmanager's UI; anything else is hashed.
    """
    if _HEX_FINGERPRINT.fullmatch(fingerprint):
        return fingerprint
    # surrogatepass: a JSON body may carry a lone surrogate escape, which strict UTF-8 refuses.
    digest = hashlib.sha256(fingerprint.encode("utf-8", "surrogatepass")).hexdigest()
    return digest[:FINGERPRINT_KEY_LENGTH]


def alert_slug(alert_name: str | None) -> str:
    """``KubePodCrashLooping`` → ``kubepodcrashlooping``; the readable part of Incident names."""
    slug = _NOT_SLUG.sub("-", (alert_name or "").lower()).strip("-")[:SLUG_MAX_LENGTH].rstrip("-")
    return slug or "alert"


def incident_base_name(alert_name: str | None, fingerprint: str) -> str:
    return f"{NAME_PREFIX}-{alert_slug(alert_name)}-{fingerprint_key(fingerprint)}"


def incident_name(base_name: str, sequence: int) -> str:
    """The first Incident of a fingerprint has the base name; recurrences get ``-2``, ``-3``…"""
    if sequence < 1:
        raise ValueError(f"sequence starts at 1, got {sequence}")
    return base_name if sequence == 1 else f"{base_name}-{sequence}"


def sequence_of(base_name: str, name: str) -> int | None:
    """Inverse of :func:`incident_name`; ``None`` for a name outside the chain."""
    if name == base_name:
        return 1
    prefix = f"{base_name}-"
    if name.startswith(prefix):
        rest = name[len(prefix) :]
        if rest.isascii() and rest.isdigit() and not rest.startswith("0") and int(rest) >= 2:
            return int(rest)
    return None


def map_severity(value: str | None) -> Severity:
    if value is None:
        return DEFAULT_SEVERITY
    return SEVERITY_BY_LABEL.get(value.strip().lower(), DEFAULT_SEVERITY)


def _first_label(labels: Mapping[str, str], names: Sequence[str]) -> tuple[str, str] | None:
    """The first of ``names`` carrying a non-blank value, with the value stripped."""
    for name in names:
        value = labels.get(name, "").strip()
        if value:
            return name, value
    return None


# --------------------------------------------------------------------------- the workload


@dataclass(frozen=True)
class WorkloadSubject:
    """The alert names its workload itself (``label`` is the label that does)."""

    kind: TargetKind
    name: str
    label: str


@dataclass(frozen=True)
class PodSubject:
    """The alert names a Pod: its workload is the Pod's owner."""

    name: str


AlertSubject = WorkloadSubject | PodSubject


@dataclass(frozen=True)
class AlertAddress:
    """Where an alert points: a namespace the operator watches and what in it the alert is about."""

    namespace: str
    subject: AlertSubject
    from_exporter: bool = False
    """The alert's series came from an exporter reporting about other objects (kube-state-metrics,
    node-exporter, cAdvisor): its ``pod`` label may be the exporter's own."""
    exporter_service: str | None = None
    exporter_job: str | None = None


@dataclass(frozen=True)
class Workload:
    """A workload as read from the API server: what the Incident targets and its service."""

    kind: TargetKind
    name: str
    labels: Mapping[str, str] = dataclass_field(default_factory=dict)

    @property
    def ref(self) -> IncidentTargetRef:
        return IncidentTargetRef(kind=self.kind, name=self.name)

    @property
    def service(self) -> str:
        """``app.kubernetes.io/name``, else ``app``, else the workload's name."""
        found = _first_label(self.labels, SERVICE_WORKLOAD_LABELS)
        if found is not None and len(found[1]) <= SERVICE_MAX_LENGTH:
            return found[1]
        return self.name

    @property
    def is_exporter(self) -> bool:
        return self.labels.get("app.kubernetes.io/name", "").strip() in EXPORTER_NAMES

    def is_exporter_of(self, job: str | None) -> bool:
        """Whether this workload is the exporter that ``job`` scrapes (any exporter when the job is unknown)."""
        names = EXPORTER_NAMES_BY_JOB.get(job or "")
        if names is None:
            return self.is_exporter
        return self.labels.get("app.kubernetes.io/name", "").strip() in names

    def describe(self) -> str:
        return f"{self.kind.value}/{self.name}"


def workload_of(kind: TargetKind, body: Mapping[str, Any]) -> Workload:
    """The :class:`Workload` of an ``apps/v1`` object as the API server returns it."""
    metadata = body.get("metadata") or {}
    labels = metadata.get("labels") or {}
    return Workload(kind=kind, name=str(metadata.get("name", "")),
                    labels={str(key): str(value) for key, value in labels.items()})


def is_exporter_alert(labels: Mapping[str, str]) -> bool:
    """Whether the alert's scrape-target labels are an exporter's (see :data:`EXPORTER_JOBS`)."""
    job = labels.get("job", "").strip()
    service = labels.get("service", "").strip()
    return job in EXPORTER_JOBS or bool(service and _EXPORTER_SERVICE.search(service))


def alert_subject(labels: Mapping[str, str]) -> AlertSubject:
    """What the alert is about: a label naming the workload wins over ``pod``."""
    for label, kind in WORKLOAD_LABELS:
        value = labels.get(label, "").strip()
        if value:
            return _valid_subject(kind, value, f"labels.{label}")
    found = _first_label(labels, TARGET_LABELS)
    if found is not None:
        label, value = found
        kind_text, slash, name = value.partition("/")
        named_kind = _KINDS_BY_LOWER_NAME.get(kind_text.strip().lower())
        if not slash or named_kind is None:
            raise _refuse(
                RefusalReason.INVALID_LABEL, f"labels.{label}",
                f"{_shorten(value)!r} is not Kind/name with Kind one of {', '.join(k.value for k in TargetKind)}",
            )
        return _valid_subject(named_kind, name.strip(), f"labels.{label}")
    pod = labels.get(POD_LABEL, "").strip()
    if pod:
        if len(pod) > DNS1123_SUBDOMAIN_MAX_LENGTH or not _DNS1123_SUBDOMAIN.fullmatch(pod):
            raise _refuse(RefusalReason.INVALID_LABEL, "labels.pod", f"{_shorten(pod)!r} is not a Pod name")
        return PodSubject(pod)
    raise _refuse(
        RefusalReason.NO_WORKLOAD, "labels.pod",
        "the alert names no workload: it needs a pod label (its owner is the target), a deployment, "
        "statefulset or daemonset label, or flywheel_target (flywheel.dev/target) set to Kind/name",
    )


def _valid_subject(kind: TargetKind, name: str, field_path: str) -> WorkloadSubject:
    ref = _valid_workload(kind, name, field_path)
    return WorkloadSubject(ref.kind, ref.name, field_path.removeprefix("labels."))


# --------------------------------------------------------------------------- the owner chain


@dataclass(frozen=True)
class OwnedByReplicaSet:
    """The Pod's controller is a ReplicaSet: its own owner (a Deployment) is the workload."""

    name: str


OwnerStep = WorkloadSubject | OwnedByReplicaSet

_APPS_GROUP = "apps"
_POD_OWNER_KINDS: Mapping[str, TargetKind | None] = {
    "ReplicaSet": None,
    "StatefulSet": TargetKind.STATEFULSET,
    "DaemonSet": TargetKind.DAEMONSET,
}


def _controller_reference(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The owner reference with ``controller: true``: the one object that manages this one."""
    references = (body.get("metadata") or {}).get("ownerReferences") or []
    return next((ref for ref in references if isinstance(ref, Mapping) and ref.get("controller") is True), None)


def _describe_reference(reference: Mapping[str, Any]) -> str:
    return f"{reference.get('kind')}/{reference.get('name')} ({reference.get('apiVersion')})"


def pod_owner(pod: Mapping[str, Any]) -> OwnerStep:
    """The next step up from a Pod, or :class:`AlertRefusedError` when no supported workload owns it."""
    name = (pod.get("metadata") or {}).get("name")
    reference = _controller_reference(pod)
    if reference is None:
        raise _refuse(RefusalReason.UNSUPPORTED_OWNER, "labels.pod",
                      f"Pod {name} has no controller: Flywheel acts on the Deployment, StatefulSet or "
                      "DaemonSet that owns a Pod")
    group = str(reference.get("apiVersion", "")).partition("/")[0]
    kind = str(reference.get("kind", ""))
    owner_name = str(reference.get("name", ""))
    if group != _APPS_GROUP or kind not in _POD_OWNER_KINDS or not _DNS1123_SUBDOMAIN.fullmatch(owner_name):
        raise _refuse(RefusalReason.UNSUPPORTED_OWNER, "labels.pod",
                      f"Pod {name} is controlled by {_describe_reference(reference)}, not by a Deployment, "
                      "StatefulSet or DaemonSet")
    target_kind = _POD_OWNER_KINDS[kind]
    if target_kind is None:
        return OwnedByReplicaSet(owner_name)
    return WorkloadSubject(target_kind, owner_name, POD_LABEL)


def replicaset_owner(replica_set: Mapping[str, Any]) -> WorkloadSubject:
    """The Deployment owning a ReplicaSet, or :class:`AlertRefusedError` for a bare ReplicaSet."""
    name = (replica_set.get("metadata") or {}).get("name")
    reference = _controller_reference(replica_set)
    if reference is None:
        raise _refuse(RefusalReason.UNSUPPORTED_OWNER, "labels.pod",
                      f"the Pod's ReplicaSet {name} belongs to no Deployment")
    group = str(reference.get("apiVersion", "")).partition("/")[0]
    owner_name = str(reference.get("name", ""))
    if group != _APPS_GROUP or reference.get("kind") != "Deployment" or not _DNS1123_SUBDOMAIN.fullmatch(owner_name):
        raise _refuse(RefusalReason.UNSUPPORTED_OWNER, "labels.pod",
                      f"the Pod's ReplicaSet {name} is controlled by {_describe_reference(reference)}, "
                      "not by a Deployment")
    return WorkloadSubject(TargetKind.DEPLOYMENT, owner_name, POD_LABEL)


def pod_not_found(namespace: str, pod: str) -> AlertRefusal:
    return AlertRefusal("labels.pod", f"Pod {pod} does not exist in namespace {namespace} (gone?)",
                        RefusalReason.POD_NOT_FOUND)


def replicaset_not_found(namespace: str, name: str) -> AlertRefusal:
    return AlertRefusal("labels.pod", f"the Pod's ReplicaSet {name} does not exist in namespace {namespace} "
                        "(the Pod is being deleted)", RefusalReason.POD_NOT_FOUND)


def workload_not_found(namespace: str, subject: WorkloadSubject) -> AlertRefusal:
    via = "the owner of the Pod, " if subject.label == POD_LABEL else ""
    return AlertRefusal(f"labels.{subject.label}",
                        f"{via}{subject.kind.value}/{subject.name} does not exist in namespace {namespace}",
                        RefusalReason.WORKLOAD_NOT_FOUND)


def _valid_workload(kind: TargetKind, name: str, field: str) -> IncidentTargetRef:
    if len(name) > DNS1123_SUBDOMAIN_MAX_LENGTH or not _DNS1123_SUBDOMAIN.fullmatch(name):
        raise _refuse(RefusalReason.INVALID_LABEL, field,
                      f"{_shorten(name)!r} is not a workload name (a DNS-1123 subdomain)")
    return IncidentTargetRef(kind=kind, name=name)


def _bounded_label(labels: Mapping[str, str], names: Sequence[str], max_length: int) -> str | None:
    """The first non-blank label of ``names``, refused (naming it) when longer than the schema allows."""
    found = _first_label(labels, names)
    if found is None:
        return None
    label, value = found
    if len(value) > max_length:
        raise _refuse(RefusalReason.INVALID_LABEL, f"labels.{label}", f"longer than {max_length} characters")
    return value


def _signal_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The alert's labels within the signal's limits, identifying labels first."""
    ordered = [name for name in _PRIORITY_LABELS if name in labels]
    ordered += sorted(name for name in labels if name not in _PRIORITY_LABELS)
    kept: dict[str, str] = {}
    budget = SIGNAL_LABELS_MAX_CHARS
    for name in ordered:
        if len(kept) == MAX_SIGNAL_LABELS:
            break
        value = labels[name][:SIGNAL_LABEL_VALUE_MAX_LENGTH]
        cost = len(name) + len(value)
        if cost > budget:
            continue
        kept[name] = value
        budget -= cost
    return kept


def _summary(annotations: Mapping[str, str]) -> str | None:
    found = _first_label(annotations, SUMMARY_ANNOTATIONS)
    return found[1][:SUMMARY_MAX_LENGTH] if found else None


def _end_time(alert: AlertmanagerAlert) -> datetime | None:
    """When a resolved alert ended. Firing alerts carry a provisional end (or Go's zero time): dropped."""
    if alert.status is not SignalStatus.RESOLVED or alert.ends_at is None:
        return None
    if alert.ends_at.year == _GO_ZERO_TIME_YEAR:
        return None
    return alert.ends_at


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def address_alert(alert: AlertmanagerAlert, scope: NamespaceScope) -> AlertAddress | AlertRefusal:
    """The namespace and the subject of one alert, or which field keeps it from becoming an Incident."""
    try:
        labels = alert.labels
        namespace = labels.get("namespace", "").strip()
        if not namespace:
            raise _refuse(RefusalReason.NO_NAMESPACE, "labels.namespace",
                          "missing: the intake needs the namespace of the workload")
        if len(namespace) > DNS1123_LABEL_MAX_LENGTH or not _DNS1123_LABEL.fullmatch(namespace):
            raise _refuse(RefusalReason.INVALID_LABEL, "labels.namespace",
                          f"{_shorten(namespace)!r} is not a namespace name")
        if not scope.contains(namespace):
            raise _refuse(RefusalReason.NAMESPACE_NOT_WATCHED, "labels.namespace",
                          f"namespace {namespace!r} is not watched by this operator ({scope.describe()})")
        if len(alert.fingerprint) > FINGERPRINT_MAX_LENGTH:
            raise _refuse(RefusalReason.INVALID_LABEL, "fingerprint", f"longer than {FINGERPRINT_MAX_LENGTH} characters")
        exporter = is_exporter_alert(labels)
        return AlertAddress(
            namespace=namespace,
            subject=alert_subject(labels),
            from_exporter=exporter,
            exporter_service=labels.get("service", "").strip() or None if exporter else None,
            exporter_job=labels.get("job", "").strip() or None if exporter else None,
        )
    except InvalidInputError as exc:
        return AlertRefusal.of(exc)


def exporter_pod_refusal(address: AlertAddress, workload: Workload) -> AlertRefusal | None:
    """A refusal when the alert's ``pod`` label is the exporter's own Pod (see the module docs).

    An exporter's series about another object (a node, a Job, a volume) has no pod label of
    its own, so the scrape target's — the exporter's Pod — is attached to it: mapping that
    to its owner would remediate kube-state-metrics for a node that is not ready.
    """
    if not isinstance(address.subject, PodSubject) or not address.from_exporter:
        return None
    if workload.is_exporter_of(address.exporter_job) or (
        address.exporter_service is not None and workload.name == address.exporter_service
    ):
        return AlertRefusal(
            "labels.pod",
            f"Pod {address.subject.name} is the exporter that reported the alert ({workload.describe()}), "
            "not its subject: the alert names no workload",
            RefusalReason.EXPORTER_POD,
        )
    return None


def plan_alert(
    alert: AlertmanagerAlert, context: PayloadContext, address: AlertAddress, workload: Workload
) -> AlertIntake | AlertRefusal:
    """Map one alert, whose workload was looked up, to its Incident, or say which field keeps it
    from becoming one."""
    refusal = exporter_pod_refusal(address, workload)
    if refusal is not None:
        return refusal
    try:
        return _plan(alert, context, address.namespace, workload)
    except InvalidInputError as exc:
        return AlertRefusal.of(exc)
    except ValidationError as exc:
        # The checks in _plan mirror the schema; this only fires if the two drift apart.
        first = exc.errors(include_url=False)[0]
        return AlertRefusal(_field_path(first["loc"]), first["msg"])


def _plan(alert: AlertmanagerAlert, context: PayloadContext, namespace: str, workload: Workload) -> AlertIntake:
    labels = alert.labels
    alert_name = _bounded_label(labels, ("alertname",), ALERT_NAME_MAX_LENGTH)
    error_type = _bounded_label(labels, ERROR_TYPE_LABELS, ERROR_TYPE_MAX_LENGTH)
    signal = Signal(
        alert_name=alert_name or UNNAMED_ALERT,
        labels=_signal_labels(labels),
        starts_at=alert.starts_at,
        ends_at=_end_time(alert),
        fingerprint=alert.fingerprint,
        status=alert.status,
    )
    spec = IncidentSpec(
        alert_name=alert_name,
        service=workload.service,
        error_type=error_type,
        severity=map_severity(labels.get("severity")),
        source=ALERTMANAGER_SOURCE,
        summary=_summary(alert.annotations),
        signals=[signal],
        target_ref=workload.ref,
    )
    key = fingerprint_key(alert.fingerprint)
    annotations = {ANNOTATION_RECEIVER: context.receiver[:ANNOTATION_MAX_LENGTH]}
    if context.external_url:
        annotations[ANNOTATION_EXTERNAL_URL] = context.external_url[:ANNOTATION_MAX_LENGTH]
    if alert.generator_url:
        annotations[ANNOTATION_GENERATOR_URL] = alert.generator_url[:ANNOTATION_MAX_LENGTH]
    return AlertIntake(
        namespace=namespace,
        fingerprint_key=key,
        base_name=incident_base_name(alert_name, alert.fingerprint),
        signal=signal,
        spec=spec,
        labels={LABEL_FINGERPRINT: key, LABEL_SOURCE: ALERTMANAGER_SOURCE},
        annotations=annotations,
    )


# --------------------------------------------------------------------------- placement


SignalKey = tuple[str | None, datetime, SignalStatus]


def signal_key(signal: Signal) -> SignalKey:
    """Identity of a signal for deduplication: (fingerprint, startsAt, status)."""
    return signal.fingerprint, signal.starts_at.astimezone(UTC), signal.status


def _episode_key(signal: Signal) -> tuple[str | None, datetime]:
    """One firing episode of one alert, whatever its status."""
    return signal.fingerprint, signal.starts_at.astimezone(UTC)


@dataclass(frozen=True)
class StoredIncident:
    """An Incident already recorded for the alert's fingerprint, as the intake needs it: read fresh
    from a labelled list, not the index (its resourceVersion guards the append), with its signals as
    full models and a bad one named by its field."""

    name: str
    resource_version: str
    phase: IncidentPhase | None
    signals: tuple[Signal, ...]

    @property
    def closed(self) -> bool:
        return self.phase in CLOSED_PHASES

    @classmethod
    def from_body(cls, body: IncidentBody) -> StoredIncident:
        """Parse an Incident object; :class:`InvalidInputError` names a field the schema should have refused."""
        metadata = body["metadata"]
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        try:
            phase = incident_phase(status)
        except ValueError as exc:
            raise InvalidInputError("status.phase", f"unknown phase {status.get('phase')!r}") from exc
        signals = []
        for index, raw in enumerate(spec.get("signals") or []):
            try:
                signals.append(Signal.model_validate(raw))
            except ValidationError as exc:
                raise InvalidInputError(f"spec.signals[{index}]", str(exc.errors(include_url=False)[0]["msg"])) from exc
        return cls(
            name=str(metadata.get("name", "")),
            resource_version=str(metadata.get("resourceVersion", "")),
            phase=phase,
            signals=tuple(signals),
        )


@dataclass(frozen=True)
class AlreadyRecorded:
    """The signal is on this Incident already (a retried or repeated notification)."""

    incident: str


@dataclass(frozen=True)
class AppendSignal:
    """Write ``signals`` (the old ones plus the new one, the oldest dropped past the limit)."""

    incident: StoredIncident
    signals: tuple[Signal, ...]


@dataclass(frozen=True)
class CreateIncident:
    """No Incident takes this firing episode: create the next one of the chain."""

    name: str
    sequence: int


@dataclass(frozen=True)
class NothingToRecordOn:
    """A resolved alert whose firing no Incident recorded: there is nothing to resolve, nothing to act on."""

    reason: str


Placement = AlreadyRecorded | AppendSignal | CreateIncident | NothingToRecordOn


def append_signal(signals: Sequence[Signal], new: Signal) -> tuple[Signal, ...]:
    """``signals`` plus ``new``, keeping the newest :data:`MAX_SIGNALS`."""
    return (*signals, new)[-MAX_SIGNALS:]


def place_signal(intake: AlertIntake, recorded: Iterable[StoredIncident]) -> Placement:
    """Where the alert's signal goes, given the Incidents recorded for its fingerprint.

    Objects that carry the fingerprint label but are not named like the chain (a label
    copied by hand) are left out: the chain is defined by the names.
    """
    chain = sorted(
        ((sequence, incident) for incident in recorded
         if (sequence := sequence_of(intake.base_name, incident.name)) is not None),
        key=lambda item: item[0],
    )
    newest_first = [incident for _, incident in reversed(chain)]
    episode = _episode_key(intake.signal)
    recorded_already = _first(newest_first, lambda incident: _records(incident, intake.signal))
    if recorded_already is not None:
        return AlreadyRecorded(recorded_already.name)

    if intake.signal.status is SignalStatus.RESOLVED:
        holder = _first(newest_first, lambda incident: any(_episode_key(s) == episode for s in incident.signals))
        holder = holder or _first(newest_first, lambda incident: not incident.closed)
        if holder is None:
            return NothingToRecordOn("no Incident recorded this alert firing")
        return AppendSignal(holder, append_signal(holder.signals, intake.signal))

    open_incident = _first(newest_first, lambda incident: not incident.closed)
    if open_incident is not None:
        return AppendSignal(open_incident, append_signal(open_incident.signals, intake.signal))
    next_sequence = chain[-1][0] + 1 if chain else 1
    return CreateIncident(intake.incident_name(next_sequence), next_sequence)


def _records(incident: StoredIncident, new: Signal) -> bool:
    """Whether the Incident holds ``new`` already.

    Resolved signals are deduplicated by (fingerprint, startsAt, status). A firing one is
    deduplicated by its episode (fingerprint, startsAt) whatever the status on record: a
    firing notification arriving late, after its resolution, adds nothing and must not
    open a new Incident for an alert that already ended.
    """
    if new.status is SignalStatus.FIRING:
        episode = _episode_key(new)
        return any(_episode_key(signal) == episode for signal in incident.signals)
    key = signal_key(new)
    return any(signal_key(signal) == key for signal in incident.signals)


def _first(incidents: Iterable[StoredIncident], wanted: Callable[[StoredIncident], bool]) -> StoredIncident | None:
    return next((incident for incident in incidents if wanted(incident)), None)


__all__ = [
    "ALERTMANAGER_SOURCE",
    "ANNOTATION_EXTERNAL_URL",
    "ANNOTATION_GENERATOR_URL",
    "ANNOTATION_RECEIVER",
    "CLOSED_PHASES",
    "DEFAULT_SEVERITY",
    "EXPORTER_JOBS",
    "LABEL_FINGERPRINT",
    "LABEL_SOURCE",
    "SCRAPE_TARGET_LABELS",
    "SERVICE_WORKLOAD_LABELS",
    "UNNAMED_ALERT",
    "WORKLOAD_LABELS",
    "AlertAddress",
    "AlertIntake",
    "AlertRefusal",
    "AlertSubject",
    "AlertmanagerAlert",
    "AlertmanagerPayload",
    "AlreadyRecorded",
    "AppendSignal",
    "CreateIncident",
    "NamespaceScope",
    "NothingToRecordOn",
    "OwnedByReplicaSet",
    "OwnerStep",
    "PayloadContext",
    "Placement",
    "PodSubject",
    "RefusalReason",
    "StoredIncident",
    "Workload",
    "WorkloadSubject",
    "address_alert",
    "alert_slug",
    "alert_subject",
    "append_signal",
    "exporter_pod_refusal",
    "fingerprint_key",
    "incident_base_name",
    "incident_name",
    "is_exporter_alert",
    "map_severity",
    "parse_payload",
    "place_signal",
    "plan_alert",
    "pod_not_found",
    "pod_owner",
    "replicaset_not_found",
    "replicaset_owner",
    "sequence_of",
    "signal_key",
    "workload_not_found",
    "workload_of",
]
