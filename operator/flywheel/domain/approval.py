"""Approvals, the pure part: who may decide, what the admission webhooks allow, and the token.

The API server authenticates whoever patches an Approval and hands their identity to our
admission webhooks (``request.userInfo``). The mutating webhook stamps it into annotations
(:func:`stamp_decision`); the validating webhook (:func:`review_approval_change`) refuses
any other way of writing those annotations, a changed decision, an approver outside the
policy and the Incident's own creator (four eyes). The Run controller checks the same
policy again before it acts (:func:`decision_refusal`), so an Approval decided while the
webhooks were off is refused rather than trusted.

An approved Run carries an HS256 token bound to the Run's uid and a digest of the action
the approver saw (:func:`issue_token`); the executor verifies it right before acting
(:func:`verify_token`), so an action edited after approval, an expired token or a token
issued for another Run is refused.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jwt

from flywheel.domain.run_state import RunErrorCode

# Annotations on an Approval, written only through the admission webhooks / the operator.
DECIDED_BY: Final = "flywheel.dev/decided-by"
DECIDED_GROUPS: Final = "flywheel.dev/decided-groups"
DECIDED_AT: Final = "flywheel.dev/decided-at"
INCIDENT_CREATED_BY: Final = "flywheel.dev/incident-created-by"
# Annotation on an Incident: who created it, stamped from the API server's userInfo.
CREATED_BY: Final = "flywheel.dev/created-by"

DECISION_STAMP: Final = (DECIDED_BY, DECIDED_GROUPS, DECIDED_AT)
PROTECTED_APPROVAL_ANNOTATIONS: Final = (*DECISION_STAMP, INCIDENT_CREATED_BY)

# Spec fields the approver writes; everything else is the proposal, fixed at creation.
APPROVER_FIELDS: Final = frozenset({"decision", "reason"})

APPROVE: Final = "Approve"
REJECT: Final = "Reject"

TOKEN_ALGORITHM: Final = "HS256"
TOKEN_ISSUER: Final = "flywheel.dev/approvals"


# --------------------------------------------------------------------------- identity and policy


@dataclass(frozen=True, slots=True)
class Requester:
    """Who sent an API request, as the API server authenticated them."""

    username: str
    groups: tuple[str, ...] = ()

    @classmethod
    def from_userinfo(cls, userinfo: Mapping[str, Any] | None) -> Requester:
        info = userinfo or {}
        return cls(username=str(info.get("username") or ""), groups=tuple(str(g) for g in info.get("groups") or ()))


@dataclass(frozen=True, slots=True)
class ApproverPolicy:
    """Who may decide Approvals: listed users, or members of listed groups."""

    users: frozenset[str]
    groups: frozenset[str]

    @classmethod
    def of(cls, users: Iterable[str], groups: Iterable[str]) -> ApproverPolicy:
        return cls(users=frozenset(users), groups=frozenset(groups))

    def permits(self, requester: Requester) -> bool:
        return requester.username in self.users or not self.groups.isdisjoint(requester.groups)

    def describe(self) -> str:
        users = ", ".join(sorted(self.users)) or "none"
        groups = ", ".join(sorted(self.groups)) or "none"
        return f"allowed users: {users}; allowed groups: {groups}"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request or a decision is refused; ``rule`` names the rule for the user."""

    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


def decision_refusal(
    decision: str, decider: Requester, policy: ApproverPolicy, incident_creator: str | None
) -> Refusal | None:
    """Whether ``decider`` may take ``decision``; None when allowed.

    Approvers must be allowed by the policy for either decision. Approving also needs a
    second person: not the Incident's creator, and the creator must be known.
    """
    if not decider.username:
        return Refusal("identity-required", "the decision carries no authenticated identity")
    if not policy.permits(decider):
        groups = ", ".join(decider.groups) or "none"
        return Refusal(
            "approver-not-allowed",
            f"user {decider.username!r} (groups: {groups}) may not decide Approvals; {policy.describe()}",
        )
    if decision == APPROVE:
        if not incident_creator:
            return Refusal(
                "four-eyes",
                "the Incident's creator is not recorded (it was created while Flywheel's admission webhook "
                "was not installed), so a second person cannot be verified",
            )
        if incident_creator == decider.username:
            return Refusal(
                "four-eyes", f"user {decider.username!r} created the Incident and cannot approve its own Run"
            )
    return None


# --------------------------------------------------------------------------- admission


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    return ((obj or {}).get("metadata") or {}).get("annotations") or {}


def _spec(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("spec") or {}


def _decision(obj: Mapping[str, Any] | None) -> str | None:
    value = _spec(obj).get("decision")
    return str(value) if value else None


def decided_in_this_request(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    return _decision(old) is None and _decision(new) is not None


def groups_annotation(groups: Iterable[str]) -> str:
    return json.dumps(sorted(set(groups)))


def stamp_decision(
    old: Mapping[str, Any] | None, new: Mapping[str, Any], requester: Requester, now: datetime
) -> dict[str, str]:
    """Annotations the mutating webhook sets: the decider's identity, when this request decides."""
    if not decided_in_this_request(old, new):
        return {}
    return {
        DECIDED_BY: requester.username,
        DECIDED_GROUPS: groups_annotation(requester.groups),
        DECIDED_AT: now.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def review_approval_change(
    operation: str,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    requester: Requester,
    policy: ApproverPolicy,
    operator_identity: str | None = None,
) -> Refusal | None:
    """The validating webhook's verdict on creating or updating an Approval; None when allowed.

    ``operator_identity`` is the user Flywheel itself authenticates as: only it creates Approvals.
    """
    if operation == "CREATE":
        if operator_identity is not None and requester.username != operator_identity:
            return Refusal(
                "approvals-created-by-flywheel",
                f"Approvals are created by Flywheel ({operator_identity}) for the Runs that need one, "
                f"not by {requester.username!r}",
            )
        stamped = [key for key in DECISION_STAMP if key in _annotations(new)]
        if stamped:
            return Refusal(
                "identity-stamped-by-flywheel",
                f"annotation {stamped[0]} is written by Flywheel from the API server's authentication, not by hand",
            )
        if _decision(new) is not None:
            return Refusal("decision-after-creation", "an Approval is created undecided; set spec.decision afterwards")
        return None
    if operation != "UPDATE":
        return None
    old_decision, new_decision = _decision(old), _decision(new)
    if old_decision is not None and new_decision != old_decision:
        return Refusal("decision-final", f"spec.decision is {old_decision} and cannot be changed or removed")
    old_spec, new_spec = _spec(old), _spec(new)
    for key in sorted(set(old_spec) | set(new_spec)):
        if key not in APPROVER_FIELDS and old_spec.get(key) != new_spec.get(key):
            return Refusal(
                "proposal-immutable",
                f"spec.{key} is part of Flywheel's proposal; only spec.decision and spec.reason can be written",
            )
    if old_decision is not None and old_spec.get("reason") != new_spec.get("reason"):
        return Refusal("decision-final", "spec.reason cannot change once the decision is taken")
    deciding = decided_in_this_request(old, new)
    expected = stamp_decision(old, new, requester, datetime.now(UTC)) if deciding else {}
    old_notes, new_notes = _annotations(old), _annotations(new)
    for key in PROTECTED_APPROVAL_ANNOTATIONS:
        if old_notes.get(key) == new_notes.get(key):
            continue
        # The decider's stamp is set by our mutating webhook in this very request (decided-at
        # carries the webhook's clock, so only its presence is checked).
        if deciding and key in expected and (key == DECIDED_AT or new_notes.get(key) == expected[key]):
            continue
        return Refusal(
            "identity-stamped-by-flywheel",
            f"annotation {key} is written by Flywheel from the API server's authentication, not by hand",
        )
    if deciding:
        assert new_decision is not None
        return decision_refusal(new_decision, requester, policy, old_notes.get(INCIDENT_CREATED_BY))
    return None


def review_incident_change(
    operation: str, old: Mapping[str, Any] | None, new: Mapping[str, Any], requester: Requester
) -> Refusal | None:
    """The validating webhook's verdict on an Incident: its creator's stamp is never rewritten."""
    new_creator = _annotations(new).get(CREATED_BY)
    if operation == "CREATE":
        if new_creator != requester.username:
            return Refusal(
                "identity-stamped-by-flywheel",
                f"annotation {CREATED_BY} is written by Flywheel from the API server's authentication, not by hand",
            )
        return None
    if operation == "UPDATE" and _annotations(old).get(CREATED_BY) != new_creator:
        return Refusal(
            "identity-stamped-by-flywheel", f"annotation {CREATED_BY} records who created the Incident; it cannot change"
        )
    return None


# --------------------------------------------------------------------------- token


def action_digest(action: Mapping[str, Any]) -> str:
    """A digest of an action (its JSON form, as in the resources): any edit changes it."""
    canonical = json.dumps(action, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApprovalGrant:
    """What an approval token says: this Run may execute this action, once, until ``expires_at``."""

    run_uid: str
    approval_uid: str
    approver: str
    action_digest: str
    token_id: str
    expires_at: datetime


def new_grant(
    *, run_uid: str, approval_uid: str, approver: str, action: Mapping[str, Any], now: datetime, ttl: timedelta
) -> ApprovalGrant:
    return ApprovalGrant(
        run_uid=run_uid,
        approval_uid=approval_uid,
        approver=approver,
        action_digest=action_digest(action),
        token_id=uuid.uuid4().hex,
        expires_at=(now + ttl).replace(microsecond=0),
    )


def issue_token(grant: ApprovalGrant, key: bytes) -> str:
    claims = {
        "iss": TOKEN_ISSUER,
        "sub": grant.run_uid,
        "jti": grant.token_id,
        "exp": int(grant.expires_at.timestamp()),
        "approval": grant.approval_uid,
        "approver": grant.approver,
        "action": grant.action_digest,
    }
    return jwt.encode(claims, key, algorithm=TOKEN_ALGORITHM)


class TokenRefused(Exception):
    """The executor must not act on this token; ``code`` is the Run's errorCode."""

    def __init__(self, code: RunErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def verify_token(token: str | None, key: bytes, *, run_uid: str, action: Mapping[str, Any], now: datetime) -> ApprovalGrant:
    """The grant in ``token`` if it allows this Run to execute this action now; else :class:`TokenRefused`."""
    if not token:
        raise TokenRefused(RunErrorCode.APPROVAL_TOKEN_INVALID, "the Run requires approval but carries no approval token")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[TOKEN_ALGORITHM],
            issuer=TOKEN_ISSUER,
            # Expiry is checked below against the caller's clock, so that it is testable and explicit.
            options={"require": ["sub", "jti", "exp", "action"], "verify_exp": False},
        )
    except jwt.InvalidTokenError as exc:
        raise TokenRefused(RunErrorCode.APPROVAL_TOKEN_INVALID, f"the approval token is not valid: {exc}") from exc
    grant = ApprovalGrant(
        run_uid=str(claims["sub"]),
        approval_uid=str(claims.get("approval") or ""),
        approver=str(claims.get("approver") or ""),
        action_digest=str(claims["action"]),
        token_id=str(claims["jti"]),
        expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
    )
    if grant.run_uid != run_uid:
        raise TokenRefused(
            RunErrorCode.APPROVAL_REPLAYED, f"the approval token was issued for another Run (uid {grant.run_uid})"
        )
    if now >= grant.expires_at:
        raise TokenRefused(
            RunErrorCode.APPROVAL_TOKEN_EXPIRED, f"the approval token expired at {grant.expires_at.isoformat()}"
        )
    if grant.action_digest != action_digest(action):
        raise TokenRefused(
            RunErrorCode.APPROVAL_ACTION_CHANGED,
            "the Run's action differs from the action that was approved; approve the new action in a new Run",
        )
    return grant


__all__ = [
    "APPROVE",
    "CREATED_BY",
    "DECIDED_AT",
    "DECIDED_BY",
    "DECIDED_GROUPS",
    "INCIDENT_CREATED_BY",
    "REJECT",
    "ApprovalGrant",
    "ApproverPolicy",
    "Refusal",
    "Requester",
    "TokenRefused",
    "action_digest",
    "decision_refusal",
    "issue_token",
    "new_grant",
    "review_approval_change",
    "review_incident_change",
    "stamp_decision",
    "verify_token",
]
