"""The approval rules and tokens, as pure functions: who may decide, what admission allows, what a token proves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.domain.approval import (
    CREATED_BY,
    DECIDED_AT,
    DECIDED_BY,
    DECIDED_GROUPS,
    INCIDENT_CREATED_BY,
    PROTECTED_APPROVAL_ANNOTATIONS,
    ApproverPolicy,
    Requester,
    TokenRefused,
    action_digest,
    decision_refusal,
    issue_token,
    new_grant,
    review_approval_change,
    review_incident_change,
    stamp_decision,
    verify_token,
)
from flywheel.domain.run_state import RunErrorCode

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
POLICY = ApproverPolicy.of(users=["carol"], groups=["flywheel-approvers"])
BOB = Requester("bob", ("flywheel-approvers", "system:authenticated"))
ACTION = {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "checkout"}}
KEY = b"k" * 32


def approval(decision: str | None = None, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "checkout-oom-1", "annotations": {INCIDENT_CREATED_BY: "alice", **(annotations or {})}},
        "spec": {"runRef": {"name": "checkout-oom-1", "uid": "u1"}, "action": ACTION, "riskLevel": "medium", **spec},
    }
    if decision is not None:
        body["spec"]["decision"] = decision
    return body


def decided(old: dict[str, Any], decision: str, requester: Requester, **spec: Any) -> dict[str, Any]:
    """What the API server hands the validating webhook: the change plus our mutating webhook's stamp."""
    new = approval(decision, dict(old["metadata"]["annotations"]), **spec)
    new["metadata"]["annotations"].update(stamp_decision(old, new, requester, NOW))
    return new


# --------------------------------------------------------------------------- policy


def test_policy_allows_listed_users_and_group_members_only() -> None:
    assert POLICY.permits(BOB)
    assert POLICY.permits(Requester("carol"))
    assert not POLICY.permits(Requester("mallory", ("developers",)))


def test_four_eyes_applies_to_approving_not_to_rejecting() -> None:
    creator = Requester("alice", ("flywheel-approvers",))
    refusal = decision_refusal("Approve", creator, POLICY, incident_creator="alice")
    assert refusal is not None and refusal.rule == "four-eyes" and "'alice' created the Incident" in refusal.message
    assert decision_refusal("Reject", creator, POLICY, incident_creator="alice") is None
    assert decision_refusal("Approve", BOB, POLICY, incident_creator="alice") is None


def test_approving_needs_a_known_creator() -> None:
    refusal = decision_refusal("Approve", BOB, POLICY, incident_creator=None)
    assert refusal is not None and refusal.rule == "four-eyes" and "not recorded" in refusal.message


def test_a_refusal_for_an_outsider_names_the_policy() -> None:
    refusal = decision_refusal("Reject", Requester("mallory", ("developers",)), POLICY, "alice")
    assert refusal is not None and refusal.rule == "approver-not-allowed"
    assert "allowed users: carol; allowed groups: flywheel-approvers" in refusal.message


# --------------------------------------------------------------------------- admission


def test_the_stamp_records_the_authenticated_decider_once() -> None:
    old = approval()
    stamp = stamp_decision(old, approval("Approve"), BOB, NOW)
    assert stamp == {
        DECIDED_BY: "bob",
        DECIDED_GROUPS: '["flywheel-approvers", "system:authenticated"]',
        DECIDED_AT: "2026-11-23T12:00:00Z",
    }
    already = approval("Approve", stamp)
    assert stamp_decision(already, approval("Approve", stamp, reason="again"), BOB, NOW) == {}


def test_an_allowed_decision_with_its_stamp_passes() -> None:
    old = approval()
    assert review_approval_change("UPDATE", old, decided(old, "Approve", BOB, reason="ok"), BOB, POLICY) is None


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


def test_an_incident_keeps_its_creator() -> None:
    alice = Requester("alice")
    created = {"metadata": {"annotations": {CREATED_BY: "alice"}}, "spec": {}}
    assert review_incident_change("CREATE", None, created, alice) is None
    forged = {"metadata": {"annotations": {CREATED_BY: "bob"}}, "spec": {}}
    assert review_incident_change("CREATE", None, forged, alice) is not None
    assert review_incident_change("UPDATE", created, forged, alice) is not None
    assert review_incident_change("UPDATE", created, created, BOB) is None


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
    stamp = stamp_decision(old, new, requester, NOW)
    new["metadata"]["annotations"].update(stamp)
    if old["metadata"]["annotations"].get(key) == value or (key in stamp and (key == DECIDED_AT or stamp[key] == value)):
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
