"""Approvals on the real control plane, with people played by kubectl impersonation.

The operator serves its admission webhooks on loopback with a generated CA and registers
them for the test's namespace only; ``kubectl --as USER --as-group GROUP`` makes the API
server authenticate each request as someone else, so the identities Flywheel records are
the API server's, exactly as in a cluster.

Scenario matrix:
- an approver approves → the Run executes once, its journal says who approved, the Approval
  records decidedBy/decidedGroups from the API server, an audit row is stored;
- refused at admission, each naming its rule: a non-approver, the Incident's creator (four
  eyes), hand-written identity annotations on Approvals and Incidents, a changed decision,
  an edited proposal;
- reject → Run Cancelled with E-APPR-REJECTED and a journal step naming the approver;
- expiry → Approval Expired, Run TimedOut with E-APPR-EXPIRED;
- tokens: the action cannot be edited (CEL); a token id of another Run, or one never issued,
  is refused by the executor, the workload untouched;
- a decision on an Approval whose Run is not waiting (or is gone) → Approval Invalid;
- the operator killed while a Run waits: approving is refused while the webhook is down,
  and works once the operator is back.
"""

from __future__ import annotations

import base64
import http.server
import json
import sqlite3
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OperatorFactory
from tests.e2e.test_runs import condition, events_for, get, replica_sets, steps, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.operator import OperatorProcess
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

FINAL = ("Succeeded", "Failed", "Cancelled", "TimedOut")
APPROVERS = "flywheel-approvers"
CREATOR = "sre-alice"
APPROVER = "bob"


# --------------------------------------------------------------------------- helpers


def as_user(user: str, *groups: str) -> tuple[str, ...]:
    every = ("system:authenticated", *groups)
    return ("--as", user, *[arg for group in every for arg in ("--as-group", group)])


def let_everyone_write_incidents_and_approvals(cluster: TestCluster, namespace: str) -> None:
    """RBAC lets every authenticated user in: who may decide is Flywheel's policy, not RBAC's."""
    cluster.kubectl(
        "create", "role", "flywheel-user", "-n", namespace,
        "--verb=get,list,watch,create,patch,update", "--resource=incidents.flywheel.dev,approvals.flywheel.dev",
    )
    cluster.kubectl(
        "create", "rolebinding", "flywheel-user", "-n", namespace, "--role=flywheel-user",
        "--group=system:authenticated",
    )


def start_with_webhooks(start_operator: OperatorFactory, redis_url: str, **settings: str) -> OperatorProcess:
    operator = start_operator(
        redis_url=redis_url,
        webhook_mode="loopback",
        webhook_port="0",
        approver_groups=APPROVERS,
        **settings,
    )
    return operator


def wait_for_webhooks(cluster: TestCluster, namespace: str, operator: OperatorProcess, starts: int = 1) -> None:
    if starts == 1:
        let_everyone_write_incidents_and_approvals(cluster, namespace)
    wait_for(
        lambda: operator.log().count("webhook_configurations_applied") >= starts,
        timeout=30,
        what="webhook configurations registered",
    )
    cluster.kubectl("get", "validatingwebhookconfiguration", f"flywheel-{namespace}")


def create_incident(
    cluster: TestCluster, namespace: str, name: str, target: str, *, user: str = CREATOR, **spec: Any
) -> None:
    body: dict[str, Any] = {
        "alertName": "KubePodOOMKilled",
        "service": target,
        "errorType": "OOMKilled",
        "severity": "P2",
        "source": "manual",
        "summary": f"{target} is unwell",
        "targetRef": {"kind": "Deployment", "name": target},
        "remediation": {"mode": "RequireApproval"},
    }
    body.update(spec)
    manifest = {"apiVersion": "flywheel.dev/v1alpha1", "kind": "Incident", "metadata": {"name": name}, "spec": body}
    cluster.kubectl(*as_user(user), "create", "-n", namespace, "-f", "-",
                    input=json.dumps(manifest))


def decide(
    cluster: TestCluster, namespace: str, name: str, decision: str, reason: str, user: str, *groups: str,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    patch = {"spec": {"decision": decision, "reason": reason}}
    return cluster.kubectl(
        *as_user(user, *groups), "patch", "approval", name, "-n", namespace, "--type=merge", "-p",
        json.dumps(patch), check=check,
    )


def approval(cluster: TestCluster, namespace: str, name: str) -> dict[str, Any]:
    return wait_for(
        lambda: (r := cluster.kubectl("get", "approval", name, "-n", namespace, "-o", "json", check=False))
        .returncode == 0 and json.loads(r.stdout),
        timeout=20,
        what=f"approval {name}",
    )


def approval_in_phase(cluster: TestCluster, namespace: str, name: str, phase: str) -> dict[str, Any]:
    return wait_for(
        lambda: (body := get(cluster, namespace, "approval", name)).get("status", {}).get("phase") == phase and body,
        timeout=30,
        what=f"approval {name} {phase}",
    )


def restart_count(cluster: TestCluster, namespace: str, name: str) -> int:
    return len(replica_sets(cluster, namespace, name))


def signing_key(cluster: TestCluster, namespace: str) -> bytes:
    secret = get(cluster, namespace, "secret", "flywheel-approval-signing-key")
    return base64.b64decode(secret["data"]["signing-key"])


def set_run_status(cluster: TestCluster, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Write a Run's status as someone with access to the status subresource would."""
    cluster.kubectl(
        "patch", "runs.flywheel.dev", name, "-n", namespace, "--subresource=status", "--type=merge", "-p",
        json.dumps({"status": status}),
    )


def waiting_run(cluster: TestCluster, namespace: str, incident: str, target: str) -> dict[str, Any]:
    create_incident(cluster, namespace, incident, target)
    wait_for_run(cluster, namespace, f"{incident}-1", "WaitingApproval")
    approval(cluster, namespace, f"{incident}-1")
    return get(cluster, namespace, "runs.flywheel.dev", f"{incident}-1")


class NotificationReceiver:
    """A webhook receiver on loopback that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet: the stdlib would print every request to stderr."""

        self.received = received
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --------------------------------------------------------------------------- scenarios


def test_an_approver_approves_and_the_action_runs_once(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory,
    tmp_path: Path,
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    receiver = NotificationReceiver()
    operator = start_with_webhooks(start_operator, clean_redis_url, notify_webhook_url=receiver.url)
    wait_for_webhooks(test_cluster, namespace, operator)

    create_incident(test_cluster, namespace, "checkout-oom", "checkout")
    incident = get(test_cluster, namespace, "incident", "checkout-oom")
    assert incident["metadata"]["annotations"]["flywheel.dev/created-by"] == CREATOR
    waiting = wait_for_run(test_cluster, namespace, "checkout-oom-1", "WaitingApproval")
    assert waiting.get("attempt", 0) == 0

    proposal = approval(test_cluster, namespace, "checkout-oom-1")
    run = get(test_cluster, namespace, "runs.flywheel.dev", "checkout-oom-1")
    assert proposal["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
    assert proposal["metadata"]["annotations"]["flywheel.dev/incident-created-by"] == CREATOR
    spec = proposal["spec"]
    assert spec["runRef"] == {"name": "checkout-oom-1", "uid": run["metadata"]["uid"]}
    assert spec["action"] == {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "checkout"}}
    assert spec["riskLevel"] == run["spec"]["riskLevel"]
    assert spec["anomaly"]["count24h"] == 1 and "expiresAt" in spec
    assert spec["reasoning"]
    assert approval_in_phase(test_cluster, namespace, "checkout-oom-1", "Pending")
    listed = test_cluster.kubectl("get", "approvals", "-n", namespace).stdout
    assert "checkout-oom-1" in listed and "Pending" in listed
    described = test_cluster.kubectl("describe", "approval", "checkout-oom-1", "-n", namespace).stdout
    assert "RolloutRestart" in described and "Expires At" in described
    assert wait_for(
        lambda: [e for e in events_for(test_cluster, namespace, "checkout-oom-1") if e["reason"] == "ApprovalRequested"],
        timeout=15,
        what="ApprovalRequested event",
    )
    assert restart_count(test_cluster, namespace, "checkout") == 1, "nothing happens before the decision"
    on_approval = wait_for(
        lambda: [e for e in events_for(test_cluster, namespace, "checkout-oom-1")
                 if e["reason"] == "ApprovalRequested" and e["involvedObject"]["kind"] == "Approval"],
        timeout=15,
        what="ApprovalRequested event on the Approval",
    )
    assert on_approval[0]["involvedObject"]["uid"] == proposal["metadata"]["uid"]
    # The decision was announced first (decision_ready); the approval request is the step to act on.
    announced = wait_for(lambda: [n for n in receiver.received if n["kind"] == "approval_requested"],
                         timeout=15, what="approval notification")
    receiver.close()
    assert [n["kind"] for n in receiver.received].count("approval_requested") == 1
    assert announced[0]["reason"] == "ApprovalRequested"
    details = announced[0]["details"]
    assert (details["namespace"], details["approval"], details["run"]) == (namespace, "checkout-oom-1", "checkout-oom-1")
    assert details["approveCommand"] == f"kubectl flywheel approve checkout-oom-1 -n {namespace} --reason '<why>'"
    assert details["expiresAt"] == spec["expiresAt"]
    assert "RolloutRestart Deployment/checkout" in announced[0]["message"]

    decide(test_cluster, namespace, "checkout-oom-1", "Approve", "known OOM, restart is safe", APPROVER, APPROVERS)
    final = wait_for_run(test_cluster, namespace, "checkout-oom-1", *FINAL, timeout=60)
    assert final["state"] == "Succeeded", final
    approve_step = steps(final, "approve")[0]
    assert approve_step["result"] == "Approved"
    assert approve_step["message"] == f"approved by {APPROVER}: known OOM, restart is safe"
    # The rollout, then the symptom (issue #16): two verify steps.
    assert [step["name"] for step in steps(final)] == ["await-approval", "approve", "execute", "verify", "verify"]
    assert final["approvalRef"]["name"] == "checkout-oom-1"
    assert len(final["approvalTokenId"]) == 32 and "approvalToken" not in final, "only the token's id, never the token"
    assert restart_count(test_cluster, namespace, "checkout") == 2, "restarted exactly once"

    decided = approval_in_phase(test_cluster, namespace, "checkout-oom-1", "Approved")
    assert decided["status"]["decidedBy"] == APPROVER
    assert APPROVERS in decided["status"]["decidedGroups"]
    assert decided["status"]["decidedAt"]
    assert condition(decided["status"], "Decided")["status"] == "True"
    resolved = wait_for(
        lambda: (s := get(test_cluster, namespace, "incident", "checkout-oom").get("status") or {}).get("phase")
        == "Resolved" and s,
        timeout=20,
        what="incident resolved",
    )
    assert resolved["disposition"] == "human_approved"

    database = tmp_path / "flywheel.db"

    def audit_rows() -> list[tuple[str, str, str]] | None:
        with sqlite3.connect(database) as connection:
            rows = connection.execute(
                "SELECT kind, actor, outcome FROM audit_events WHERE kind LIKE 'approval.%' ORDER BY occurred_at"
            ).fetchall()
        return rows if ("approval.decided", APPROVER, "Approved") in rows else None

    rows = wait_for(audit_rows, timeout=20, what="approval audit rows")
    assert ("approval.requested", None, "Pending") in rows


def test_admission_refuses_whoever_may_not_decide_and_hand_written_identity(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "cart", namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url, approver_users="carol")
    wait_for_webhooks(test_cluster, namespace, operator)
    waiting_run(test_cluster, namespace, "cart-oom", "cart")
    name = "cart-oom-1"

    refused = decide(test_cluster, namespace, name, "Approve", "looks fine", "mallory", check=False)
    assert refused.returncode != 0
    assert "approver-not-allowed" in refused.stderr and "'mallory'" in refused.stderr

    refused = decide(test_cluster, namespace, name, "Approve", "my own", CREATOR, APPROVERS, check=False)
    assert refused.returncode != 0
    assert "four-eyes" in refused.stderr and "created or changed the Incident" in refused.stderr

    refused = test_cluster.kubectl(
        *as_user(APPROVER, APPROVERS), "annotate", "approval", name, "-n", namespace,
        "flywheel.dev/decided-by=carol", check=False,
    )
    assert refused.returncode != 0 and "identity-stamped-by-flywheel" in refused.stderr

    refused = test_cluster.kubectl(
        *as_user(APPROVER, APPROVERS), "annotate", "incident", "cart-oom", "-n", namespace, "--overwrite",
        "flywheel.dev/created-by=somebody-else", check=False,
    )
    assert refused.returncode != 0 and "identity-stamped-by-flywheel" in refused.stderr

    refused = test_cluster.kubectl(
        *as_user(APPROVER, APPROVERS), "patch", "approval", name, "-n", namespace, "--type=merge", "-p",
        json.dumps({"spec": {"riskLevel": "low"}}), check=False,
    )
    assert refused.returncode != 0 and "proposal-immutable" in refused.stderr

    planted = get(test_cluster, namespace, "approval", name)
    planted["metadata"] = {"name": "planted", "annotations": {"flywheel.dev/incident-created-by": "nobody"}}
    planted.pop("status")
    refused = test_cluster.kubectl(*as_user(APPROVER, APPROVERS), "create", "-n", namespace, "-f", "-",
                                   input=json.dumps(planted), check=False)
    assert refused.returncode != 0 and "approvals-created-by-flywheel" in refused.stderr

    assert get(test_cluster, namespace, "approval", name)["status"]["phase"] == "Pending", "nothing was decided"

    # carol is allowed by name, without being in the group; her decision is a rejection.
    decide(test_cluster, namespace, name, "Reject", "we roll a fix instead", "carol")
    changed = decide(test_cluster, namespace, name, "Approve", "changed my mind", "carol", check=False)
    assert changed.returncode != 0
    assert "decision is immutable" in changed.stderr or "decision-final" in changed.stderr, changed.stderr

    final = wait_for_run(test_cluster, namespace, name, *FINAL)
    assert (final["state"], final["errorCode"]) == ("Cancelled", "E-APPR-REJECTED")
    reject = steps(final, "reject")[0]
    assert reject["message"] == "rejected by carol: we roll a fix instead"
    decided = approval_in_phase(test_cluster, namespace, name, "Rejected")
    assert decided["status"]["decidedBy"] == "carol"
    assert restart_count(test_cluster, namespace, "cart") == 1, "a rejected Run never acts"


def test_an_undecided_approval_expires_and_the_run_times_out(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "queue", namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url, approval_timeout_seconds="6")
    wait_for_webhooks(test_cluster, namespace, operator)
    create_incident(test_cluster, namespace, "queue-oom", "queue")
    final = wait_for_run(test_cluster, namespace, "queue-oom-1", *FINAL, timeout=45)
    assert (final["state"], final["errorCode"]) == ("TimedOut", "E-APPR-EXPIRED")
    assert steps(final, "approval-expired")
    expired = approval_in_phase(test_cluster, namespace, "queue-oom-1", "Expired")
    assert "no decision before" in expired["status"]["message"]
    assert restart_count(test_cluster, namespace, "queue") == 1


def test_the_executor_refuses_edited_actions_and_foreign_or_unissued_tokens(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    for target in ("edited", "other", "replay", "late", "forged"):
        create_deployment(test_cluster, target, namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)

    # The Run's action cannot be edited at all (CEL; it is also covered by the binding and the token).
    waiting_run(test_cluster, namespace, "edited-oom", "edited")
    edit = test_cluster.kubectl(
        "patch", "runs.flywheel.dev", "edited-oom-1", "-n", namespace, "--type=merge", "-p",
        json.dumps({"spec": {"action": {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "other"}}}}),
        check=False,
    )
    assert edit.returncode != 0 and "action is immutable" in edit.stderr, edit.stderr
    assert restart_count(test_cluster, namespace, "other") == 1

    # A properly approved Run's token id, replayed on another Run.
    waiting_run(test_cluster, namespace, "replay-oom", "replay")
    decide(test_cluster, namespace, "replay-oom-1", "Approve", "ok", APPROVER, APPROVERS)
    approved = wait_for_run(test_cluster, namespace, "replay-oom-1", *FINAL, timeout=60)
    assert approved["state"] == "Succeeded", approved
    token_id = approved["approvalTokenId"]

    waiting_run(test_cluster, namespace, "late-oom", "late")
    set_run_status(test_cluster, namespace, "late-oom-1", {"state": "Running", "approvalTokenId": token_id})
    final = wait_for_run(test_cluster, namespace, "late-oom-1", "Failed", "Succeeded", timeout=30)
    assert (final["state"], final["errorCode"]) == ("Failed", "E-APPR-REPLAYED"), final
    assert "another Run" in final["errorDetail"]
    assert restart_count(test_cluster, namespace, "late") == 1

    # An id Flywheel never issued a token under (the token itself is only ever in the operator's Redis).
    waiting_run(test_cluster, namespace, "forged-oom", "forged")
    set_run_status(test_cluster, namespace, "forged-oom-1", {"state": "Running", "approvalTokenId": "f" * 32})
    final = wait_for_run(test_cluster, namespace, "forged-oom-1", "Failed", "Succeeded", timeout=30)
    assert (final["state"], final["errorCode"]) == ("Failed", "E-APPR-TOKEN-INVALID"), final
    assert "no approval token was issued" in final["errorDetail"]
    assert restart_count(test_cluster, namespace, "forged") == 1, "no forged or replayed token ever acted"


def test_a_decision_nobody_waits_for_makes_the_approval_invalid(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "ledger", namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)
    create_incident(test_cluster, namespace, "ledger-oom", "ledger", remediation={"mode": "Auto"})
    done = wait_for_run(test_cluster, namespace, "ledger-oom-1", *FINAL, timeout=60)
    run = get(test_cluster, namespace, "runs.flywheel.dev", "ledger-oom-1")

    def stray(name: str, run_name: str, run_uid: str) -> None:
        body = {
            "apiVersion": "flywheel.dev/v1alpha1",
            "kind": "Approval",
            "metadata": {"name": name, "annotations": {"flywheel.dev/incident-created-by": "someone-else"}},
            "spec": {
                "runRef": {"name": run_name, "uid": run_uid},
                "action": run["spec"]["action"],
                "riskLevel": "low",
                "expiresAt": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
            },
        }
        test_cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body))

    stray("late-decision", "ledger-oom-1", run["metadata"]["uid"])
    decide(test_cluster, namespace, "late-decision", "Approve", "ok", APPROVER, APPROVERS)
    invalid = approval_in_phase(test_cluster, namespace, "late-decision", "Invalid")
    assert invalid["status"]["message"] == f"Run ledger-oom-1 is {done['state']}, not waiting for approval"

    stray("no-such-run", "ghost-1", "00000000-0000-0000-0000-000000000000")
    decide(test_cluster, namespace, "no-such-run", "Reject", "no", APPROVER, APPROVERS)
    invalid = approval_in_phase(test_cluster, namespace, "no-such-run", "Invalid")
    assert invalid["status"]["message"].startswith("Run ghost-1 not found")


def test_approving_works_after_the_operator_was_killed_while_the_run_waited(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "search", namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)
    waiting_run(test_cluster, namespace, "search-oom", "search")

    operator.kill()
    refused = decide(test_cluster, namespace, "search-oom-1", "Approve", "ok", APPROVER, APPROVERS, check=False)
    assert refused.returncode != 0 and "flywheel.dev" in refused.stderr, "no decision without the webhook"
    assert "decision" not in get(test_cluster, namespace, "approval", "search-oom-1")["spec"]

    operator.start()
    wait_for_webhooks(test_cluster, namespace, operator, starts=2)
    decide(test_cluster, namespace, "search-oom-1", "Approve", "ok now", APPROVER, APPROVERS)
    final = wait_for_run(test_cluster, namespace, "search-oom-1", *FINAL, timeout=60)
    assert final["state"] == "Succeeded", final
    assert restart_count(test_cluster, namespace, "search") == 2
