"""Chaos: the operator SIGKILLed 50 times at random moments while 63 Runs go on; PostgreSQL and
Redis each restarted mid-run. Nothing is done twice, nothing is left hanging, nothing is lost.

The real operator runs with a real PostgreSQL history (and its spool directory), a Redis this
test may restart and the built-in catalogue (rollbacks trusted, as in test_runs). Twenty
Deployments per action type each get one Auto Incident — an OOM (RolloutRestart), a latency
alert (Scale 1 → 3), an error-rate alert (RolloutUndo from revision 2, image 2.0, to revision 1)
— created a few at a time between kills, so the kills land across every phase of the Runs. Three
more Incidents (another service, so another anomaly) name a Deployment that was just remediated:
the circuit breaker (one remediation per target) makes their Runs ask for an Approval that nobody
gives, so the Approvals expire and the history gets audit events too; each such Incident then
climbs the ladder (a next decision after a Run that did not succeed, three in all), and its later
Runs wait for approvals that expire as well.

Each of the 50 cycles starts the operator and kills it with SIGKILL, a quarter of the time at a
random moment of its start-up, otherwise at a random moment after it is ready. PostgreSQL is
restarted for real in cycle 15 and Redis (stopped, then started on the same port) in cycle 30,
both while the operator runs. Then the operator runs undisturbed until every Run has finished.

The randomness is seeded (``FLYWHEEL_CHAOS_SEED`` repeats a run); the seed is printed.

Asserted:
- no double action: each workload's action log holds one stamp per attempt that changed it (a
  rollback once per Run), and its generation moved exactly that often;
- no Run left non-terminal: every Run final with its outcome recorded, every ladder done (the
  last Run Succeeded, or three decisions), Runs numbered 1..n per Incident;
- no history row lost or duplicated: the history's runs, incidents and approvals are exactly the
  cluster's; its repair executions exactly one per attempt the Runs made, with their results; its
  audit events exactly the Approvals' (requested, and expired with timeout_ignored, or withdrawn);
- the success rates the operator publishes (``flywheel_repair_success_rate`` per action) equal
  what the Runs did.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pytest_redis.executor import RedisExecutor
from sqlalchemy import create_engine, text

from tests.conftest import OperatorFactory
from tests.e2e.test_kill_mid_run import trusted_rollbacks
from tests.e2e.test_runs import FINAL
from tests.e2e.workloads import deployment_manifest
from tests.harness.cluster import TestCluster
from tests.harness.operator import OperatorProcess
from tests.harness.ports import free_port
from tests.harness.postgres import PostgresServer
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

KILLS = 50
PER_ACTION = 20
POSTGRES_RESTART_CYCLE = 15
REDIS_RESTART_CYCLE = 30
# Incidents are created during the first cycles, a few at a time.
CREATION_CYCLES = 36
ALERTS = {
    "restart": ("KubePodOOMKilled", "OOMKilled", "RolloutRestart"),
    "scale": ("HighLatencyP99", "Latency", "Scale"),
    "undo": ("HighErrorRate", "5xx", "RolloutUndo"),
}
BREAKER_EXTRAS = 3
MAX_DECISIONS = 3  # the ladder's default (FLYWHEEL_MAX_DECISIONS_PER_INCIDENT)
# The audit events an Approval leaves, by the phase it ended in: expired (nobody decided in time:
# the timeout_ignored disposition too), or withdrawn when its Run's own deadline came first.
AUDITED = {
    "Expired": ("approval.requested", "approval.expired", "disposition.timeout_ignored"),
    "Invalid": ("approval.requested", "approval.invalid"),
}


def incident(name: str, target: str, kind: str, service: str | None = None) -> dict[str, Any]:
    alert, error, _ = ALERTS[kind]
    return {
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "Incident", "metadata": {"name": name},
        "spec": {
            "alertName": alert, "service": service or target, "errorType": error, "severity": "P2",
            "source": "alertmanager", "summary": f"{target} is unwell",
            "targetRef": {"kind": "Deployment", "name": target},
        },
    }


def apply_list(cluster: TestCluster, namespace: str, items: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def items(cluster: TestCluster, namespace: str, kind: str) -> list[dict[str, Any]]:
    return cluster.kubectl_json("get", kind, "-n", namespace)["items"]  # type: ignore[no-any-return]


def runs_per_incident(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(run["spec"]["incidentRef"]["name"], []).append(run)
    return grouped


def outcome_recorded(run: dict[str, Any]) -> bool:
    conditions = (run.get("status") or {}).get("conditions") or []
    return any(c["type"] == "OutcomeRecorded" and c["status"] == "True" for c in conditions)


def metric_values(url: str, name: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        lines = answer.read().decode().splitlines()
    values = {}
    for line in lines:
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1:].rsplit("} ", 1)
            action = dict(part.split("=", 1) for part in labels.split(",")).get("action", "").strip('"')
            values[action] = float(value)
    return values


@pytest.mark.timeout(600)  # 50 operator starts and kills, then every Run to its end, on 2 shared cores
def test_chaos_kills_and_restarts_lose_nothing_and_do_nothing_twice(
    test_cluster: TestCluster,
    namespace: str,
    start_operator: OperatorFactory,
    own_redis: RedisExecutor,
    postgres_server: PostgresServer,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("FLYWHEEL_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed: {seed} (FLYWHEEL_CHAOS_SEED={seed} repeats it)")
    chance = random.Random(seed)
    began = time.monotonic()

    # -- the workloads ---------------------------------------------------------------------
    names = {kind: [f"{kind}-{index:02d}" for index in range(PER_ACTION)] for kind in ALERTS}
    deployments = [json.loads(deployment_manifest(name, namespace)) for group in names.values() for name in group]
    apply_list(test_cluster, namespace, deployments)
    every = [f"deployment/{name}" for group in names.values() for name in group]
    test_cluster.kubectl("rollout", "status", *every, "-n", namespace, "--timeout=120s")
    undo = [f"deployment/{name}" for name in names["undo"]]
    test_cluster.kubectl("set", "image", *undo, "app=registry.example/flywheel-sample:2.0", "-n", namespace)
    test_cluster.kubectl("rollout", "status", *undo, "-n", namespace, "--timeout=120s")
    generations = {d["metadata"]["name"]: d["metadata"]["generation"] for d in items(test_cluster, namespace, "deployments")}

    incidents = [incident(f"{name}-inc", name, kind) for kind, group in names.items() for name in group]
    chance.shuffle(incidents)
    extras = [incident(f"extra-{index}", names["restart"][index], "restart", service=f"sidecar-{index}")
              for index in range(BREAKER_EXTRAS)]
    # Each extra comes a few cycles after the Incident of its target.
    position = {body["spec"]["targetRef"]["name"]: index for index, body in enumerate(incidents)}
    batches: list[list[dict[str, Any]]] = [[] for _ in range(CREATION_CYCLES + 6)]
    per_cycle = -(-len(incidents) // CREATION_CYCLES)
    for index, body in enumerate(incidents):
        batches[index // per_cycle].append(body)
    for body in extras:
        batches[position[body["spec"]["targetRef"]["name"]] // per_cycle + 4].append(body)

    # -- the operator, killed again and again -------------------------------------------------
    metrics_port = free_port()
    redis_url = f"redis://127.0.0.1:{own_redis.port}/0"
    operator: OperatorProcess = start_operator(
        redis_url=redis_url,
        database_url=postgres_url,
        history_spool_dir=str(tmp_path / "spool"),
        rules_file=trusted_rollbacks(tmp_path),
        run_max_concurrent_per_namespace="100",
        circuit_breaker_max_remediations="1",
        approval_timeout_seconds="5",
        metrics_port=str(metrics_port),
        metrics_bind_address="127.0.0.1",
        metrics_interval_seconds="2",
    )
    operator.kill()
    for cycle in range(KILLS):
        if cycle < len(batches) and batches[cycle]:
            apply_list(test_cluster, namespace, batches[cycle])
        operator.spawn()
        if chance.random() < 0.25:
            time.sleep(chance.uniform(0.2, 2.5))  # somewhere in its start-up
        else:
            operator.wait_ready()
            if cycle == POSTGRES_RESTART_CYCLE:
                postgres_server.restart()
            if cycle == REDIS_RESTART_CYCLE:
                own_redis.stop()
                time.sleep(chance.uniform(0.5, 2.0))
                own_redis.start()
            time.sleep(chance.uniform(0.1, 2.0))
        operator.kill()
    for batch in batches[KILLS:]:
        if batch:
            apply_list(test_cluster, namespace, batch)
    chaos_seconds = time.monotonic() - began
    operator.start()
    expected_incidents = {body["metadata"]["name"] for body in incidents + extras}

    # -- every Run ends -------------------------------------------------------------------
    # A Run that did not succeed gives its Incident the next decision (the ladder, SPEC §2), up
    # to MAX_DECISIONS Runs; the later ones wait for an approval nobody gives, and time out.
    unfinished: list[str] = []

    def ladder_done(its: list[dict[str, Any]]) -> bool:
        last = max(its, key=lambda r: int(r["metadata"]["name"].rsplit("-", 1)[1]))
        return (last.get("status") or {}).get("state") == "Succeeded" or len(its) == MAX_DECISIONS

    def all_finished() -> list[dict[str, Any]] | None:
        runs = items(test_cluster, namespace, "runs.flywheel.dev")
        pending = [r for r in runs if not ((r.get("status") or {}).get("state") in FINAL and outcome_recorded(r))]
        per_incident = runs_per_incident(runs)
        climbing = sorted(name for name, its in per_incident.items() if not ladder_done(its))
        unfinished[:] = [
            f"{r['metadata']['name']}: {(r.get('status') or {}).get('state')} "
            f"{[(c['type'], c['status'], c['reason']) for c in (r.get('status') or {}).get('conditions') or []]}"
            for r in pending
        ] + [f"{name}: ladder not done" for name in climbing] + [
            f"{name}: no Run" for name in expected_incidents - set(per_incident)
        ]
        return runs if not unfinished else None

    try:
        runs = wait_for(all_finished, timeout=180, what="every Run final with its outcome recorded, every ladder done")
    except AssertionError:
        print(f"{len(unfinished)} unfinished:\n" + "\n".join(unfinished))
        raise
    for name, its in runs_per_incident(runs).items():
        numbers = sorted(int(r["metadata"]["name"].rsplit("-", 1)[1]) for r in its)
        assert numbers == list(range(1, len(its) + 1)) and len(its) <= MAX_DECISIONS, (name, numbers)
        assert all(r["status"]["state"] != "Succeeded" for r in its if int(r["metadata"]["name"].rsplit("-", 1)[1])
                   < len(its)), (name, "a next decision only after a Run that did not succeed")
    assert all(len(runs_per_incident(runs)[body["metadata"]["name"]]) == MAX_DECISIONS for body in extras), (
        "nobody approves the extras: every decision of the ladder timed out"
    )
    states = Counter(run["status"]["state"] for run in runs)
    print(f"chaos: {KILLS} kills in {chaos_seconds:.0f} s, {operator.starts} starts; Runs {dict(states)}")
    by_target: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_target.setdefault(run["spec"]["action"]["target"]["name"], []).append(run)

    # -- no double action ---------------------------------------------------------------------
    def changes(run: dict[str, Any]) -> int:
        """The workload changes a Run made: one per attempt, a rollback once."""
        status = run["status"]
        if not status.get("startedAt"):
            return 0
        return min(status.get("attempt") or 0, 1) if run["spec"]["action"]["type"] == "RolloutUndo" else (
            status.get("attempt") or 0
        )

    for deployment in items(test_cluster, namespace, "deployments"):
        name = deployment["metadata"]["name"]
        annotations = deployment["metadata"].get("annotations") or {}
        stamps = json.loads(annotations.get("flywheel.dev/actions", "[]"))
        made = sum(changes(run) for run in by_target.get(name, []))
        keys = [(stamp["run"], stamp["attempt"]) for stamp in stamps]
        assert len(keys) == len(set(keys)) == made, (name, stamps, made)
        assert deployment["metadata"]["generation"] == generations[name] + made, (name, "generation")
        if name.startswith("scale-") and made:
            assert deployment["spec"]["replicas"] == 3
        if name.startswith("undo-") and made:
            image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
            assert image.endswith(":1.0"), (name, image)
            assert annotations["deployment.kubernetes.io/revision"] == "3", name

    # -- no history row lost or duplicated ------------------------------------------------------
    approvals = items(test_cluster, namespace, "approvals.flywheel.dev")
    assert sorted(a["metadata"]["name"] for a in approvals) == sorted(
        r["metadata"]["name"] for r in runs if r["status"].get("approvalRef")
    ), "one Approval per Run that waited for one (the breaker's or the ladder's)"
    expected = {
        "runs": {(r["metadata"]["uid"], r["status"]["state"]) for r in runs},
        "incidents": {i["metadata"]["uid"] for i in items(test_cluster, namespace, "incidents.flywheel.dev")},
        "approvals": {a["metadata"]["uid"] for a in approvals},
        "executions": {
            (r["metadata"]["uid"], attempt, r["spec"]["action"]["type"],
             r["status"]["state"] == "Succeeded" and attempt == r["status"]["attempt"])
            for r in runs if r["status"].get("startedAt") for attempt in range(1, (r["status"].get("attempt") or 0) + 1)
        },
        "audit": {f"{a['metadata']['uid']}:{kind}" for a in approvals for kind in AUDITED[a["status"]["phase"]]},
    }
    engine = create_engine(postgres_url)

    def history() -> dict[str, Any]:
        with engine.connect() as db:
            return {
                "runs": {tuple(row) for row in db.execute(text("SELECT uid, state FROM runs WHERE namespace = :ns"),
                                                           {"ns": namespace})},
                "incidents": {row[0] for row in db.execute(text("SELECT uid FROM incidents WHERE namespace = :ns"),
                                                            {"ns": namespace})},
                "approvals": {row[0] for row in db.execute(text("SELECT uid FROM approvals WHERE namespace = :ns"),
                                                            {"ns": namespace})},
                "executions": {tuple(row) for row in db.execute(text(
                    "SELECT run_uid, attempt, action, succeeded FROM repair_executions WHERE namespace = :ns"),
                    {"ns": namespace})},
                "audit": {row[0] for row in db.execute(text("SELECT event_id FROM audit_events WHERE namespace = :ns"),
                                                       {"ns": namespace})},
            }

    try:
        stored = wait_for(lambda: (h := history()) == expected and h, timeout=60, what="the history complete")
    except AssertionError:
        stored = history()
        missing = {key: expected[key] - stored[key] for key in expected if expected[key] - stored[key]}
        extra = {key: stored[key] - expected[key] for key in expected if stored[key] - expected[key]}
        raise AssertionError(f"history differs: missing {missing}, unexpected {extra}") from None
    finally:
        engine.dispose()
    assert len(stored["executions"]) >= 3 * PER_ACTION

    # -- the success rates are what the Runs did --------------------------------------------------
    tallies: dict[str, list[int]] = {}
    for _, _, action, succeeded in expected["executions"]:
        tally = tallies.setdefault(action, [0, 0])
        tally[0] += 1
        tally[1] += int(succeeded)
    rates = {action: successes / executions for action, (executions, successes) in tallies.items()}
    assert set(rates) == {"RolloutRestart", "Scale", "RolloutUndo"}
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    published = wait_for(
        lambda: (values := metric_values(metrics_url, "flywheel_repair_success_rate"))
        and all(abs(values.get(action, -1) - rate) < 1e-9 for action, rate in rates.items()) and values,
        timeout=30, what=f"flywheel_repair_success_rate equal to {rates}",
    )
    print(f"chaos: success rates {published}; {time.monotonic() - began:.0f} s in all")
