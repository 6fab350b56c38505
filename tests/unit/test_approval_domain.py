"""The approval rules and tokens, as pure functions: who may decide, what admission allows, what a token proves.

Scenario matrix:
- policy: allowed users and groups; four eyes over everyone who created or changed the
  Incident (unknown authors refuse approving, never rejecting); Flywheel's own identity never decides;
- admission: hand-written identity annotations and proposal edits refused, a final decision,
  a decision at or after expiresAt refused, Incidents keep their creator and their authors;
- the decision seal: verifies for the stamped Approval and decision only — any tampered field
  (user, groups, time, decision, seal), another key, and a replay on another Approval are refused;
- the authors' seal: grows by whoever changes the spec, binds namespace and name, never launders
  an unverifiable record;
- tokens: bound to the Run, the action digest, the key and the clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.domain.approval import (
    AUTHORS,
    AUTHORS_SEAL,
    CREATED_BY,
    DECIDED_AT,
    DECIDED_BY,
    DECIDED_GROUPS,
    DECISION_SEAL,
    INCIDENT_CREATED_BY,
    PROTECTED_APPROVAL_ANNOTATIONS,
    ApproverPolicy,
    Refusal,
    Requester,
    StampedDecision,
    TokenRefused,
    action_digest,
    decision_refusal,
    issue_token,
    new_grant,
    review_approval_change,
    review_incident_change,
    stamp_decision,
    stamp_incident_authors,
    verify_decision_stamp,
    verify_incident_authors,
    verify_token,
)
from flywheel.domain.run_state import RunErrorCode

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
POLICY = ApproverPolicy.of(users=["carol"], groups=["flywheel-approvers"])
BOB = Requester("bob", ("flywheel-approvers", "system:authenticated"))
ACTION = {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "checkout"}}
KEY = b"k" * 32


EXPIRES = "2026-11-23T13:00:00Z"


def approval(
    decision: str | None = None, annotations: dict[str, str] | None = None, uid: str = "appr-1", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {
            "name": "checkout-oom-1",
            "uid": uid,
            "annotations": {INCIDENT_CREATED_BY: "alice", **(annotations or {})},
        },
        "spec": {"runRef": {"name": "checkout-oom-1", "uid": "u1"}, "action": ACTION, "riskLevel": "medium",
                 "expiresAt": EXPIRES, **spec},
    }
    if decision is not None:
        body["spec"]["decision"] = decision
    return body


def decided(old: dict[str, Any], decision: str, requester: Requester, **spec: Any) -> dict[str, Any]:
    """What the API server hands the validating webhook: the change plus our mutating webhook's stamp."""
    new = approval(decision, dict(old["metadata"]["annotations"]), **spec)
    new["metadata"]["annotations"].update(stamp_decision(old, new, requester, NOW, KEY))
    return new


# --------------------------------------------------------------------------- policy


def test_policy_allows_listed_users_and_group_members_only() -> None:
    assert POLICY.permits(BOB)
    assert POLICY.permits(Requester("carol"))
    assert not POLICY.permits(Requester("mallory", ("developers",)))


def test_four_eyes_applies_to_approving_not_to_rejecting() -> None:
    creator = Requester("alice", ("flywheel-approvers",))
    refusal = decision_refusal("Approve", creator, POLICY, authors=("alice",))
    assert refusal is not None and refusal.rule == "four-eyes" and "'alice' created or changed the Incident" in refusal.message
    assert decision_refusal("Reject", creator, POLICY, authors=("alice",)) is None
    assert decision_refusal("Approve", BOB, POLICY, authors=("alice",)) is None


def test_whoever_changed_the_incident_cannot_approve_either() -> None:
    refusal = decision_refusal("Approve", BOB, POLICY, authors=("alice", "bob"))
    assert refusal is not None and refusal.rule == "four-eyes" and "'bob'" in refusal.message


def test_approving_needs_known_authors() -> None:
    refusal = decision_refusal("Approve", BOB, POLICY, authors=None)
    assert refusal is not None and refusal.rule == "four-eyes" and "not recorded" in refusal.message
    assert decision_refusal("Reject", BOB, POLICY, authors=None) is None


def test_flywheel_itself_never_decides_even_when_listed() -> None:
    operator = Requester("system:serviceaccount:flywheel-system:flywheel", ("flywheel-approvers",))
    for decision in ("Approve", "Reject"):
        refusal = decision_refusal(decision, operator, POLICY, authors=("alice",), operator_identity=operator.username)
        assert refusal is not None and refusal.rule == "operator-not-approver"


def test_a_refusal_for_an_outsider_names_the_policy() -> None:
    refusal = decision_refusal("Reject", Requester("mallory", ("developers",)), POLICY, ("alice",))
    assert refusal is not None and refusal.rule == "approver-not-allowed"
    assert "allowed users: carol; allowed groups: flywheel-approvers" in refusal.message


# --------------------------------------------------------------------------- admission


def test_the_stamp_records_the_authenticated_decider_once() -> None:
    old = approval()
    stamp = stamp_decision(old, approval("Approve"), BOB, NOW, KEY)
    assert {key: stamp[key] for key in (DECIDED_BY, DECIDED_GROUPS, DECIDED_AT)} == {
        DECIDED_BY: "bob",
        DECIDED_GROUPS: '["flywheel-approvers", "system:authenticated"]',
        DECIDED_AT: "2026-11-23T12:00:00Z",
    }
    assert len(stamp[DECISION_SEAL]) == 64
    already = approval("Approve", stamp)
    assert stamp_decision(already, approval("Approve", stamp, reason="again"), BOB, NOW, KEY) == {}


def test_an_allowed_decision_with_its_stamp_passes() -> None:
    old = approval()
    new = decided(old, "Approve", BOB, reason="ok")
    assert review_approval_change("UPDATE", old, new, BOB, POLICY, authors=("alice",), now=NOW) is None


def test_a_decision_at_or_after_expiry_is_refused_at_admission() -> None:
    old = approval()
    new = decided(old, "Approve", BOB)
    late = datetime.fromisoformat(EXPIRES)
    for now in (late, late + timedelta(seconds=1)):
        refusal = review_approval_change("UPDATE", old, new, BOB, POLICY, authors=("alice",), now=now)
        assert refusal is not None and refusal.rule == "approval-expired" and "expired at 2026-11-23T13:00:00Z" in refusal.message
    assert review_approval_change("UPDATE", old, new, BOB, POLICY, authors=("alice",), now=late - timedelta(seconds=1)) is None


def test_admission_refuses_an_author_of_the_incident() -> None:
    old = approval()
    refusal = review_approval_change(
        "UPDATE", old, decided(old, "Approve", BOB), BOB, POLICY, authors=("alice", "bob"), now=NOW
    )
    assert refusal is not None and refusal.rule == "four-eyes"


# --------------------------------------------------------------------------- the decision seal


def stamped(decision: str = "Approve", requester: Requester = BOB, key: bytes = KEY, uid: str = "appr-1") -> dict[str, Any]:
    old = approval(uid=uid)
    new = approval(decision, uid=uid)
    new["metadata"]["annotations"].update(stamp_decision(old, new, requester, NOW, key))
    return new


def test_a_sealed_decision_verifies_with_its_decider() -> None:
    assert verify_decision_stamp(stamped(), KEY) == StampedDecision("Approve", BOB, NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (DECIDED_BY, "carol"),
        (DECIDED_GROUPS, '["flywheel-approvers", "system:authenticated", "system:masters"]'),
        (DECIDED_GROUPS, "not json"),
        (DECIDED_AT, "2026-11-23T11:00:00Z"),
        (DECIDED_AT, "yesterday"),
        (DECISION_SEAL, "0" * 64),
    ],
)
def test_any_tampered_field_breaks_the_seal(field: str, value: str) -> None:
    body = stamped()
    body["metadata"]["annotations"][field] = value
    refusal = verify_decision_stamp(body, KEY)
    assert isinstance(refusal, Refusal) and refusal.rule == "identity-not-sealed"


def test_a_changed_decision_breaks_the_seal() -> None:
    body = stamped("Reject")
    body["spec"]["decision"] = "Approve"
    refusal = verify_decision_stamp(body, KEY)
    assert isinstance(refusal, Refusal) and refusal.rule == "identity-not-sealed"


def test_a_seal_from_another_key_is_refused() -> None:
    refusal = verify_decision_stamp(stamped(key=b"o" * 32), KEY)
    assert isinstance(refusal, Refusal) and refusal.rule == "identity-not-sealed"


def test_a_stamp_replayed_on_another_approval_is_refused() -> None:
    original = stamped(uid="appr-1")
    replay = approval("Approve", dict(original["metadata"]["annotations"]), uid="appr-2")
    refusal = verify_decision_stamp(replay, KEY)
    assert isinstance(refusal, Refusal) and refusal.rule == "identity-not-sealed"


def test_hand_written_identity_without_a_seal_is_refused() -> None:
    body = approval("Approve", {DECIDED_BY: "bob", DECIDED_GROUPS: '["flywheel-approvers"]', DECIDED_AT: "2026-11-23T12:00:00Z"})
    refusal = verify_decision_stamp(body, KEY)
    assert isinstance(refusal, Refusal) and refusal.rule == "identity-required" and DECISION_SEAL in refusal.message


@given(
    username=st.text(min_size=1, max_size=20),
    groups=st.lists(st.text(min_size=1, max_size=20), max_size=4),
    forged=st.text(min_size=1, max_size=20),
)
def test_only_the_stamped_user_verifies(username: str, groups: list[str], forged: str) -> None:
    body = stamped(requester=Requester(username, tuple(groups)))
    verified = verify_decision_stamp(body, KEY)
    assert isinstance(verified, StampedDecision) and verified.decider.username == username
    body["metadata"]["annotations"][DECIDED_BY] = forged
    assert isinstance(verify_decision_stamp(body, KEY), Refusal) or forged == username


# --------------------------------------------------------------------------- the authors' seal


def incident(annotations: dict[str, str] | None = None, name: str = "checkout-oom", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "shop", "annotations": dict(annotations or {})},
        "spec": {"summary": "checkout is unwell", **spec},
    }


def created_by(user: str, name: str = "checkout-oom") -> dict[str, Any]:
    body = incident(name=name)
    body["metadata"]["annotations"].update(
        {CREATED_BY: user, **stamp_incident_authors("CREATE", None, body, Requester(user), KEY)}
    )
    return body


def edited_by(old: dict[str, Any], user: str, **spec: Any) -> dict[str, Any]:
    new = incident(dict(old["metadata"]["annotations"]), old["metadata"]["name"], **{**old["spec"], **spec})
    new["metadata"]["annotations"].update(stamp_incident_authors("UPDATE", old, new, Requester(user), KEY))
    return new


def test_the_authors_are_the_creator_and_whoever_changes_the_spec() -> None:
    created = created_by("alice")
    assert verify_incident_authors(created, KEY) == ("alice",)
    edited = edited_by(created, "bob", summary="worse now")
    assert verify_incident_authors(edited, KEY) == ("alice", "bob")
    assert review_incident_change("UPDATE", created, edited, Requester("bob")) is None
    again = edited_by(edited, "alice", summary="even worse")
    assert verify_incident_authors(again, KEY) == ("alice", "bob"), "listed once"
    untouched = edited_by(edited, "carol")  # same spec: a label or annotation change
    assert verify_incident_authors(untouched, KEY) == ("alice", "bob")


def test_the_authors_seal_binds_the_incident_and_the_key() -> None:
    created = created_by("alice")
    notes = created["metadata"]["annotations"]
    moved = incident(dict(notes), name="other-incident")
    assert isinstance(verify_incident_authors(moved, KEY), Refusal)
    assert isinstance(verify_incident_authors(created, b"o" * 32), Refusal)
    forged = incident({**notes, AUTHORS: '["carol"]'})
    assert isinstance(verify_incident_authors(forged, KEY), Refusal)
    assert isinstance(verify_incident_authors(incident({CREATED_BY: "alice"}), KEY), Refusal)


def test_an_unverifiable_record_is_never_sealed_afresh() -> None:
    forged = incident({CREATED_BY: "alice", AUTHORS: '["carol"]', AUTHORS_SEAL: "0" * 64})
    assert stamp_incident_authors("UPDATE", forged, incident(dict(forged["metadata"]["annotations"]), summary="x"),
                                  Requester("bob"), KEY) == {}


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda old: approval(annotations={DECIDED_BY: "bob"}), "identity-stamped-by-flywheel"),
        (lambda old: approval(annotations={INCIDENT_CREATED_BY: "bob"}), "identity-stamped-by-flywheel"),
        (lambda old: approval(riskLevel="low"), "proposal-immutable"),
        (lambda old: approval(action={**ACTION, "target": {"kind": "Deployment", "name": "x"}}), "proposal-immutable"),
    ],
)
def test_hand_written_identity_and_proposal_edits_are_refused(change: Any, rule: str) -> None:
    old = approval()
    refusal = review_approval_change("UPDATE", old, change(old), BOB, POLICY)
    assert refusal is not None and refusal.rule == rule


def test_a_stamp_for_someone_else_is_refused_even_while_deciding() -> None:
    old = approval()
    new = decided(old, "Approve", BOB)
    new["metadata"]["annotations"][DECIDED_BY] = "carol"
    refusal = review_approval_change("UPDATE", old, new, BOB, POLICY)
    assert refusal is not None and refusal.rule == "identity-stamped-by-flywheel"


def test_a_decision_and_its_reason_are_final() -> None:
    old = decided(approval(), "Reject", BOB, reason="no")
    for new in (approval("Approve", dict(old["metadata"]["annotations"]), reason="no"),
                approval(None, dict(old["metadata"]["annotations"])),
                approval("Reject", dict(old["metadata"]["annotations"]), reason="changed")):
        refusal = review_approval_change("UPDATE", old, new, BOB, POLICY)
        assert refusal is not None and refusal.rule == "decision-final", new


def test_operator_bookkeeping_annotations_pass() -> None:
    old = approval()
    new = approval(annotations={"kopf.flywheel.dev/last-handled-configuration": "{}"})
    assert review_approval_change("UPDATE", old, new, Requester("system:serviceaccount:x:y"), POLICY) is None


def test_approvals_are_created_undecided_and_unstamped() -> None:
    operator = Requester("system:serviceaccount:flywheel-system:flywheel")
    assert review_approval_change("CREATE", None, approval(), operator, POLICY) is None
    decided_at_birth = review_approval_change("CREATE", None, approval("Approve"), operator, POLICY)
    assert decided_at_birth is not None and decided_at_birth.rule == "decision-after-creation"
    stamped = review_approval_change("CREATE", None, approval(annotations={DECIDED_BY: "bob"}), operator, POLICY)
    assert stamped is not None and stamped.rule == "identity-stamped-by-flywheel"
    assert review_approval_change("CREATE", None, approval(), operator, POLICY, operator.username) is None
    planted = review_approval_change("CREATE", None, approval(), BOB, POLICY, operator.username)
    assert planted is not None and planted.rule == "approvals-created-by-flywheel"


def test_an_incident_keeps_its_creator_and_its_authors() -> None:
    alice = Requester("alice")
    created = created_by("alice")
    assert review_incident_change("CREATE", None, created, alice) is None
    forged = created_by("bob")
    assert review_incident_change("CREATE", None, forged, alice) is not None
    assert review_incident_change("UPDATE", created, forged, alice) is not None
    assert review_incident_change("UPDATE", created, created, BOB) is None
    rewritten = incident({**created["metadata"]["annotations"], AUTHORS: "[]"})
    refusal = review_incident_change("UPDATE", created, rewritten, BOB)
    assert refusal is not None and refusal.rule == "identity-stamped-by-flywheel"
    smuggled = incident({**created["metadata"]["annotations"], AUTHORS: '["alice", "carol"]'}, summary="x")
    assert review_incident_change("UPDATE", created, smuggled, BOB) is not None, "only the requester is added"


annotation_values = st.text(min_size=1, max_size=20)


@given(
    key=st.sampled_from(PROTECTED_APPROVAL_ANNOTATIONS),
    value=annotation_values,
    username=st.text(min_size=1, max_size=20),
    groups=st.lists(st.text(min_size=1, max_size=20), max_size=3),
    decision=st.sampled_from([None, "Approve", "Reject"]),
)
def test_no_protected_annotation_can_be_written_by_hand(
    key: str, value: str, username: str, groups: list[str], decision: str | None
) -> None:
    """Whatever the user, and whether or not the request decides: a hand-set value is refused
    unless it is exactly the stamp our mutating webhook would write for that very user."""
    old = approval()
    new = approval(decision)
    requester = Requester(username, tuple(groups))
    stamp = stamp_decision(old, new, requester, NOW, KEY)
    new["metadata"]["annotations"].update(stamp)
    if old["metadata"]["annotations"].get(key) == value or (
        key in stamp and (key in (DECIDED_AT, DECISION_SEAL) or stamp[key] == value)
    ):
        return
    new["metadata"]["annotations"][key] = value
    refusal = review_approval_change("UPDATE", old, new, requester, POLICY)
    assert refusal is not None and refusal.rule == "identity-stamped-by-flywheel"


# --------------------------------------------------------------------------- token


def grant(**overrides: Any) -> str:
    values: dict[str, Any] = {"run_uid": "run-1", "approval_uid": "a-1", "approver": "bob", "action": ACTION, "now": NOW,
                                  "ttl": timedelta(minutes=10)}
    values.update(overrides)
    return issue_token(new_grant(**values), KEY)


def test_a_token_allows_its_run_and_action_until_it_expires() -> None:
    verified = verify_token(grant(), KEY, run_uid="run-1", action=ACTION, now=NOW + timedelta(minutes=9))
    assert (verified.approver, verified.approval_uid, verified.action_digest) == ("bob", "a-1", action_digest(ACTION))


@pytest.mark.parametrize(
    ("token", "run_uid", "action", "now", "code"),
    [
        (None, "run-1", ACTION, NOW, RunErrorCode.APPROVAL_TOKEN_INVALID),
        ("not-a-jwt", "run-1", ACTION, NOW, RunErrorCode.APPROVAL_TOKEN_INVALID),
        (jwt.encode({"sub": "run-1"}, b"x" * 32, algorithm="HS256"), "run-1", ACTION, NOW,
         RunErrorCode.APPROVAL_TOKEN_INVALID),
        ("grant", "run-2", ACTION, NOW, RunErrorCode.APPROVAL_REPLAYED),
        ("grant", "run-1", ACTION, NOW + timedelta(minutes=10), RunErrorCode.APPROVAL_TOKEN_EXPIRED),
        ("grant", "run-1", {**ACTION, "target": {"kind": "Deployment", "name": "other"}}, NOW,
         RunErrorCode.APPROVAL_ACTION_CHANGED),
    ],
)
def test_tokens_are_refused_with_a_code(
    token: str | None, run_uid: str, action: dict[str, Any], now: datetime, code: RunErrorCode
) -> None:
    with pytest.raises(TokenRefused) as refused:
        verify_token(grant() if token == "grant" else token, KEY, run_uid=run_uid, action=action, now=now)
    assert refused.value.code is code


def test_a_token_signed_with_another_key_is_refused() -> None:
    forged = issue_token(new_grant(run_uid="run-1", approval_uid="a", approver="mallory", action=ACTION, now=NOW,
                                   ttl=timedelta(minutes=5)), b"m" * 32)
    with pytest.raises(TokenRefused) as refused:
        verify_token(forged, KEY, run_uid="run-1", action=ACTION, now=NOW)
    assert refused.value.code is RunErrorCode.APPROVAL_TOKEN_INVALID


@given(replicas=st.integers(min_value=1, max_value=1000), other=st.integers(min_value=1, max_value=1000))
def test_the_digest_changes_with_any_parameter(replicas: int, other: int) -> None:
    scale = {"type": "Scale", "target": {"kind": "Deployment", "name": "a"}, "params": {"replicas": replicas}}
    changed = {**scale, "params": {"replicas": other}}
    assert (action_digest(scale) == action_digest(changed)) is (replicas == other)
    assert action_digest(scale) == action_digest(dict(reversed(list(scale.items())))), "key order does not matter"
