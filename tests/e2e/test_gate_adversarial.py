"""The gate against people who can write ``flywheel.dev`` but are not Flywheel, on the real API server.

A CI bot (``kubectl --as ci-bot --as-group ci-bots``, granted every write on Runs and their
status by RBAC) tries each path the review found; one test per path, each asserting that the
workload is untouched (generation and template annotations) and that the refusal, status or
Events say why:

- a Run created by hand for an existing Incident (requiresApproval false): refused by the
  webhook; with webhooks off, the executor fails it ``E-RUN-UNTRUSTED`` (Warning RunUntrusted);
- ``requiresApproval`` flipped and ``spec.action`` edited: refused by the API server (CEL);
- ``runs/status`` patched to Running attempt 1 on a waiting Run: refused by the webhook, and
  the Run keeps waiting;
- the token of attempt 1 replayed for a second attempt (status rewritten to attempt 2 with
  Flywheel's own identity, as a status writer past the webhook would): refused;
- the Approval deleted (recreated by Flywheel) or stripped of its owner: the Run still times
  out on its own deadline, which the recreated Approval does not extend;
- Redis down (degraded counts): the Run waits for approval, with the reason.

The Approval evidence paths (forged Approval status, webhooks off, four eyes) are in
``tests/e2e/test_gate_evidence.py``.
"""

from __future__ import annotations

import json
import socket
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import OperatorFactory
from tests.e2e.test_approvals import (
    APPROVER,
    APPROVERS,
    FINAL,
    approval,
    as_user,
    create_incident,
    decide,
    let_everyone_write_incidents_and_approvals,
    set_run_status,
    start_with_webhooks,
    wait_for_webhooks,
    waiting_run,
)
from tests.e2e.test_runs import condition, events_for, get, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

BOT = ("ci-bot", "ci-bots")
RUNS = "runs.flywheel.dev"


def let_the_bot_write_runs(cluster: TestCluster, namespace: str) -> None:
    """RBAC would let the bot do anything to Runs: only Flywheel's own checks stand in the way."""
    cluster.kubectl(
        "create", "role", "run-writer", "-n", namespace, "--verb=get,list,watch,create,patch,update,delete",
        "--resource=runs.flywheel.dev,runs.flywheel.dev/status,approvals.flywheel.dev,approvals.flywheel.dev/status",
    )
    cluster.kubectl("create", "rolebinding", "run-writer", "-n", namespace, "--role=run-writer", f"--group={BOT[1]}")


def workload(cluster: TestCluster, namespace: str, name: str) -> tuple[int, dict[str, str]]:
    """What acting would change: the Deployment's generation and its template annotations."""
    body = get(cluster, namespace, "deployment", name)
    return body["metadata"]["generation"], body["spec"]["template"]["metadata"].get("annotations") or {}


def hand_made_run(cluster: TestCluster, namespace: str, incident: str, target: str, name: str) -> dict[str, Any]:
    body = get(cluster, namespace, "incident", incident)
    return {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "Run",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "incidentRef": {"name": incident, "uid": body["metadata"]["uid"]},
            "action": {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": target}},
            "riskLevel": "low",
            "requiresApproval": False,
            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
        },
    }


def bot(cluster: TestCluster, *args: str, input: str | None = None) -> Any:
    return cluster.kubectl(*as_user(*BOT), *args, input=input, check=False)


def started(cluster: TestCluster, namespace: str, name: str) -> dict[str, Any]:
    """An Incident whose Run waits for approval, the bot allowed to write Runs."""
    create_deployment(cluster, name, namespace)
    waiting_run(cluster, namespace, f"{name}-oom", name)
    return get(cluster, namespace, RUNS, f"{name}-oom-1")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- hand-made Runs


def test_a_hand_made_run_is_refused_by_the_webhook(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    operator = start_with_webhooks(start_operator, clean_redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)
    let_the_bot_write_runs(test_cluster, namespace)
    started(test_cluster, namespace, "cart")
    before = workload(test_cluster, namespace, "cart")
    created = bot(test_cluster, "create", "-f", "-",
                  input=json.dumps(hand_made_run(test_cluster, namespace, "cart-oom", "cart", "cart-byhand")))
    assert created.returncode != 0
    assert "runs-written-by-flywheel" in created.stderr and "ci-bot" in created.stderr, created.stderr
    assert test_cluster.kubectl("get", RUNS, "cart-byhand", "-n", namespace, check=False).returncode != 0
    assert workload(test_cluster, namespace, "cart") == before


def test_a_hand_made_run_with_webhooks_off_fails_untrusted(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "till", namespace)
    start_operator(redis_url=clean_redis_url)
    let_everyone_write_incidents_and_approvals(test_cluster, namespace)
    create_incident(test_cluster, namespace, "till-oom", "till")  # RequireApproval
    wait_for_run(test_cluster, namespace, "till-oom-1", "WaitingApproval")
    before = workload(test_cluster, namespace, "till")
    test_cluster.kubectl("create", "-f", "-",
                         input=json.dumps(hand_made_run(test_cluster, namespace, "till-oom", "till", "till-byhand")))
    final = wait_for_run(test_cluster, namespace, "till-byhand", *FINAL, timeout=30)
    assert (final["state"], final["errorCode"]) == ("Failed", "E-RUN-UNTRUSTED"), final
    assert "not created by Flywheel" in final["errorDetail"]
    assert final.get("attempt", 0) == 0
    warnings = [e for e in events_for(test_cluster, namespace, "till-byhand") if e["reason"] == "RunUntrusted"]
    assert warnings and warnings[0]["type"] == "Warning"
    assert workload(test_cluster, namespace, "till") == before


# --------------------------------------------------------------------------- edits of the spec


def test_requires_approval_and_the_action_cannot_be_edited(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    operator = start_with_webhooks(start_operator, clean_redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)
    let_the_bot_write_runs(test_cluster, namespace)
    started(test_cluster, namespace, "basket")
    create_deployment(test_cluster, "payments", namespace)
    before = workload(test_cluster, namespace, "basket"), workload(test_cluster, namespace, "payments")
    for patch, field in (
        ({"spec": {"requiresApproval": False}}, "requiresApproval is immutable"),
        ({"spec": {"action": {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "payments"}}}},
         "action is immutable"),
    ):
        # The cluster admin too: the schema refuses it before any webhook is asked.
        for who in ((), as_user(*BOT)):
            edited = test_cluster.kubectl(*who, "patch", RUNS, "basket-oom-1", "-n", namespace, "--type=merge",
                                          "-p", json.dumps(patch), check=False)
            assert edited.returncode != 0 and field in edited.stderr, edited.stderr
    status = wait_for_run(test_cluster, namespace, "basket-oom-1", "WaitingApproval")
    assert condition(status, "AwaitingApproval")["status"] == "True"
    assert (workload(test_cluster, namespace, "basket"), workload(test_cluster, namespace, "payments")) == before


# --------------------------------------------------------------------------- forged status


def test_a_forged_running_status_is_refused_and_never_acts(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    operator = start_with_webhooks(start_operator, clean_redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)
    let_the_bot_write_runs(test_cluster, namespace)
    started(test_cluster, namespace, "ledger")
    before = workload(test_cluster, namespace, "ledger")
    forged = {"status": {"state": "Running", "attempt": 1, "startedAt": datetime.now().astimezone().isoformat()}}
    patched = bot(test_cluster, "patch", RUNS, "ledger-oom-1", "-n", namespace, "--subresource=status",
                  "--type=merge", "-p", json.dumps(forged))
    assert patched.returncode != 0
    assert "status is written by Flywheel only" in patched.stderr, patched.stderr
    status = wait_for_run(test_cluster, namespace, "ledger-oom-1", "WaitingApproval")
    assert status.get("attempt", 0) == 0
    assert workload(test_cluster, namespace, "ledger") == before


def test_the_token_of_one_attempt_is_refused_for_the_next(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    operator = start_with_webhooks(start_operator, clean_redis_url)
    wait_for_webhooks(test_cluster, namespace, operator)
    started(test_cluster, namespace, "stock")
    decide(test_cluster, namespace, "stock-oom-1", "Approve", "known OOM", APPROVER, APPROVERS)
    done = wait_for_run(test_cluster, namespace, "stock-oom-1", *FINAL, timeout=60)
    assert done["state"] == "Succeeded", done
    after_first = workload(test_cluster, namespace, "stock")
    # Past the webhook (Flywheel's own identity, as the test's admin is): a second attempt claimed
    # with the first attempt's token id.
    set_run_status(test_cluster, namespace, "stock-oom-1",
                   {"state": "Running", "attempt": 2, "approvalTokenId": done["approvalTokenId"],
                    "completedAt": None, "errorCode": None})
    final = wait_for(
        lambda: (s := get(test_cluster, namespace, RUNS, "stock-oom-1").get("status") or {}).get("state") == "Failed"
        and s,
        timeout=30, what="the replayed attempt refused",
    )
    assert final["errorCode"] == "E-APPR-REPLAYED", final
    assert "issued for attempt 1" in final["errorDetail"] and "not attempt 2" in final["errorDetail"]
    refused = [e for e in events_for(test_cluster, namespace, "stock-oom-1") if e["reason"] == "ApprovalTokenRefused"]
    assert refused and refused[0]["type"] == "Warning"
    assert workload(test_cluster, namespace, "stock") == after_first, "acted once, for the approved attempt"


# --------------------------------------------------------------------------- deadlines


def test_a_deleted_or_orphaned_approval_cannot_keep_the_run_waiting(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    operator = start_with_webhooks(start_operator, clean_redis_url, approval_timeout_seconds="25")
    wait_for_webhooks(test_cluster, namespace, operator)
    for name in ("vault", "queue"):
        started(test_cluster, namespace, name)
    before = workload(test_cluster, namespace, "vault"), workload(test_cluster, namespace, "queue")
    deadline = datetime.fromisoformat(get(test_cluster, namespace, RUNS, "vault-oom-1")["status"]["timeoutAt"])
    first = approval(test_cluster, namespace, "vault-oom-1")

    test_cluster.kubectl("delete", "approval", "vault-oom-1", "-n", namespace)
    recreated = wait_for(
        lambda: (a := approval(test_cluster, namespace, "vault-oom-1"))["metadata"]["uid"] != first["metadata"]["uid"]
        and a,
        timeout=30, what="the Approval made again",
    )
    assert datetime.fromisoformat(recreated["spec"]["expiresAt"]) <= deadline, "not extended"
    test_cluster.kubectl("patch", "approval", "queue-oom-1", "-n", namespace, "--type=json",
                         "-p", json.dumps([{"op": "remove", "path": "/metadata/ownerReferences"}]))

    for run in ("vault-oom-1", "queue-oom-1"):
        final = wait_for_run(test_cluster, namespace, run, *FINAL, timeout=60)
        assert (final["state"], final["errorCode"]) == ("TimedOut", "E-APPR-EXPIRED"), final
    # The orphaned Approval is not Flywheel's any more: only the Run's own deadline ended the wait.
    assert "approval deadline" in final["errorDetail"], final
    assert (workload(test_cluster, namespace, "vault"), workload(test_cluster, namespace, "queue")) == before


# --------------------------------------------------------------------------- missing facts


def test_degraded_counts_wait_for_approval_with_the_reason(
    test_cluster: TestCluster, namespace: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "search", namespace)
    operator = start_with_webhooks(start_operator, f"redis://127.0.0.1:{closed_port()}/0")
    wait_for_webhooks(test_cluster, namespace, operator)
    before = workload(test_cluster, namespace, "search")
    create_incident(test_cluster, namespace, "search-oom", "search", remediation={"mode": "Auto"})
    status = wait_for_run(test_cluster, namespace, "search-oom-1", "WaitingApproval", *FINAL, timeout=60)
    assert status["state"] == "WaitingApproval", status
    waiting = condition(status, "AwaitingApproval")
    assert "recurrence counts are degraded" in waiting["message"], waiting
    assert get(test_cluster, namespace, RUNS, "search-oom-1")["spec"]["requiresApproval"] is True
    proposal = approval(test_cluster, namespace, "search-oom-1")
    assert "degraded" in proposal["spec"].get("reasoning", ""), proposal["spec"]
    assert workload(test_cluster, namespace, "search") == before
