"""Two operator replicas with Kopf peering: exactly one acts, the other takes over when it dies.

Scenario (one test, because every step depends on the previous one):
- the Kopf peering CRDs from manifests/base are applied; the first replica creates the
  KopfPeering object in the namespace itself (Kopf keeps a peering operator paused until it
  sees that object, and never creates one);
- two ``flywheel run --peering NAME --priority N`` processes share one Redis and one PostgreSQL
  history database; both keep a live record (lifetime 15 s) in the peering object;
- an OOM Incident on a real Deployment → only the priority-200 replica moves the Run
  (``run_transition`` log lines); the priority-100 replica logs nothing about it and its metrics
  publisher reports itself standby;
- the leader is SIGKILLed while the Run verifies the rollout, and the Run's last status write is
  rewound to ``Running`` (as if the leader died after acting but before storing that it did);
- the standby resumes once the leader's peering record expires, drives the same Run to
  Succeeded, and finds the Run's stamp on the Deployment instead of restarting it again:
  ``AlreadyApplied``, one revision, one ReplicaSet more, the restartedAt annotation and the
  generation unchanged, and the repair outcome counted once in Redis.

The takeover time (kill → the standby's "Resuming operations") is printed; it is bounded by the
peering lifetime (PEERING_LIFETIME_SECONDS), see docs/operations.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from flywheel.main import PEERING_LIFETIME_SECONDS
from tests.conftest import OperatorFactory
from tests.e2e.test_runs import (
    FINAL,
    apply_deployment,
    apply_incident,
    get,
    replica_sets,
    steps,
    wait_for_run,
)
from tests.harness.cluster import TestCluster
from tests.harness.operator import OperatorProcess
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

PEERING_CRDS = Path(__file__).resolve().parents[2] / "manifests" / "base" / "kopf-peering-crds.yaml"
PEERING_NAME = "flywheel-ha"
LEADER_PRIORITY = 200
STANDBY_PRIORITY = 100
# Kopf's own log lines when a paused operator takes over.
RESUMED_MARK = "Resuming operations after the pause"
# The metrics loop asks the peering objects whether this replica is active; a short interval
# makes the standby say so within the test.
METRICS_INTERVAL_SECONDS = "2"


def log_records(operator: OperatorProcess) -> list[dict[str, Any]]:
    """The operator's JSON log lines (the harness's own separator lines are not JSON)."""
    records = []
    for line in operator.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def transitions(operator: OperatorProcess, run: str) -> list[tuple[str, str]]:
    return [
        (record["from_state"], record["to_state"])
        for record in log_records(operator)
        if record.get("event") == "run_transition" and record.get("run") == run
    ]


def leadership_changes(operator: OperatorProcess) -> list[bool]:
    return [record["active"] for record in log_records(operator) if record.get("event") == "leadership_changed"]


def peer_records(cluster: TestCluster, namespace: str) -> dict[str, dict[str, Any]]:
    peering = cluster.kubectl_json("get", "kopfpeerings.kopf.dev", PEERING_NAME, "-n", namespace)
    return {peer: record for peer, record in (peering.get("status") or {}).items() if isinstance(record, dict)}


def install_peering_crds(cluster: TestCluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(PEERING_CRDS))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/kopfpeerings.kopf.dev", "crd/clusterkopfpeerings.kopf.dev",
    )


def migrate_history(database_url: str) -> None:
    """What an upgrade does before the replicas roll: `flywheel db upgrade`."""
    subprocess.run(
        [sys.executable, "-m", "flywheel", "db", "upgrade", "--database-url", database_url],
        check=True, capture_output=True, timeout=120,
    )


def test_one_replica_acts_and_the_standby_takes_over_without_repeating_the_action(
    test_cluster: TestCluster,
    namespace: str,
    clean_redis_url: str,
    postgres_url: str,
    start_operator: OperatorFactory,
) -> None:
    install_peering_crds(test_cluster)
    migrate_history(postgres_url)
    # Pods become available 15 s after they are ready: the Run stays in Verifying long enough
    # to kill the leader in the middle of it.
    apply_deployment(test_cluster, namespace, "payments", minReadySeconds=15)

    def replica(priority: int) -> OperatorProcess:
        return start_operator(
            clean_redis_url,
            postgres_url,
            run_args=("--peering", PEERING_NAME, "--priority", str(priority)),
            log_format="json",
            metrics_interval_seconds=METRICS_INTERVAL_SECONDS,
        )

    leader = replica(LEADER_PRIORITY)
    standby = replica(STANDBY_PRIORITY)

    # Both replicas keep a live record in the peering object, with the configured lifetime.
    records = wait_for(
        lambda: (found := peer_records(test_cluster, namespace)) and len(found) == 2 and found,
        timeout=30,
        what="two peers in the KopfPeering",
    )
    assert sorted(record["priority"] for record in records.values()) == [STANDBY_PRIORITY, LEADER_PRIORITY]
    assert {record["lifetime"] for record in records.values()} == {PEERING_LIFETIME_SECONDS}
    # The standby's metrics publisher knows it is not the active replica.
    wait_for(lambda: leadership_changes(standby) == [False], timeout=30, what="standby reports itself inactive")
    assert leadership_changes(leader) == []

    test_cluster.kubectl("rollout", "status", "deployment/payments", "-n", namespace, "--timeout=90s")
    apply_incident(test_cluster, namespace, "payments-oom", "payments")
    wait_for_run(test_cluster, namespace, "payments-oom-1", "Verifying", timeout=40)
    acted = get(test_cluster, namespace, "deployment", "payments")

    # Exactly one replica acted: the leader moved the Run, the standby did not touch it.
    assert transitions(leader, "payments-oom-1") == [("Pending", "Running"), ("Running", "Verifying")]
    assert transitions(standby, "payments-oom-1") == []
    restarted_at = acted["spec"]["template"]["metadata"]["annotations"]["flywheel.dev/restartedAt"]
    assert acted["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"

    killed_at = datetime.now(UTC)
    leader.kill()
    # As if the leader had died after acting but before storing "Verifying": rewind the status.
    # The standby is still paused here (the leader's record lives at least 5 more seconds).
    test_cluster.kubectl(
        "patch", "runs.flywheel.dev", "payments-oom-1", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": {"state": "Running"}}),
    )

    resumed = wait_for(
        lambda: next((r for r in log_records(standby) if RESUMED_MARK in str(r.get("event"))), None),
        timeout=PEERING_LIFETIME_SECONDS + 30,
        what="the standby resuming after the leader's peering record expired",
    )
    takeover_seconds = (datetime.fromisoformat(resumed["timestamp"]) - killed_at).total_seconds()
    print(f"takeover after SIGKILL: {takeover_seconds:.1f} s (peering lifetime {PEERING_LIFETIME_SECONDS} s)")

    status = wait_for_run(test_cluster, namespace, "payments-oom-1", *FINAL, timeout=60)
    assert status["state"] == "Succeeded", status
    # The standby found the leader's stamp on the Deployment and did not restart it again.
    assert [step["result"] for step in steps(status, "execute")] == ["Succeeded", "AlreadyApplied"]
    assert transitions(standby, "payments-oom-1")[-1] == ("Verifying", "Succeeded")
    after = get(test_cluster, namespace, "deployment", "payments")
    assert after["spec"]["template"]["metadata"]["annotations"]["flywheel.dev/restartedAt"] == restarted_at
    assert after["metadata"]["generation"] == acted["metadata"]["generation"]
    assert after["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert len(json.loads(after["metadata"]["annotations"]["flywheel.dev/actions"])) == 1
    assert len(replica_sets(test_cluster, namespace, "payments")) == 2
    # The standby's metrics publisher noticed that it is the active replica now.
    wait_for(lambda: leadership_changes(standby) == [False, True], timeout=30, what="standby reports itself active")

    # The outcome is counted once, by the replica that finished the Run.
    incident = wait_for(
        lambda: (s := get(test_cluster, namespace, "incident", "payments-oom").get("status") or {}).get("phase")
        == "Resolved" and s,
        timeout=30,
        what="incident resolved",
    )
    client = redis.Redis.from_url(clean_redis_url, decode_responses=True)
    try:
        outcomes = client.hgetall(f"{namespace}:anomaly:repair_outcomes:{incident['anomaly']['key']}")
    finally:
        client.close()
    assert outcomes == {"RolloutRestart": "1"}
    # The killed leader's record is cleaned out of the peering object by the survivor.
    wait_for(
        lambda: [r["priority"] for r in peer_records(test_cluster, namespace).values()] == [STANDBY_PRIORITY],
        timeout=30,
        what="only the standby left in the KopfPeering",
    )
