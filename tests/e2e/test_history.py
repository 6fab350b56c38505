"""The durable history of a Run, read back with the reviewer CLI, survives a database outage.

Scenarios:
- the operator writes history to a real PostgreSQL database; the database refuses
  connections while a Run executes (ALLOW_CONNECTIONS false, backends killed); the Run
  finishes anyway (the resources are the source of truth); once the database accepts
  connections again, `flywheel history` lists the Run as Succeeded and `flywheel timeline`
  prints its steps in order, and a knowledge entry exists;
- its pair, outage *plus restart*: during the outage an Auto Run and an approved Run finish,
  the operator is killed with SIGKILL and started again while the database is still down, then
  the database comes back: every incident, run, step, approval, audit event (the approval's
  request and decision, with who decided), repair execution and knowledge entry is stored
  exactly once — the records from the spool in FLYWHEEL_HISTORY_SPOOL_DIR, the projections
  made again from the resources.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, func, select, text

from flywheel.cli import cli
from flywheel.stores.history.tables import AuditEventRow, RunStepRow
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
from tests.e2e.test_runs import FINAL, QUIET, apply_incident, get, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.history_rows import APPROVALS, EXECUTIONS, INCIDENTS, KNOWLEDGE, RUNS
from tests.harness.postgres import PostgresSwitch
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture()
def switch(postgres_url: str) -> Iterator[PostgresSwitch]:
    switch = PostgresSwitch(postgres_url)
    yield switch
    switch.close()


def history_json(database_url: str, *args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(cli, [*args, "--database-url", database_url, "-o", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def test_history_is_delayed_by_a_database_outage_never_lost(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, postgres_url: str,
    switch: PostgresSwitch, start_operator: OperatorFactory,
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    upgrade = CliRunner().invoke(cli, ["db", "upgrade", "--database-url", postgres_url])
    assert upgrade.exit_code == 0, upgrade.output
    start_operator(**QUIET, redis_url=clean_redis_url, database_url=postgres_url)
    switch.refuse_connections()

    apply_incident(test_cluster, namespace, "checkout-oom", "checkout")
    status = wait_for_run(test_cluster, namespace, "checkout-oom-1", *FINAL)
    assert status["state"] == "Succeeded", "the database outage must not hold the Run up"

    switch.accept_connections()
    page = wait_for(
        lambda: (p := history_json(postgres_url, "history", "-n", namespace))["items"]
        and p["items"][0]["state"] == "Succeeded" and p,
        timeout=90, what="the Run in the history after the outage",
    )
    assert [run["name"] for run in page["items"]] == ["checkout-oom-1"]

    timeline = history_json(postgres_url, "timeline", "checkout-oom-1", "-n", namespace)
    times = [datetime.fromisoformat(entry["at"]) for entry in timeline["timeline"]]
    assert times == sorted(times), "the timeline is in time order"
    titles = " ".join(json.dumps(entry) for entry in timeline["timeline"])
    for step in ("admit", "execute", "verify"):
        assert step in titles

    engine = create_engine(postgres_url)
    knowledge = wait_for(lambda: _knowledge(engine, namespace), timeout=60, what="knowledge entry")
    engine.dispose()
    assert knowledge["disposition"] == "auto_repair"


def _knowledge(engine, namespace: str) -> dict | None:  # type: ignore[no-untyped-def, type-arg]
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT * FROM knowledge_entries WHERE namespace = :ns"), {"ns": namespace}
        ).mappings().first()
        return dict(row) if row else None


def _rows(engine: Engine) -> dict[str, object]:
    """What the history holds, per table: the keys of every row (duplicates would show twice)."""
    with engine.connect() as connection:
        def keys(*columns: object) -> list[tuple[object, ...]]:
            return sorted(tuple(row) for row in connection.execute(select(*columns)))  # type: ignore[call-overload]

        return {
            "incidents": keys(INCIDENTS.c.name),
            "runs": keys(RUNS.c.name, RUNS.c.state),
            "steps": connection.execute(
                select(RUNS.c.name, func.count()).join(RunStepRow, RunStepRow.run_uid == RUNS.c.uid)
                .group_by(RUNS.c.name).order_by(RUNS.c.name)
            ).all(),
            "approvals": keys(APPROVALS.c.name, APPROVALS.c.phase, APPROVALS.c.decided_by),
            "audit": keys(AuditEventRow.kind, AuditEventRow.actor, AuditEventRow.outcome),
            "executions": keys(EXECUTIONS.c.run_uid, EXECUTIONS.c.attempt, EXECUTIONS.c.succeeded),
            "knowledge": keys(KNOWLEDGE.c.incident_name, KNOWLEDGE.c.disposition),
        }


def test_history_survives_a_database_outage_and_an_operator_killed_during_it(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, postgres_url: str,
    switch: PostgresSwitch, start_operator: OperatorFactory, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    create_deployment(test_cluster, "cart", namespace)
    upgrade = CliRunner().invoke(cli, ["db", "upgrade", "--database-url", postgres_url])
    assert upgrade.exit_code == 0, upgrade.output
    spool = tmp_path_factory.mktemp("spool")
    operator = start_with_webhooks(start_operator, clean_redis_url, database_url=postgres_url,
                                   history_spool_dir=str(spool), **QUIET)
    wait_for_webhooks(test_cluster, namespace, operator)
    switch.refuse_connections()

    apply_incident(test_cluster, namespace, "cart-oom", "cart")
    create_incident(test_cluster, namespace, "checkout-oom", "checkout")
    wait_for_run(test_cluster, namespace, "checkout-oom-1", "WaitingApproval")
    approval(test_cluster, namespace, "checkout-oom-1")
    approval_in_phase(test_cluster, namespace, "checkout-oom-1", "Pending")
    decide(test_cluster, namespace, "checkout-oom-1", "Approve", "known OOM", APPROVER, APPROVERS)
    finished = {name: wait_for_run(test_cluster, namespace, name, *FINAL, timeout=90)
                for name in ("cart-oom-1", "checkout-oom-1")}
    assert {status["state"] for status in finished.values()} == {"Succeeded"}, finished
    for name in ("cart-oom", "checkout-oom"):
        wait_for(lambda name=name: get(test_cluster, namespace, "incident", name).get("status", {}).get("phase")
                 == "Resolved", timeout=30, what=f"{name} resolved")
    assert "history_database_unavailable" in operator.log(), "the outage was real"

    operator.kill()
    operator.start()  # the database still refuses connections
    switch.accept_connections()

    runs = {name: get(test_cluster, namespace, "runs.flywheel.dev", name) for name in finished}
    expected = {
        "incidents": [("cart-oom",), ("checkout-oom",)],
        "runs": [("cart-oom-1", "Succeeded"), ("checkout-oom-1", "Succeeded")],
        "steps": [(name, len(runs[name]["status"]["steps"])) for name in sorted(runs)],
        "approvals": [("checkout-oom-1", "Approved", APPROVER)],
        "audit": sorted([("approval.decided", APPROVER, "Approved"), ("approval.requested", None, "Pending")]),
        "executions": sorted((run["metadata"]["uid"], 1, True) for run in runs.values()),
        "knowledge": [("cart-oom", "auto_repair"), ("checkout-oom", "human_approved")],
    }
    engine = create_engine(postgres_url)
    try:
        stored = wait_for(lambda: (rows := _rows(engine)) == expected and rows, timeout=90,
                          what="every history row, once")
    finally:
        engine.dispose()
    assert stored == expected
