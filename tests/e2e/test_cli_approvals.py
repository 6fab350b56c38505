"""The approver's CLI on the real control plane: `flywheel approvals|approve|reject|explain`.

The CLI runs as a subprocess (``.venv/bin/flywheel`` and, as a kubectl plugin, the real
kubectl binary finding ``kubectl-flywheel`` on PATH) with the test cluster's kubeconfig;
``--as``/``--as-group`` make the API server authenticate each call as someone else, and the
real operator's admission webhooks (loopback) stamp and judge those identities.

RBAC in each namespace lets in the Incident's creator (user sre-alice), the approvers' group
and an "outsiders" group; anybody else is refused by RBAC before Flywheel is asked.

Scenario matrix:
- `approvals` (and `kubectl flywheel approvals`): the waiting Approvals oldest first, with
  run, action, risk, escalation, age and expiry; `-o json`; `-A` adds the namespace; decided
  and expired Approvals are not listed;
- `approve`: approved as the API server authenticated the approver (`approved by bob`), the
  Run executes; `reject` (through the kubectl plugin): `rejected by bob`, the Run is cancelled;
- refusals, one line on stderr and exit code 1, nothing written: four eyes (the Incident's
  creator approving), not an approver (an outsider), forbidden by RBAC (a user RBAC does not
  let in), already decided, unknown Approval, expired (short approval timeout), webhooks off
  (an operator with FLYWHEEL_WEBHOOK_MODE=off: the dry run comes back without the stamp);
- `explain incident`: anomaly counts, decision, the Run's journal, the Approval with who
  decided and why, conditions, Events, and with --database-url the recorded history.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import OperatorFactory
from tests.e2e.test_approvals import (
    APPROVERS,
    CREATOR,
    FINAL,
    approval,
    approval_in_phase,
    create_incident,
    start_with_webhooks,
)
from tests.e2e.test_runs import get, steps, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.operator import OperatorProcess
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

APPROVER = "bob"
OUTSIDERS = "outsiders"
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- helpers


def let_in_creator_approvers_and_outsiders(cluster: TestCluster, namespace: str) -> None:
    cluster.kubectl(
        "create", "role", "flywheel-user", "-n", namespace,
        "--verb=get,list,watch,create,patch,update", "--resource=incidents.flywheel.dev,approvals.flywheel.dev",
    )
    cluster.kubectl(
        "create", "rolebinding", "flywheel-user", "-n", namespace, "--role=flywheel-user",
        f"--user={CREATOR}", f"--group={APPROVERS}", f"--group={OUTSIDERS}",
    )
    # What `explain` reads besides (the shipped flywheel-approver ClusterRole reads all of it too).
    cluster.kubectl("create", "role", "flywheel-reader", "-n", namespace, "--verb=get,list,watch",
                    "--resource=runs.flywheel.dev,events")
    cluster.kubectl("create", "rolebinding", "flywheel-reader", "-n", namespace, "--role=flywheel-reader",
                    f"--group={APPROVERS}")


def ready(cluster: TestCluster, namespace: str, operator: OperatorProcess | None) -> None:
    """RBAC in place, and the operator's webhooks registered (None: an operator without webhooks)."""
    let_in_creator_approvers_and_outsiders(cluster, namespace)
    if operator is not None:
        wait_for(lambda: "webhook_configurations_applied" in operator.log(), timeout=30,
                 what="webhook configurations registered")


def user_env(cluster: TestCluster) -> dict[str, str]:
    """What a user's shell has: the kubeconfig in KUBECONFIG, the venv and kubectl on PATH."""
    path = os.pathsep.join(str(part) for part in (BIN, cluster.bin_dir) if part) + os.pathsep + os.environ["PATH"]
    return {**cluster.env, "KUBECONFIG": cluster.kubeconfig, "PATH": path}


def flywheel(
    cluster: TestCluster, *args: str, user: str | None = None, groups: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    identity = [*(("--as", user) if user else ()), *(arg for group in groups for arg in ("--as-group", group))]
    return subprocess.run(
        [str(BIN / "flywheel"), *args, *identity], capture_output=True, text=True, env=user_env(cluster),
        timeout=90, check=False,
    )


def kubectl_plugin(cluster: TestCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl flywheel ...``: kubectl itself finds kubectl-flywheel on PATH."""
    return subprocess.run(
        [cluster.kubectl_binary, "flywheel", *args], capture_output=True, text=True, env=user_env(cluster),
        timeout=90, check=False,
    )


def refused_line(result: subprocess.CompletedProcess[str]) -> str:
    """The refusal: exit code 1, nothing on stdout, exactly one line on stderr."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def undecided(cluster: TestCluster, namespace: str, name: str) -> bool:
    body = get(cluster, namespace, "approval", name)
    return "decision" not in body["spec"] and "flywheel.dev/decided-by" not in body["metadata"].get("annotations", {})


def table_rows(output: str) -> list[list[str]]:
    """A `kubectl get`-like table as cells (split on runs of 3+ spaces, the column gap)."""
    return [re.split(r"\s{3,}", line.strip()) for line in output.strip().splitlines()]


# --------------------------------------------------------------------------- scenarios


def test_approvers_list_approve_reject_and_explain_with_every_refusal(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory,
    tmp_path: Path,
) -> None:
    for target in ("zeta", "alpha"):
        create_deployment(test_cluster, target, namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url)
    ready(test_cluster, namespace, operator)

    # Created first, sorted last by name: the listing is by age, not by name.
    create_incident(test_cluster, namespace, "zeta-oom", "zeta")
    older = approval(test_cluster, namespace, "zeta-oom-1")
    time.sleep(1.1)  # creation timestamps have whole seconds: the second Approval is strictly newer
    create_incident(test_cluster, namespace, "alpha-oom", "alpha")
    approval(test_cluster, namespace, "alpha-oom-1")
    wait_for_run(test_cluster, namespace, "alpha-oom-1", "WaitingApproval")

    listed = flywheel(test_cluster, "approvals", "-n", namespace, user=APPROVER, groups=(APPROVERS,))
    assert listed.returncode == 0, listed.stderr
    header, *rows = table_rows(listed.stdout)
    assert header == ["NAME", "RUN", "ACTION", "RISK", "ESCALATION", "AGE", "EXPIRES"]
    assert [row[0] for row in rows] == ["zeta-oom-1", "alpha-oom-1"]
    zeta = rows[0]
    assert zeta[1:4] == ["zeta-oom-1", "RolloutRestart Deployment/zeta", older["spec"]["riskLevel"]]
    assert zeta[4] == older["spec"].get("escalationLevel", "-")
    assert zeta[6].startswith(older["spec"]["expiresAt"].replace("+00:00", "Z")[:19]) and "(in " in zeta[6]

    as_json = flywheel(test_cluster, "approvals", "-n", namespace, "-o", "json", user=APPROVER, groups=(APPROVERS,))
    items = json.loads(as_json.stdout)["items"]
    assert [item["name"] for item in items] == ["zeta-oom-1", "alpha-oom-1"]
    assert items[0]["action"] == "RolloutRestart Deployment/zeta" and items[0]["namespace"] == namespace
    assert items[0]["remainingSeconds"] > 0 and items[0]["ageSeconds"] >= items[1]["ageSeconds"]

    everywhere = flywheel(test_cluster, "approvals", "-A")  # the admin of the kubeconfig, every namespace
    ours = [row for row in table_rows(everywhere.stdout) if row[0] in ("NAMESPACE", namespace)]
    assert ours[0][:2] == ["NAMESPACE", "NAME"]
    assert [row[1] for row in ours[1:]] == ["zeta-oom-1", "alpha-oom-1"]

    plugin = kubectl_plugin(test_cluster, "approvals", "-n", namespace, "--as", APPROVER, "--as-group", APPROVERS)
    assert plugin.returncode == 0, plugin.stderr
    assert [row[:5] for row in table_rows(plugin.stdout)] == [header[:5], *(row[:5] for row in rows)]

    # Refusals: one line, exit 1, the Approval untouched.
    line = refused_line(flywheel(test_cluster, "approve", "zeta-oom-1", "-n", namespace, "--reason", "mine",
                                 user=CREATOR, groups=(APPROVERS,)))
    assert line.startswith(f"error: approval {namespace}/zeta-oom-1: four eyes: ")
    assert f"'{CREATOR}' created or changed the Incident" in line
    line = refused_line(flywheel(test_cluster, "approve", "zeta-oom-1", "-n", namespace, "--reason", "looks ok",
                                 user="mallory", groups=(OUTSIDERS,)))
    assert line.startswith(f"error: approval {namespace}/zeta-oom-1: not an approver: user 'mallory'")
    line = refused_line(flywheel(test_cluster, "reject", "zeta-oom-1", "-n", namespace, "--reason", "no",
                                 user="eve"))
    assert line.startswith(f"error: approval {namespace}/zeta-oom-1: forbidden by RBAC: ")
    assert 'User "eve" cannot get resource "approvals"' in line
    line = refused_line(flywheel(test_cluster, "approve", "no-such-approval", "-n", namespace, "--reason", "x",
                                 user=APPROVER, groups=(APPROVERS,)))
    assert line == f"error: approval {namespace}/no-such-approval: not found"
    assert undecided(test_cluster, namespace, "zeta-oom-1")

    # The approver approves; the outcome is what Flywheel recorded from the API server's identity.
    approved = flywheel(test_cluster, "approve", "alpha-oom-1", "-n", namespace, "--reason", "known leak",
                        user=APPROVER, groups=(APPROVERS,))
    assert approved.returncode == 0, approved.stderr
    decided = approval_in_phase(test_cluster, namespace, "alpha-oom-1", "Approved")
    assert approved.stdout.strip() == (
        f"approval {namespace}/alpha-oom-1 approved by {APPROVER} at {decided['status']['decidedAt']}"
    )
    assert decided["spec"] == {**decided["spec"], "decision": "Approve", "reason": "known leak"}
    final = wait_for_run(test_cluster, namespace, "alpha-oom-1", *FINAL, timeout=60)
    assert final["state"] == "Succeeded", final
    assert steps(final, "approve")[0]["message"] == f"approved by {APPROVER}: known leak"

    line = refused_line(flywheel(test_cluster, "reject", "alpha-oom-1", "-n", namespace, "--reason", "too late",
                                 user="carol", groups=(APPROVERS,)))
    assert line == f"error: approval {namespace}/alpha-oom-1: already decided: Approve by {APPROVER} (phase Approved)"

    # Rejected through the kubectl plugin, impersonation flags passed through by kubectl.
    rejected = kubectl_plugin(test_cluster, "reject", "zeta-oom-1", "-n", namespace, "--reason", "fix the limit",
                              "--as", APPROVER, "--as-group", APPROVERS)
    assert rejected.returncode == 0, rejected.stderr
    assert rejected.stdout.startswith(f"approval {namespace}/zeta-oom-1 rejected by {APPROVER} at ")
    cancelled = wait_for_run(test_cluster, namespace, "zeta-oom-1", *FINAL, timeout=30)
    assert (cancelled["state"], cancelled["errorCode"]) == ("Cancelled", "E-APPR-REJECTED")

    nothing = flywheel(test_cluster, "approvals", "-n", namespace, user=APPROVER, groups=(APPROVERS,))
    assert nothing.stdout.strip() == "no Approvals wait for a decision"

    # The story of the approved Incident, from the API server, then with the history database.
    explained = flywheel(test_cluster, "explain", "incident", "alpha-oom", "-n", namespace,
                         user=APPROVER, groups=(APPROVERS,))
    assert explained.returncode == 0, explained.stderr
    story = explained.stdout
    assert f"Incident {namespace}/alpha-oom: Resolved (human_approved)" in story
    assert f"by {CREATOR}" in story.splitlines()[0]
    assert "Anomaly " in story and "24h 1" in story
    assert "source rules" in story and "action RolloutRestart Deployment/alpha" in story
    assert "alpha-oom-1: Succeeded  RolloutRestart Deployment/alpha" in story
    journal = story.split("alpha-oom-1: Succeeded")[1].split("Approvals:")[0]
    header, *entries = table_rows(journal)[1:]
    assert header == ["SEQ", "AT", "STEP", "RESULT", "MESSAGE"]
    assert [entry[2] for entry in entries] == [step["name"] for step in steps(final)]
    approve = next(entry for entry in entries if entry[2] == "approve")
    assert approve[3:] == ["Approved", f"approved by {APPROVER}: known leak"]
    assert f"alpha-oom-1: Approved by {APPROVER} at {decided['status']['decidedAt']}" in story
    assert "reason: known leak" in story
    assert "Resolved" in story.split("Conditions:")[1]
    assert "ApprovalRequested" in story.split("Events (latest 10):")[1]
    assert "History: not read" in story

    database = f"sqlite:///{tmp_path / 'flywheel.db'}"

    def with_history() -> str | None:
        result = flywheel(test_cluster, "explain", "incident", "alpha-oom", "-n", namespace,
                          "--database-url", database)
        return result.stdout if "approval approved: alpha-oom-1" in result.stdout else None

    recorded = wait_for(with_history, timeout=30, what="the approval in the history database")
    history = recorded.split("History (")[1]
    assert history.startswith("0 notifications recorded):")
    assert "approval requested: alpha-oom-1" in history and f"by {APPROVER}; known leak" in history

    missing = flywheel(test_cluster, "explain", "incident", "nope", "-n", namespace)
    assert refused_line(missing) == f"Error: incident {namespace}/nope: not found"


def test_an_expired_approval_is_refused_and_not_listed(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "queue", namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url, approval_timeout_seconds="5")
    ready(test_cluster, namespace, operator)
    create_incident(test_cluster, namespace, "queue-oom", "queue")
    approval(test_cluster, namespace, "queue-oom-1")
    expired = approval_in_phase(test_cluster, namespace, "queue-oom-1", "Expired")

    line = refused_line(flywheel(test_cluster, "approve", "queue-oom-1", "-n", namespace, "--reason", "now",
                                 user=APPROVER, groups=(APPROVERS,)))
    expires_at = expired["spec"]["expiresAt"].replace("+00:00", "Z")[:19] + "Z"
    assert line == (
        f"error: approval {namespace}/queue-oom-1: expired at {expires_at}, its Run timed out; nothing was written"
    )
    assert undecided(test_cluster, namespace, "queue-oom-1")
    listed = flywheel(test_cluster, "approvals", "-n", namespace, user=APPROVER, groups=(APPROVERS,))
    # The expired one is not listed; the Incident's next decision (the ladder after a Run that
    # timed out) may already wait for its own Approval.
    names = [row.split()[0] for row in listed.stdout.strip().splitlines()[1:]]
    assert listed.stdout.strip() == "no Approvals wait for a decision" or names == ["queue-oom-2"], listed.stdout


def test_without_webhooks_a_decision_is_refused_before_anything_is_written(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory
) -> None:
    create_deployment(test_cluster, "cart", namespace)
    start_operator(redis_url=clean_redis_url, webhook_mode="off", approver_groups=APPROVERS)
    ready(test_cluster, namespace, None)
    create_incident(test_cluster, namespace, "cart-oom", "cart")
    wait_for_run(test_cluster, namespace, "cart-oom-1", "WaitingApproval")
    approval(test_cluster, namespace, "cart-oom-1")

    line = refused_line(flywheel(test_cluster, "approve", "cart-oom-1", "-n", namespace, "--reason", "ok",
                                 user=APPROVER, groups=(APPROVERS,)))
    assert line.startswith(f"error: approval {namespace}/cart-oom-1: Flywheel's admission webhook did not stamp")
    assert "FLYWHEEL_WEBHOOK_MODE" in line and line.endswith("nothing was written")
    assert undecided(test_cluster, namespace, "cart-oom-1"), "the dry run wrote nothing; a decision stays possible"
    assert get(test_cluster, namespace, "runs.flywheel.dev", "cart-oom-1")["status"]["state"] == "WaitingApproval"
