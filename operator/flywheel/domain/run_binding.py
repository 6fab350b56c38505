"""The binding of a Run to the decision Flywheel took: only the operator's own Runs act.

Flywheel acts with cluster-wide rights, so a Run written by anyone else (by hand, a CI bot
with write access to ``flywheel.dev``, a copy of another Run) must never act. The Incident
controller seals what it creates, in two steps, because a Run's uid is only known once the
API server created it:

1. the manifest carries :data:`PROPOSAL_SEAL`, an HMAC over the Run's namespace and name, the
   Incident's uid, the decision id (:data:`DECISION_ID`, in clear) and the deciding fields
   (action with its target, risk, requiresApproval, maxAttempts, mode);
2. right after the create, the same controller adds :data:`BINDING`, an HMAC over the Run's
   **uid** and the same fields — only for a Run whose proposal seal is its own.

The executor verifies :data:`BINDING` before every attempt (:func:`verify_binding`); a Run
recreated under the same name (another uid), edited, or carrying seals copied from another
Run fails closed. The keys are derived from the approval signing key, one per purpose, so a
seal of one kind never verifies as another (``flywheel.domain.approval.seal``).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from flywheel.api.names import APPROVAL_REASONS
from flywheel.api.run import RunSpec
from flywheel.domain.approval import Refusal, seal

DECISION_ID: Final = "flywheel.dev/decision-id"
PROPOSAL_SEAL: Final = "flywheel.dev/proposal-seal"
BINDING: Final = "flywheel.dev/binding"
BINDING_ANNOTATIONS: Final = (DECISION_ID, PROPOSAL_SEAL, BINDING)

# The Refusal rule of a Run created by Flywheel a moment ago, whose binding is on its way.
BINDING_PENDING: Final = "run-binding-pending"

PROPOSAL_PURPOSE: Final = b"flywheel.dev/run-proposal/v1"
BINDING_PURPOSE: Final = b"flywheel.dev/run-binding/v1"


@dataclass(frozen=True, slots=True)
class RunBinding:
    """A verified binding: this Run (uid) is Flywheel's, for this decision."""

    run_uid: str
    incident_uid: str
    decision_id: str


def deciding_fields(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What decides what a Run does, in canonical form (parsed, so API defaults do not matter).

    Raises ``ValueError`` (pydantic's ValidationError) for a spec that is not a Run's.
    """
    parsed = RunSpec.model_validate(dict(spec))
    return {
        "incident": parsed.incident_ref.uid,
        "action": parsed.action.model_dump(mode="json", by_alias=True, exclude_none=True),
        "risk": parsed.risk_level.value,
        "requiresApproval": parsed.requires_approval,
        "maxAttempts": parsed.max_attempts,
        "mode": parsed.mode.value,
    }


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body.get("metadata") or {}


def _annotations(body: Mapping[str, Any]) -> Mapping[str, str]:
    return _meta(body).get("annotations") or {}


def _proposal(key: bytes, namespace: str, name: str, decision: str, fields: Mapping[str, Any]) -> str:
    return seal(key, PROPOSAL_PURPOSE, {"namespace": namespace, "name": name, "decision": decision, **fields})


def _binding(key: bytes, uid: str, decision: str, fields: Mapping[str, Any]) -> str:
    return seal(key, BINDING_PURPOSE, {"run": uid, "decision": decision, **fields})


def proposal_annotations(manifest: Mapping[str, Any], decision_id: str, key: bytes) -> dict[str, str]:
    """The annotations a Run manifest is created with: its decision id and the proposal seal."""
    meta = _meta(manifest)
    fields = deciding_fields(manifest.get("spec") or {})
    return {
        DECISION_ID: decision_id,
        PROPOSAL_SEAL: _proposal(key, str(meta["namespace"]), str(meta["name"]), decision_id, fields),
    }


def proposal_is_own(body: Mapping[str, Any], key: bytes, *, incident_uid: str, decision_id: str) -> bool:
    """Whether the stored Run carries the proposal seal Flywheel made for this name, Incident and decision."""
    notes = _annotations(body)
    if notes.get(DECISION_ID) != decision_id or not notes.get(PROPOSAL_SEAL):
        return False
    try:
        fields = deciding_fields(body.get("spec") or {})
    except ValueError:
        return False
    if fields["incident"] != incident_uid:
        return False
    meta = _meta(body)
    expected = _proposal(key, str(meta.get("namespace") or ""), str(meta.get("name") or ""), decision_id, fields)
    return hmac.compare_digest(expected, notes[PROPOSAL_SEAL])


def binding_annotation(body: Mapping[str, Any], key: bytes) -> dict[str, str]:
    """The binding annotation for a stored Run (its uid is known now)."""
    notes = _annotations(body)
    fields = deciding_fields(body.get("spec") or {})
    return {BINDING: _binding(key, str(_meta(body).get("uid") or ""), notes.get(DECISION_ID, ""), fields)}


def verify_binding(body: Mapping[str, Any], key: bytes) -> RunBinding | Refusal:
    """The Run's binding if Flywheel sealed it for this very Run (uid) and its current spec."""
    notes = _annotations(body)
    uid = str(_meta(body).get("uid") or "")
    decision = notes.get(DECISION_ID)
    sealed = notes.get(BINDING)
    if decision and not sealed and proposal_is_own(
        body, key, incident_uid=str(((body.get("spec") or {}).get("incidentRef") or {}).get("uid") or ""),
        decision_id=decision,
    ):
        return Refusal(
            BINDING_PENDING,
            "the Run is Flywheel's proposal but not bound to its uid yet (the Incident controller binds it right "
            "after creating it)",
        )
    if not decision or not sealed:
        missing = DECISION_ID if not decision else BINDING
        return Refusal(
            "run-not-bound",
            f"the Run carries no binding to a Flywheel decision (annotation {missing} is missing): it was not "
            "created by Flywheel's Incident controller, so it never acts",
        )
    try:
        fields = deciding_fields(body.get("spec") or {})
    except ValueError as exc:
        return Refusal("run-not-bound", f"the Run's spec cannot be read: {exc}")
    if not uid or not hmac.compare_digest(_binding(key, uid, decision, fields), sealed):
        return Refusal(
            "run-binding-mismatch",
            "the Run does not match the binding Flywheel sealed for it (its uid, Incident, decision, action, "
            "target, risk, requiresApproval, maxAttempts or mode differ: edited, recreated, copied from another "
            "Run, or sealed with another key), so it never acts",
        )
    return RunBinding(run_uid=uid, incident_uid=str(fields["incident"]), decision_id=decision)


def review_run_write(
    operation: str,
    subresource: str | None,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    requester: str,
    operator_identity: str,
) -> Refusal | None:
    """The validating webhook's verdict on a write to a Run (main resource or ``runs/status``).

    Only Flywheel creates Runs and writes their spec, status and binding annotations. Anyone
    else may change the rest of the metadata (labels, the garbage collector's owner references
    and finalizers), which decides nothing.
    """
    if requester == operator_identity:
        return None
    who = f"{requester!r} is not Flywheel ({operator_identity})"
    if operation == "CREATE":
        return Refusal("runs-written-by-flywheel", f"Runs are created by Flywheel for its decisions; {who}")
    if operation != "UPDATE":
        return None
    if (old or {}).get("status") != new.get("status"):
        return Refusal("runs-written-by-flywheel", f"a Run's status is written by Flywheel only; {who}")
    if (old or {}).get("spec") != new.get("spec"):
        return Refusal("runs-written-by-flywheel", f"a Run's spec is written by Flywheel only; {who}")
    old_notes, new_notes = _annotations(old or {}), _annotations(new)
    for name in (*BINDING_ANNOTATIONS, APPROVAL_REASONS):
        if old_notes.get(name) != new_notes.get(name):
            return Refusal("runs-written-by-flywheel", f"annotation {name} is written by Flywheel only; {who}")
    return None


__all__ = [
    "BINDING",
    "BINDING_ANNOTATIONS",
    "BINDING_PENDING",
    "DECISION_ID",
    "PROPOSAL_SEAL",
    "RunBinding",
    "binding_annotation",
    "deciding_fields",
    "proposal_annotations",
    "proposal_is_own",
    "review_run_write",
    "verify_binding",
]
