"""Alertmanager webhook payloads turned into Incidents: validation and mapping, no I/O.

The intake (``flywheel.intake``) receives Alertmanager's webhook payload (version 4),
validates it with :func:`parse_payload`, maps every alert with :func:`plan_alert` and
decides with :func:`place_signal` where the alert's signal goes, given the Incidents
already recorded for its fingerprint. Everything here is deterministic, so that
Alertmanager's retries (it re-sends a whole group on any 5xx) never duplicate a
signal or an Incident.

Mapping of one alert (labels are the alert's own labels):

- namespace ← ``namespace``; required, and it must be one the operator watches;
- targetRef ← ``deployment`` (Deployment) or ``statefulset`` (StatefulSet), else the
  label ``flywheel.dev/target`` or its classic-charset spelling ``flywheel_target``
  (Alertmanager and Prometheus before 3.0 only accept ``[a-zA-Z_][a-zA-Z0-9_]*`` label
  names) holding ``Kind/name``; an alert naming no workload is refused;
- alertName ← ``alertname``; service ← ``service`` | ``app`` | ``job`` | ``deployment``,
  else the workload's name; errorType ← ``reason`` | ``error_type``;
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
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

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
from flywheel.errors import InvalidInputError

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
SERVICE_LABELS = ("service", "app", "job", "deployment")
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
    *SERVICE_LABELS,
    "statefulset",
    *TARGET_LABELS,
    *ERROR_TYPE_LABELS,
    "pod",
    "container",
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


@dataclass(frozen=True)
class AlertRefusal:
    """Why one alert cannot become an Incident; ``field`` is relative to the alert."""

    field: str
    reason: str


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


def _workload_ref(labels: Mapping[str, str]) -> IncidentTargetRef:
    for label, kind in (("deployment", TargetKind.DEPLOYMENT), ("statefulset", TargetKind.STATEFULSET)):
        value = labels.get(label, "").strip()
        if value:
            return _valid_workload(kind, value, f"labels.{label}")
    found = _first_label(labels, TARGET_LABELS)
    if found is None:
        raise InvalidInputError(
            "labels.deployment",
            "the alert names no workload: set a deployment or statefulset label, "
            "or flywheel_target (flywheel.dev/target) to Kind/name",
        )
    label, value = found
    kind_text, slash, name = value.partition("/")
    named_kind = _KINDS_BY_LOWER_NAME.get(kind_text.strip().lower())
    if not slash or named_kind is None:
        raise InvalidInputError(
            f"labels.{label}",
            f"{_shorten(value)!r} is not Kind/name with Kind one of {', '.join(k.value for k in TargetKind)}",
        )
    return _valid_workload(named_kind, name.strip(), f"labels.{label}")


def _valid_workload(kind: TargetKind, name: str, field: str) -> IncidentTargetRef:
    if len(name) > DNS1123_SUBDOMAIN_MAX_LENGTH or not _DNS1123_SUBDOMAIN.fullmatch(name):
        raise InvalidInputError(field, f"{_shorten(name)!r} is not a workload name (a DNS-1123 subdomain)")
    return IncidentTargetRef(kind=kind, name=name)


def _bounded_label(labels: Mapping[str, str], names: Sequence[str], max_length: int) -> str | None:
    """The first non-blank label of ``names``, refused (naming it) when longer than the schema allows."""
    found = _first_label(labels, names)
    if found is None:
        return None
    label, value = found
    if len(value) > max_length:
        raise InvalidInputError(f"labels.{label}", f"longer than {max_length} characters")
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


def plan_alert(alert: AlertmanagerAlert, context: PayloadContext, scope: NamespaceScope) -> AlertIntake | AlertRefusal:
    """Map one alert to its Incident, or say which field keeps it from becoming one."""
    try:
        return _plan(alert, context, scope)
    except InvalidInputError as exc:
        return AlertRefusal(exc.field, exc.reason)
    except ValidationError as exc:
        # The checks in _plan mirror the schema; this only fires if the two drift apart.
        first = exc.errors(include_url=False)[0]
        return AlertRefusal(_field_path(first["loc"]), first["msg"])


def _plan(alert: AlertmanagerAlert, context: PayloadContext, scope: NamespaceScope) -> AlertIntake:
    labels = alert.labels
    namespace = labels.get("namespace", "").strip()
    if not namespace:
        raise InvalidInputError("labels.namespace", "missing: the intake needs the namespace of the workload")
    if len(namespace) > DNS1123_LABEL_MAX_LENGTH or not _DNS1123_LABEL.fullmatch(namespace):
        raise InvalidInputError("labels.namespace", f"{_shorten(namespace)!r} is not a namespace name")
    if not scope.contains(namespace):
        raise InvalidInputError(
            "labels.namespace", f"namespace {namespace!r} is not watched by this operator ({scope.describe()})"
        )
    if len(alert.fingerprint) > FINGERPRINT_MAX_LENGTH:
        raise InvalidInputError("fingerprint", f"longer than {FINGERPRINT_MAX_LENGTH} characters")

    target = _workload_ref(labels)
    alert_name = _bounded_label(labels, ("alertname",), ALERT_NAME_MAX_LENGTH)
    service = _bounded_label(labels, SERVICE_LABELS, SERVICE_MAX_LENGTH)
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
        # An alert naming only a StatefulSet (or a flywheel_target) still has a service: its workload.
        service=service or target.name,
        error_type=error_type,
        severity=map_severity(labels.get("severity")),
        source=ALERTMANAGER_SOURCE,
        summary=_summary(alert.annotations),
        signals=[signal],
        target_ref=target,
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
    """An Incident already recorded for the alert's fingerprint, as the intake needs it."""

    name: str
    resource_version: str
    phase: IncidentPhase | None
    signals: tuple[Signal, ...]

    @property
    def closed(self) -> bool:
        return self.phase in CLOSED_PHASES

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> StoredIncident:
        """Parse an Incident object; :class:`InvalidInputError` names a field the schema should have refused."""
        metadata = body.get("metadata") or {}
        spec = body.get("spec") or {}
        phase_text = (body.get("status") or {}).get("phase")
        try:
            phase = IncidentPhase(phase_text) if phase_text else None
        except ValueError as exc:
            raise InvalidInputError("status.phase", f"unknown phase {phase_text!r}") from exc
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
    "LABEL_FINGERPRINT",
    "LABEL_SOURCE",
    "UNNAMED_ALERT",
    "AlertIntake",
    "AlertRefusal",
    "AlertmanagerAlert",
    "AlertmanagerPayload",
    "AlreadyRecorded",
    "AppendSignal",
    "CreateIncident",
    "NamespaceScope",
    "NothingToRecordOn",
    "PayloadContext",
    "Placement",
    "StoredIncident",
    "alert_slug",
    "append_signal",
    "fingerprint_key",
    "incident_base_name",
    "incident_name",
    "map_severity",
    "parse_payload",
    "place_signal",
    "plan_alert",
    "sequence_of",
    "signal_key",
]
