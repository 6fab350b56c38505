"""The approval gate counts evidence, not status (issue 17, items 2, 6 and 9), against the real API server.

Everyone here is played by ``kubectl --as/--as-group``; ``ci-bot`` is in ``system:masters``, i.e.
a cluster admin or a CI bot with write access to everything. Where a scenario needs the
admission webhooks out of the way (an admin may delete their configurations), it deletes them:
the gate must hold on its own.

Scenario matrix (each: the workload untouched, the Approval's status or an Event says why):
- approvals/status patched to Approved with a decidedBy → the gate ignores it, the Approval
  turns Invalid, a Warning Event names the forgery, the Run keeps waiting;
- hand-written identity annotations: refused by the webhook (even for an admin); with the
  webhooks deleted, a decision with a forged seal, and one with the seal copied from another
  Approval that was really approved, → Invalid with a Warning;
- FLYWHEEL_WEBHOOK_MODE=off → a decision with identity annotations is refused, fail closed;
- a decision after expiresAt → refused by the webhook; a sealed stamp dated after expiresAt
  (as a skewed or slow webhook would write it) → refused by the gate, the Run TimedOut;
- the Incident's creator and whoever changed its spec cannot approve: refused by the webhook,
  and by the gate for a sealed stamp of a spec editor.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flywheel.domain.approval import (
    DECIDED_AT,
    DECIDED_BY,
    DECIDED_GROUPS,
    DECISION_SEAL,
    DECISION_STAMP,
    Requester,
    stamp_decision,
)
from tests.conftest import OperatorFactory
from tests.e2e.test_approvals import (
    APPROVER,
    APPROVERS,
    CREATOR,
    FINAL,
    approval,
    approval_in_phase,
    as_user,
    decide,
    let_everyone_write_incidents_and_approvals,
    restart_count,
    signing_key,
    start_with_webhooks,
    wait_for_webhooks,
    waiting_run,
)
from tests.e2e.test_runs import events_for, get, run_status, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

ADMIN = ("--as", "ci-bot", "--as-group", "system:masters")


def refused_with_warning(cluster: TestCluster, namespace: str, name: str, words: str) -> dict[str, Any]:
    """The Approval turned Invalid by the gate with ``words`` in its message, and a Warning Event said so."""
    invalid = wait_for(
        lambda: (body := get(cluster, namespace, "approval", name)).get("status", {}).get("phase") == "Invalid"
        and words in body["status"].get("message", "") and body,
        timeout=45, what=f"approval {name} Invalid ({words})",
    )
    warnings = wait_for(
        lambda: [e for e in events_for(cluster, namespace, name)
                 if e["type"] == "Warning" and e["reason"] == "ApprovalRefused" and words in e["message"]],
        timeout=20, what=f"Warning ApprovalRefused ({words})",
    )
    assert warnings
    return invalid


def still_waiting(cluster: TestCluster, namespace: str, run: str, target: str, restarts: int = 1) -> None:
    assert run_status(cluster, namespace, run)["state"] == "WaitingApproval"
    assert restart_count(cluster, namespace, target) == restarts, "the workload was not touched"


def bypass_webhooks(cluster: TestCluster, namespace: str) -> None:
    """What an admin can do: delete Flywheel's webhook configurations (the gate must hold alone)."""
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        cluster.kubectl(*ADMIN, "delete", kind, f"flywheel-{namespace}")


def admin_decides(cluster: TestCluster, namespace: str, name: str, annotations: dict[str, str]) -> None:
    cluster.kubectl(*ADMIN, "patch", "approval", name, "-n", namespace, "--type=merge", "-p", json.dumps({
        "metadata": {"annotations": annotations}, "spec": {"decision": "Approve", "reason": "trust me"},
    }))


def test_a_status_written_by_anyone_else_is_ignored_and_reported(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)
    waiting_run(test_cluster, namespace, "checkout-oom", "checkout")
    name = "checkout-oom-1"

    test_cluster.kubectl(*ADMIN, "patch", "approval", name, "-n", namespace, "--subresource=status",
                         "--type=merge", "-p", json.dumps({"status": {"phase": "Approved", "decidedBy": APPROVER}}))
    invalid = refused_with_warning(test_cluster, namespace, name, "was not written by Flywheel")
    assert invalid["status"].get("decidedBy") in (None, ""), "the forged decider is not kept"
    still_waiting(test_cluster, namespace, name, "checkout")
    run = get(test_cluster, namespace, "runs.flywheel.dev", name)
    assert "approved by" not in json.dumps(run["status"].get("steps"))


def test_hand_written_forged_or_copied_identity_is_refused_by_the_webhook_and_by_the_seal(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    for target in ("cart", "payments", "search"):
        create_deployment(test_cluster, target, namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)
    for target in ("cart", "payments", "search"):
        waiting_run(test_cluster, namespace, f"{target}-oom", target)

    # With the webhooks in place: identity annotations are refused, an admin's included.
    refused = test_cluster.kubectl(*ADMIN, "annotate", "approval", "cart-oom-1", "-n", namespace,
                                   f"{DECIDED_BY}={APPROVER}", check=False)
    assert refused.returncode != 0 and "identity-stamped-by-flywheel" in refused.stderr
    refused = test_cluster.kubectl(*ADMIN, "patch", "approval", "cart-oom-1", "-n", namespace, "--type=merge",
                                   "-p", json.dumps({"spec": {"decision": "Approve"}}), check=False)
    assert refused.returncode != 0 and "approver-not-allowed" in refused.stderr, "the admin is stamped as itself"

    # A real approval of one Run, whose seal is then copied.
    decide(test_cluster, namespace, "search-oom-1", "Approve", "fine", APPROVER, APPROVERS)
    assert wait_for_run(test_cluster, namespace, "search-oom-1", *FINAL, timeout=60)["state"] == "Succeeded"
    annotations = get(test_cluster, namespace, "approval", "search-oom-1")["metadata"]["annotations"]
    copied = {key: annotations[key] for key in DECISION_STAMP}
    assert copied[DECIDED_BY] == APPROVER

    bypass_webhooks(test_cluster, namespace)
    admin_decides(test_cluster, namespace, "cart-oom-1", {
        DECIDED_BY: APPROVER, DECIDED_GROUPS: json.dumps([APPROVERS]),
        DECIDED_AT: datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        DECISION_SEAL: "0" * 64,
    })
    refused_with_warning(test_cluster, namespace, "cart-oom-1", "seal")
    admin_decides(test_cluster, namespace, "payments-oom-1", copied)
    refused_with_warning(test_cluster, namespace, "payments-oom-1", "seal")
    still_waiting(test_cluster, namespace, "cart-oom-1", "cart")
    still_waiting(test_cluster, namespace, "payments-oom-1", "payments")


def test_with_webhooks_off_every_approval_is_refused(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    start_operator(redis_url=clean_redis_url, webhook_mode="off", approver_groups=APPROVERS)
    let_everyone_write_incidents_and_approvals(test_cluster, namespace)
    waiting_run(test_cluster, namespace, "checkout-oom", "checkout")
    name = "checkout-oom-1"
    # Nothing stops the write without webhooks; the gate does not believe it.
    test_cluster.kubectl(*as_user(APPROVER, APPROVERS), "patch", "approval", name, "-n", namespace,
                         "--type=merge", "-p", json.dumps({
                             "metadata": {"annotations": {DECIDED_BY: APPROVER, DECIDED_GROUPS: json.dumps([APPROVERS])}},
                             "spec": {"decision": "Approve", "reason": "ok"}}))
    refused_with_warning(test_cluster, namespace, name, "FLYWHEEL_WEBHOOK_MODE is off")
    still_waiting(test_cluster, namespace, name, "checkout")


def forged_stamp(cluster: TestCluster, namespace: str, name: str, user: str, at: datetime) -> dict[str, str]:
    """The stamp our webhook would write for ``user`` at ``at``, sealed with the real key."""
    body = get(cluster, namespace, "approval", name)
    decided = {**body, "spec": {**body["spec"], "decision": "Approve"}}
    return stamp_decision(body, decided, Requester(user, ("system:authenticated", APPROVERS)), at,
                          signing_key(cluster, namespace))


def expires_at(cluster: TestCluster, namespace: str, name: str) -> datetime:
    return datetime.fromisoformat(approval(cluster, namespace, name)["spec"]["expiresAt"])


def test_a_decision_after_expires_at_is_refused_by_the_webhook_and_by_the_gate(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    for target in ("cart", "payments"):
        create_deployment(test_cluster, target, namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url, approval_timeout_seconds="30")
    wait_for_webhooks(test_cluster, namespace, operator)
    waiting_run(test_cluster, namespace, "cart-oom", "cart")
    waiting_run(test_cluster, namespace, "payments-oom", "payments")

    # The gate: a stamp dated after the deadline (a webhook whose request was slow) does not count.
    deadline = expires_at(test_cluster, namespace, "payments-oom-1")
    stamp = forged_stamp(test_cluster, namespace, "payments-oom-1", APPROVER, deadline + timedelta(seconds=1))
    bypass_webhooks(test_cluster, namespace)
    admin_decides(test_cluster, namespace, "payments-oom-1", stamp)
    final = wait_for_run(test_cluster, namespace, "payments-oom-1", *FINAL, timeout=45)
    assert (final["state"], final["errorCode"]) == ("TimedOut", "E-APPR-EXPIRED"), final
    late = approval_in_phase(test_cluster, namespace, "payments-oom-1", "Expired")
    assert "does not count" in late["status"]["message"]
    assert restart_count(test_cluster, namespace, "payments") == 1

    # The webhook (registered again by a second operator start): a decision past the deadline is refused.
    operator.stop()
    operator.start()
    wait_for_webhooks(test_cluster, namespace, operator, starts=2)
    deadline = expires_at(test_cluster, namespace, "cart-oom-1")
    wait_for(lambda: datetime.now(UTC) > deadline + timedelta(seconds=1), timeout=60, what="the deadline to pass")
    refused = decide(test_cluster, namespace, "cart-oom-1", "Approve", "late", APPROVER, APPROVERS, check=False)
    assert refused.returncode != 0 and "expired" in refused.stderr, refused.stderr
    final = wait_for_run(test_cluster, namespace, "cart-oom-1", *FINAL, timeout=45)
    assert final["state"] == "TimedOut"
    assert restart_count(test_cluster, namespace, "cart") == 1


def test_the_incidents_creator_and_spec_editors_cannot_approve(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)
    waiting_run(test_cluster, namespace, "checkout-oom", "checkout")
    name = "checkout-oom-1"
    editor = "dave"
    test_cluster.kubectl(*as_user(editor, APPROVERS), "patch", "incident", "checkout-oom", "-n", namespace,
                         "--type=merge", "-p", json.dumps({"spec": {"summary": "checkout is unwell, see runbook"}}))
    for user in (CREATOR, editor):
        refused = decide(test_cluster, namespace, name, "Approve", "mine", user, APPROVERS, check=False)
        assert refused.returncode != 0 and "four-eyes" in refused.stderr, (user, refused.stderr)

    # The gate on its own: a sealed stamp of the spec editor (as if the webhook had let it through).
    stamp = forged_stamp(test_cluster, namespace, name, editor, datetime.now(UTC).replace(microsecond=0))
    bypass_webhooks(test_cluster, namespace)
    admin_decides(test_cluster, namespace, name, stamp)
    refused_with_warning(test_cluster, namespace, name, "four")
    still_waiting(test_cluster, namespace, name, "checkout")
