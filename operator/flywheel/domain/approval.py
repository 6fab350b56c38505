"""Approvals, the pure part: who may decide, what the admission webhooks allow, and the token.

The API server authenticates whoever patches an Approval and hands their identity to our
admission webhooks (``request.userInfo``). The mutating webhook stamps it into annotations
and seals them (:func:`stamp_decision`: an HMAC, with a key derived from the approval
signing key, over the Approval's uid, the decision, the user, the groups and the time);
the validating webhook (:func:`review_approval_change`) refuses any other way of writing
those annotations, a changed decision, a decision after ``expiresAt``, an approver outside
the policy and anyone who shaped the Incident (four eyes). The gate trusts none of it: it
verifies the seal (:func:`verify_decision_stamp`) and the policy (:func:`decision_refusal`)
itself before a token is minted, so a status written by hand, annotations written while
the webhooks were off or copied from another Approval, and a late decision count for nothing.

Who shaped an Incident is stamped the same way on the Incident (:func:`stamp_incident_authors`:
its creator, then everyone who changed its spec, sealed with the namespace and name) and
read back by the gate (:func:`verify_incident_authors`).

An approved Run carries an HS256 token bound to the Run's uid and a digest of the action
the approver saw (:func:`issue_token`); the executor verifies it right before acting
(:func:`verify_token`), so an action edited after approval, an expired token or a token
issued for another Run is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jwt

from flywheel.api.times import format_precise_time, format_time, read_time
from flywheel.domain.run_state import RunErrorCode

# Annotations on an Approval, written only through the admission webhooks / the operator.
DECIDED_BY: Final = "flywheel.dev/decided-by"
DECIDED_GROUPS: Final = "flywheel.dev/decided-groups"
DECIDED_AT: Final = "flywheel.dev/decided-at"
# HMAC binding the three above to the Approval's uid and its decision.
DECISION_SEAL: Final = "flywheel.dev/decision-seal"
INCIDENT_CREATED_BY: Final = "flywheel.dev/incident-created-by"
# Annotations on an Incident, stamped from the API server's userInfo: who created it, and
# everyone who created it or changed its spec (a JSON list) with its seal.
CREATED_BY: Final = "flywheel.dev/created-by"
AUTHORS: Final = "flywheel.dev/authors"
AUTHORS_SEAL: Final = "flywheel.dev/authors-seal"

DECISION_STAMP: Final = (DECIDED_BY, DECIDED_GROUPS, DECIDED_AT, DECISION_SEAL)
PROTECTED_APPROVAL_ANNOTATIONS: Final = (*DECISION_STAMP, INCIDENT_CREATED_BY)
PROTECTED_INCIDENT_ANNOTATIONS: Final = (CREATED_BY, AUTHORS, AUTHORS_SEAL)
# Each seal has its own key, derived from the approval signing key: a value sealed for one
# purpose (or a token signature) never verifies for another.
DECISION_SEAL_PURPOSE: Final = b"flywheel.dev/decision-stamp/v1"
AUTHORS_SEAL_PURPOSE: Final = b"flywheel.dev/incident-authors/v1"

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
    decision: str,
    decider: Requester,
    policy: ApproverPolicy,
    authors: Collection[str] | None,
    operator_identity: str | None = None,
) -> Refusal | None:
    """Whether ``decider`` may take ``decision``; None when allowed.

    Approvers must be allowed by the policy for either decision, and Flywheel's own identity
    never decides. Approving also needs a second person: nobody among the Incident's
    ``authors`` (who created it or changed its spec), and the authors must be known.
    """
    if not decider.username:
        return Refusal("identity-required", "the decision carries no authenticated identity")
    if operator_identity and decider.username == operator_identity:
        return Refusal(
            "operator-not-approver",
            f"{decider.username!r} is Flywheel's own identity; Flywheel never approves its own Runs",
        )
    if not policy.permits(decider):
        groups = ", ".join(decider.groups) or "none"
        return Refusal(
            "approver-not-allowed",
            f"user {decider.username!r} (groups: {groups}) may not decide Approvals; {policy.describe()}",
        )
    if decision == APPROVE:
        if authors is None:
            return Refusal(
                "four-eyes",
                "who created or changed the Incident is not recorded (it was written while Flywheel's admission "
                "webhook was not installed, or its record was tampered with), so a second person cannot be verified",
            )
        if decider.username in authors:
            return Refusal(
                "four-eyes",
                f"user {decider.username!r} created or changed the Incident and cannot approve its Run",
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


def seal(key: bytes, purpose: bytes, fields: Mapping[str, Any]) -> str:
    """HMAC-SHA256 of ``fields`` (canonical JSON) under a key derived from ``key`` for ``purpose``."""
    derived = hmac.new(key, purpose, hashlib.sha256).digest()
    message = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return hmac.new(derived, message, hashlib.sha256).hexdigest()


def _decision_seal(key: bytes, approval_uid: str, decision: str, user: str, groups: list[str], at: str) -> str:
    fields = {"approval": approval_uid, "decision": decision, "user": user, "groups": groups, "at": at}
    return seal(key, DECISION_SEAL_PURPOSE, fields)


def stamp_decision(
    old: Mapping[str, Any] | None, new: Mapping[str, Any], requester: Requester, now: datetime, key: bytes
) -> dict[str, str]:
    """Annotations the mutating webhook sets: the decider's identity and its seal, when this request decides."""
    if not decided_in_this_request(old, new):
        return {}
    decision = _decision(new)
    assert decision is not None
    groups = sorted(set(requester.groups))
    at = format_time(now)
    uid = str(((new.get("metadata") or {}).get("uid")) or "")
    return {
        DECIDED_BY: requester.username,
        DECIDED_GROUPS: json.dumps(groups),
        DECIDED_AT: at,
        DECISION_SEAL: _decision_seal(key, uid, decision, requester.username, groups, at),
    }


@dataclass(frozen=True, slots=True)
class StampedDecision:
    """A decision as Flywheel's admission webhook recorded it: verified, so it can be trusted."""

    decision: str
    decider: Requester
    decided_at: datetime


def _string_list(text: str | None) -> list[str] | None:
    try:
        value = json.loads(text or "")
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return value


def verify_decision_stamp(approval: Mapping[str, Any], key: bytes) -> StampedDecision | Refusal:
    """The Approval's decision with its decider, if its stamp is the webhook's for this very
    Approval and decision; else the refusal saying why the decision is ignored."""
    decision = _decision(approval)
    if decision is None:
        return Refusal("no-decision", "spec.decision is not set")
    notes = _annotations(approval)
    missing = [name for name in DECISION_STAMP if not notes.get(name)]
    if missing:
        return Refusal(
            "identity-required",
            f"the decision carries no identity stamped by Flywheel's admission webhook (annotation {missing[0]} "
            "is missing): it was not taken through the API server with the webhooks installed",
        )
    groups = _string_list(notes[DECIDED_GROUPS])
    decided_at = read_time(notes[DECIDED_AT])
    uid = str(((approval.get("metadata") or {}).get("uid")) or "")
    expected = (
        _decision_seal(key, uid, decision, notes[DECIDED_BY], groups, notes[DECIDED_AT])
        if groups is not None and decided_at is not None and decided_at.tzinfo is not None
        else ""
    )
    if not expected or not hmac.compare_digest(expected, notes[DECISION_SEAL]):
        return Refusal(
            "identity-not-sealed",
            "the identity annotations were not written by Flywheel's admission webhook for this decision on this "
            "Approval (their seal does not match: written or edited by hand, copied from another Approval, or "
            "sealed with another key)",
        )
    assert groups is not None and decided_at is not None
    return StampedDecision(decision, Requester(notes[DECIDED_BY], tuple(groups)), decided_at)


def expires_at(approval: Mapping[str, Any]) -> datetime | None:
    value = _spec(approval).get("expiresAt")
    return read_time(str(value)) if value else None


def late_decision_refusal(decided_at: datetime, deadline: datetime) -> Refusal | None:
    """A decision taken at or after the Approval's ``expiresAt`` does not count."""
    if decided_at < deadline:
        return None
    return Refusal(
        "approval-expired",
        f"the Approval expired at {format_time(deadline)}; a decision at {format_time(decided_at)} does not count",
    )


# --------------------------------------------------------------------------- incident authors


def _authors_seal(key: bytes, namespace: str, name: str, authors: list[str]) -> str:
    return seal(key, AUTHORS_SEAL_PURPOSE, {"namespace": namespace, "name": name, "authors": authors})


def _where(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def verify_incident_authors(incident: Mapping[str, Any], key: bytes) -> tuple[str, ...] | Refusal:
    """Who created or changed the Incident's spec, if its stamp is the webhook's for this Incident."""
    notes = _annotations(incident)
    authors = _string_list(notes.get(AUTHORS))
    namespace, name = _where(incident)
    if authors is None or not authors or not notes.get(AUTHORS_SEAL):
        return Refusal(
            "four-eyes",
            f"who created or changed Incident {name} is not recorded (annotation {AUTHORS} is missing: it was "
            "written while Flywheel's admission webhook was not installed), so a second person cannot be verified",
        )
    if not hmac.compare_digest(_authors_seal(key, namespace, name, authors), notes[AUTHORS_SEAL]):
        return Refusal(
            "four-eyes",
            f"the record of who created or changed Incident {name} was not written by Flywheel's admission webhook "
            "for this Incident (its seal does not match), so a second person cannot be verified",
        )
    return tuple(authors)


def stamp_incident_authors(
    operation: str, old: Mapping[str, Any] | None, new: Mapping[str, Any], requester: Requester, key: bytes
) -> dict[str, str]:
    """Annotations the mutating webhook sets on an Incident: its creator, then whoever changes its spec.

    An unverifiable record is never sealed afresh (that would launder a hand-written list):
    it stays as it is, and approving the Incident's Runs stays refused.
    """
    namespace, name = _where(new)
    if operation == "CREATE":
        authors = [requester.username]
    elif operation == "UPDATE" and _spec(old) != _spec(new):
        prior = verify_incident_authors(old or {}, key)
        if isinstance(prior, Refusal) or requester.username in prior:
            return {}
        authors = [*prior, requester.username]
    else:
        return {}
    return {AUTHORS: json.dumps(authors), AUTHORS_SEAL: _authors_seal(key, namespace, name, authors)}


def review_approval_change(
    operation: str,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    requester: Requester,
    policy: ApproverPolicy,
    operator_identity: str | None = None,
    *,
    authors: Collection[str] | None = None,
    now: datetime | None = None,
) -> Refusal | None:
    """The validating webhook's verdict on creating or updating an Approval; None when allowed.

    ``operator_identity`` is the user Flywheel itself authenticates as: only it creates
    Approvals, and it never decides one. ``authors`` are the verified authors of the
    Incident (None: unknown), ``now`` the webhook's clock for the Approval's deadline.
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
    # The decider's stamp is set by our mutating webhook in this very request. decided-at
    # carries the webhook's clock and the seal covers it, so only their presence is checked
    # here; the gate verifies the seal before anything acts on the decision.
    expected = (
        {DECIDED_BY: requester.username, DECIDED_GROUPS: groups_annotation(requester.groups)} if deciding else {}
    )
    old_notes, new_notes = _annotations(old), _annotations(new)
    for key in PROTECTED_APPROVAL_ANNOTATIONS:
        if old_notes.get(key) == new_notes.get(key):
            continue
        if deciding and key in (DECIDED_AT, DECISION_SEAL) and new_notes.get(key):
            continue
        if deciding and key in expected and new_notes.get(key) == expected[key]:
            continue
        return Refusal(
            "identity-stamped-by-flywheel",
            f"annotation {key} is written by Flywheel from the API server's authentication, not by hand",
        )
    if deciding:
        assert new_decision is not None
        deadline = expires_at(new)
        if deadline is not None and now is not None:
            late = late_decision_refusal(now, deadline)
            if late is not None:
                return late
        return decision_refusal(new_decision, requester, policy, authors, operator_identity)
    return None


def review_incident_change(
    operation: str, old: Mapping[str, Any] | None, new: Mapping[str, Any], requester: Requester
) -> Refusal | None:
    """The validating webhook's verdict on an Incident: who created and changed it is never rewritten.

    The authors' record may only grow by the requester, in a request that changes the spec
    (what the mutating webhook stamps); its seal is checked by the gate.
    """
    new_notes = _annotations(new)
    new_creator = new_notes.get(CREATED_BY)
    if operation == "CREATE":
        if new_creator != requester.username or _string_list(new_notes.get(AUTHORS)) != [requester.username]:
            return Refusal(
                "identity-stamped-by-flywheel",
                f"annotations {CREATED_BY} and {AUTHORS} are written by Flywheel from the API server's "
                "authentication, not by hand",
            )
        return None
    if operation != "UPDATE":
        return None
    old_notes = _annotations(old)
    if old_notes.get(CREATED_BY) != new_creator:
        return Refusal(
            "identity-stamped-by-flywheel", f"annotation {CREATED_BY} records who created the Incident; it cannot change"
        )
    if old_notes.get(AUTHORS) == new_notes.get(AUTHORS) and old_notes.get(AUTHORS_SEAL) == new_notes.get(AUTHORS_SEAL):
        return None
    prior, grown = _string_list(old_notes.get(AUTHORS)), _string_list(new_notes.get(AUTHORS))
    if (
        _spec(old) != _spec(new)
        and prior is not None
        and grown == [*prior, requester.username]
        and new_notes.get(AUTHORS_SEAL)
    ):
        return None
    return Refusal(
        "identity-stamped-by-flywheel",
        f"annotations {AUTHORS} and {AUTHORS_SEAL} record who created or changed the Incident; "
        "they are written by Flywheel, not by hand",
    )


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
    # The one attempt of the Run this token lets act; the next attempt needs its own token.
    attempt: int = 1


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


def next_grant(grant: ApprovalGrant) -> ApprovalGrant:
    """The grant of the Run's next attempt under the same approval: a new id, the same expiry."""
    return replace(grant, token_id=uuid.uuid4().hex, attempt=grant.attempt + 1)


def issue_token(grant: ApprovalGrant, key: bytes) -> str:
    claims = {
        "iss": TOKEN_ISSUER,
        "sub": grant.run_uid,
        "jti": grant.token_id,
        "exp": int(grant.expires_at.timestamp()),
        "approval": grant.approval_uid,
        "approver": grant.approver,
        "action": grant.action_digest,
        "attempt": grant.attempt,
    }
    return jwt.encode(claims, key, algorithm=TOKEN_ALGORITHM)


class TokenRefused(Exception):
    """The executor must not act on this token; ``code`` is the Run's errorCode."""

    def __init__(self, code: RunErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def verify_token(
    token: str | None,
    key: bytes,
    *,
    run_uid: str,
    action: Mapping[str, Any],
    now: datetime,
    attempt: int | None = None,
) -> ApprovalGrant:
    """The grant in ``token`` if it allows this Run to execute this action now (for ``attempt``,
    when given); else :class:`TokenRefused`."""
    if not token:
        raise TokenRefused(RunErrorCode.APPROVAL_TOKEN_INVALID, "the Run requires approval but carries no approval token")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[TOKEN_ALGORITHM],
            issuer=TOKEN_ISSUER,
            # Expiry is checked below against the caller's clock, so that it is testable and explicit.
            options={"require": ["sub", "jti", "exp", "action", "attempt"], "verify_exp": False},
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
        attempt=int(claims["attempt"]),
    )
    if grant.run_uid != run_uid:
        raise TokenRefused(
            RunErrorCode.APPROVAL_REPLAYED, f"the approval token was issued for another Run (uid {grant.run_uid})"
        )
    if attempt is not None and grant.attempt != attempt:
        raise TokenRefused(
            RunErrorCode.APPROVAL_REPLAYED,
            f"the approval token was issued for attempt {grant.attempt} of this Run, not attempt {attempt}",
        )
    if now >= grant.expires_at:
        raise TokenRefused(
            RunErrorCode.APPROVAL_TOKEN_EXPIRED, f"the approval token expired at {format_precise_time(grant.expires_at)}"
        )
    if grant.action_digest != action_digest(action):
        raise TokenRefused(
            RunErrorCode.APPROVAL_ACTION_CHANGED,
            "the Run's action differs from the action that was approved; approve the new action in a new Run",
        )
    return grant


__all__ = [
    "APPROVE",
    "AUTHORS",
    "AUTHORS_SEAL",
    "CREATED_BY",
    "DECIDED_AT",
    "DECIDED_BY",
    "DECIDED_GROUPS",
    "DECISION_SEAL",
    "INCIDENT_CREATED_BY",
    "REJECT",
    "ApprovalGrant",
    "ApproverPolicy",
    "Refusal",
    "Requester",
    "StampedDecision",
    "TokenRefused",
    "action_digest",
    "decision_refusal",
    "expires_at",
    "issue_token",
    "late_decision_refusal",
    "new_grant",
    "next_grant",
    "review_approval_change",
    "review_incident_change",
    "seal",
    "stamp_decision",
    "stamp_incident_authors",
    "verify_decision_stamp",
    "verify_incident_authors",
    "verify_token",
]
