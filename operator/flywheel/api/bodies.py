"""The raw bodies of our resources as the API server sends them (JSON objects), typed for reading.

Kopf, the Kubernetes client and the admission webhooks hand over plain mappings; these
TypedDicts name the fields Flywheel reads of them, so a parser's signature says what it reads.
They check nothing at run time: the CRD schema has checked the body, and every parser still
fails with ``KeyError``/``ValueError`` on what slips through. ``spec`` and ``status`` stay
mappings where a pydantic model (``flywheel.api.incident`` / ``.run`` / ``.approval``) parses them
whole; the nested TypedDicts cover the fields the slim projections read without that model.

The readers below convert the fields of ``metadata`` that need it (creation, generation,
deletion), an Incident's phase and the model-known status fields, once for every parsed shape
of a resource (docs/architecture.md, "Shapes of an Incident and a Run").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Required, TypedDict, cast

from pydantic import BaseModel

from flywheel.api.enums import IncidentPhase
from flywheel.api.times import parse_time


class ObjectMeta(TypedDict, total=False):
    """``metadata`` of a namespaced object as stored (name, namespace, uid and creation are set by the API server)."""

    name: Required[str]
    namespace: Required[str]
    uid: Required[str]
    creationTimestamp: Required[str]
    resourceVersion: str
    generation: int
    deletionTimestamp: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[dict[str, Any]]


class ConditionBody(TypedDict, total=False):
    type: Required[str]
    status: Required[str]
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


class RefBody(TypedDict, total=False):
    """``status.runRef`` of an Incident (its Run)."""

    name: str
    uid: str


class SignalBody(TypedDict, total=False):
    """One entry of an Incident's ``spec.signals``, as the Alertmanager intake records it."""

    alertName: Required[str]
    labels: dict[str, str]
    status: str  # firing | resolved
    startsAt: str
    endsAt: str
    fingerprint: str


class IncidentSpecBody(TypedDict, total=False):
    alertName: str
    service: str
    errorType: str
    source: str
    signals: list[SignalBody]
    remediation: Mapping[str, Any]  # {"mode": Auto | Off, ...}


class IncidentStatusBody(TypedDict, total=False):
    phase: str
    observedGeneration: int
    anomaly: Mapping[str, Any]  # {"key", "degraded", counts...}
    decision: Mapping[str, Any]  # {"state", "id", ...}
    runRef: RefBody
    conditions: list[ConditionBody]


class IncidentBody(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: Required[ObjectMeta]
    spec: IncidentSpecBody
    status: IncidentStatusBody


class RunBody(TypedDict, total=False):
    """A Run: its spec and status are parsed whole by ``RunSpec`` / ``RunStatus``."""

    apiVersion: str
    kind: str
    metadata: Required[ObjectMeta]
    spec: Mapping[str, Any]
    status: Mapping[str, Any]


class ApprovalBody(TypedDict, total=False):
    """An Approval: ``spec`` (runRef, action, decision, expiresAt...) and ``status`` (phase...)."""

    apiVersion: str
    kind: str
    metadata: Required[ObjectMeta]
    spec: Mapping[str, Any]
    status: Mapping[str, Any]


# --------------------------------------------------------------------------- the hand-offs


def incident_body(raw: Mapping[str, Any]) -> IncidentBody:
    """An Incident as Kopf or the client handed it over (a plain mapping), typed; nothing is copied or checked."""
    return cast(IncidentBody, raw)


def run_body(raw: Mapping[str, Any]) -> RunBody:
    """A Run as Kopf or the client handed it over, typed; nothing is copied or checked."""
    return cast(RunBody, raw)


def approval_body(raw: Mapping[str, Any]) -> ApprovalBody:
    """An Approval as Kopf, the client or an admission review handed it over, typed; nothing is copied or checked."""
    return cast(ApprovalBody, raw)


# --------------------------------------------------------------------------- shared readers


def created_at(meta: ObjectMeta) -> datetime:
    """``metadata.creationTimestamp``; ``KeyError``/``ValueError`` when missing or malformed."""
    return parse_time(meta["creationTimestamp"])


def generation(meta: ObjectMeta) -> int:
    """``metadata.generation`` (1 until the API server has counted a spec change)."""
    return int(meta.get("generation") or 1)


def deleting(meta: ObjectMeta) -> bool:
    return bool(meta.get("deletionTimestamp"))


def incident_phase(status: IncidentStatusBody | Mapping[str, Any]) -> IncidentPhase | None:
    """``status.phase`` of an Incident (``None`` before its first pass); ``ValueError`` for an unknown one."""
    phase = status.get("phase")
    return IncidentPhase(phase) if phase else None


def own_status(status: Mapping[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """The status fields ``model`` knows (Kopf keeps its own bookkeeping beside them)."""
    known = {info.alias or name for name, info in model.model_fields.items()}
    return {key: value for key, value in dict(status).items() if key in known}


__all__ = [
    "ApprovalBody",
    "ConditionBody",
    "IncidentBody",
    "IncidentSpecBody",
    "IncidentStatusBody",
    "ObjectMeta",
    "RefBody",
    "RunBody",
    "SignalBody",
    "approval_body",
    "created_at",
    "deleting",
    "generation",
    "incident_body",
    "incident_phase",
    "own_status",
    "run_body",
]
