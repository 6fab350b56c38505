"""Finished Incidents leave the cluster after FLYWHEEL_FINISHED_TTL_SECONDS, never before the history holds them.

On the real control plane (its garbage collector deletes what the Incident owns), with a real
PostgreSQL history and a TTL of a few seconds:
- an Auto Incident and an approved one are resolved while the history database refuses
  connections: past the TTL they stay, with their Runs, Approval and claim Leases, pass after
  pass (the retention loop says the history holds them back);
- the database back, they disappear — Incident, Runs, Approval, Lease — and the history keeps
  every row of them;
- an active Incident (its Run waiting for an approval nobody gives) stays throughout.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select

from flywheel.cli import cli
from flywheel.stores.claims import lease_name
from tests.conftest import OperatorFactory
from tests.e2e.test_approvals import (
    APPROVER,
    APPROVERS,
    approval,
    approval_in_phase,
    create_incident,
    decide,
    start_with_webhooks,
    wait_for_webhooks,
)
from tests.e2e.test_history import switch  # noqa: F401  (the fixture)
from tests.e2e.test_runs import FINAL, QUIET, apply_incident, get, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.history_rows import APPROVALS, INCIDENTS, RUNS
from tests.harness.postgres import PostgresSwitch
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

TTL_SECONDS = "3"
HELD_BACK = "retention_pass"


def exists(cluster: TestCluster, namespace: str, kind: str, name: str) -> bool:
    found = cluster.kubectl("get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "name", check=False)
    return bool(found.stdout.strip())


def resolved(cluster: TestCluster, namespace: str, name: str) -> dict[str, Any]:
    return wait_for(
        lambda: (body := get(cluster, namespace, "incident", name)).get("status", {}).get("phase") == "Resolved"
        and body,
        timeout=60, what=f"{name} resolved",
    )


def test_finished_incidents_go_after_the_ttl_once_the_history_holds_them_and_active_ones_stay(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, postgres_url: str,
    switch: PostgresSwitch,  # noqa: F811
    start_operator: OperatorFactory,
) -> None:
    for name in ("cart", "checkout", "search"):
        create_deployment(test_cluster, name, namespace)
    upgrade = CliRunner().invoke(cli, ["db", "upgrade", "--database-url", postgres_url])
    assert upgrade.exit_code == 0, upgrade.output
    operator = start_with_webhooks(
        start_operator, clean_redis_url, database_url=postgres_url, finished_ttl_seconds=TTL_SECONDS,
        retention_interval_seconds="1", **QUIET,
    )
    wait_for_webhooks(test_cluster, namespace, operator)
    create_incident(test_cluster, namespace, "search-oom", "search")  # stays active: nobody decides
    wait_for_run(test_cluster, namespace, "search-oom-1", "WaitingApproval")

    switch.refuse_connections()
    apply_incident(test_cluster, namespace, "cart-oom", "cart")
    create_incident(test_cluster, namespace, "checkout-oom", "checkout")
    wait_for_run(test_cluster, namespace, "checkout-oom-1", "WaitingApproval")
    approval(test_cluster, namespace, "checkout-oom-1")
    approval_in_phase(test_cluster, namespace, "checkout-oom-1", "Pending")
    decide(test_cluster, namespace, "checkout-oom-1", "Approve", "known OOM", APPROVER, APPROVERS)
    for run in ("cart-oom-1", "checkout-oom-1"):
        assert wait_for_run(test_cluster, namespace, run, *FINAL, timeout=90)["state"] == "Succeeded"
    finished = {name: resolved(test_cluster, namespace, name) for name in ("cart-oom", "checkout-oom")}
    leases = {name: lease_name(body["status"]["anomaly"]["key"]) for name, body in finished.items()}
    assert all(exists(test_cluster, namespace, "lease", lease) for lease in leases.values())

    # Past the TTL, pass after pass, the history (down) holds them back.
    passes_before = operator.log().count(HELD_BACK)
    wait_for(lambda: operator.log().count(HELD_BACK) >= passes_before + 5, timeout=60,
             what="retention passes held back by the history")
    for name in finished:
        assert exists(test_cluster, namespace, "incident", name), f"{name} deleted before the history held it"
        assert exists(test_cluster, namespace, "runs.flywheel.dev", f"{name}-1")
        assert exists(test_cluster, namespace, "lease", leases[name])
    assert exists(test_cluster, namespace, "approval", "checkout-oom-1")

    switch.accept_connections()
    gone = [("incident", name) for name in finished] + [("runs.flywheel.dev", f"{name}-1") for name in finished] + [
        ("approval", "checkout-oom-1")] + [("lease", lease) for lease in leases.values()]
    wait_for(lambda: not any(exists(test_cluster, namespace, kind, name) for kind, name in gone), timeout=120,
             what="the finished Incidents and everything they owned deleted")
    assert "finished_incident_deleted" in operator.log()

    assert exists(test_cluster, namespace, "incident", "search-oom"), "an active Incident stays"
    assert exists(test_cluster, namespace, "runs.flywheel.dev", "search-oom-1")
    assert exists(test_cluster, namespace, "approval", "search-oom-1")

    engine = create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            incidents = set(connection.execute(select(INCIDENTS.c.name)).scalars())
            runs = dict(connection.execute(select(RUNS.c.name, RUNS.c.state)).all())
            approvals = dict(connection.execute(select(APPROVALS.c.name, APPROVALS.c.phase)).all())
    finally:
        engine.dispose()
    assert incidents == {"cart-oom", "checkout-oom", "search-oom"}, "the history keeps everything"
    assert (runs["cart-oom-1"], runs["checkout-oom-1"]) == ("Succeeded", "Succeeded")
    assert approvals["checkout-oom-1"] == "Approved"
