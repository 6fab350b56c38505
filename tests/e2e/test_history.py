"""The durable history of a Run, read back with the reviewer CLI, survives a database outage.

Scenario: the operator writes history to a real PostgreSQL database; the database
refuses connections while a Run executes (ALLOW_CONNECTIONS false, backends killed);
the Run finishes anyway (the resources are the source of truth); once the database
accepts connections again, `flywheel history` lists the Run as Succeeded and
`flywheel timeline` prints its steps in order, and a knowledge entry exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from flywheel.cli import cli
from tests.conftest import OperatorFactory
from tests.e2e.test_runs import FINAL, QUIET, apply_incident, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
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
