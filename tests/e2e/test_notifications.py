"""Notifications on the real control plane, delivered to a real HTTP receiver (aiohttp).

Scenario matrix:
- an approval round trip (RequireApproval, approved by an approver through the admission
  webhooks): the receiver gets exactly one ``approval_requested`` (the approve command, the
  expiry, the Run) and exactly one ``run_finished`` (state Succeeded, no error code); both are
  recorded Delivered in the history, and ``flywheel timeline`` and ``flywheel explain incident``
  show them;
- a receiver that answers 503 twice, then 200: the Run's ``run_finished`` is accepted once, on
  the third attempt, and recorded Delivered with 3 attempts; only the selected kind is sent
  (``FLYWHEEL_NOTIFY_EVENTS=run_finished``);
- a receiver that always answers 500: the delivery is given up after the retries and recorded
  Failed with the last error, and the timeline says so.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import OperatorFactory
from tests.e2e.test_approvals import (
    APPROVER,
    APPROVERS,
    approval,
    create_incident,
    decide,
    start_with_webhooks,
    wait_for_webhooks,
)
from tests.e2e.test_cli_approvals import flywheel
from tests.e2e.test_runs import get, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

FINAL = ("Succeeded", "Failed", "Cancelled", "TimedOut")


class Receiver:
    """An aiohttp webhook receiver on loopback, in a thread of its own, answering scripted statuses."""

    def __init__(self, statuses: list[int] | None = None, otherwise: int = 200) -> None:
        self.statuses = list(statuses or [])
        self.otherwise = otherwise
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        ready = threading.Event()
        self.url = ""

        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            with self._lock:
                self.bodies.append(body)
                status = self.statuses.pop(0) if self.statuses else self.otherwise
            return web.Response(status=status, text="ok" if status < 300 else "unavailable")

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/hook", handle)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}/hook"
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "receiver did not start"

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for body in self.bodies if body["kind"] == kind]

    def close(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()  # its self-pipe sockets, else a ResourceWarning


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.close()


def deliveries(database: Path, kind: str | None = None) -> list[dict[str, Any]]:
    if not database.exists():
        return []
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        try:
            rows = connection.execute(
                "SELECT delivery_id, kind, outcome, attempts, error, run_uid, channel FROM notification_deliveries"
            ).fetchall()
        except sqlite3.OperationalError:  # not migrated yet
            return []
    return [dict(row) for row in rows if kind is None or row["kind"] == kind]


def create_auto_incident(cluster: TestCluster, namespace: str, name: str, target: str) -> None:
    manifest = {
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "Incident", "metadata": {"name": name},
        "spec": {
            "alertName": "KubePodCrashLooping", "service": target, "errorType": "CrashLoopBackOff",
            "severity": "P3", "source": "manual", "summary": f"{target} is crash looping",
            "targetRef": {"kind": "Deployment", "name": target}, "remediation": {"mode": "Auto"},
        },
    }
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def test_an_approval_round_trip_notifies_each_step_once_and_the_history_shows_it(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory,
    tmp_path: Path, receivers: list[Receiver],
) -> None:
    receiver = Receiver()
    receivers.append(receiver)
    create_deployment(test_cluster, "checkout", namespace)
    operator = start_with_webhooks(start_operator, clean_redis_url, notify_webhook_url=receiver.url)
    wait_for_webhooks(test_cluster, namespace, operator)

    create_incident(test_cluster, namespace, "checkout-oom", "checkout")
    wait_for_run(test_cluster, namespace, "checkout-oom-1", "WaitingApproval")
    proposal = approval(test_cluster, namespace, "checkout-oom-1")
    run = get(test_cluster, namespace, "runs.flywheel.dev", "checkout-oom-1")
    (requested,) = wait_for(lambda: receiver.of_kind("approval_requested"), timeout=30, what="approval_requested")
    details = requested["details"]
    assert requested["reason"] == "ApprovalRequested"
    assert details["approveCommand"] == f"kubectl flywheel approve checkout-oom-1 -n {namespace} --reason '<why>'"
    assert details["expiresAt"] == proposal["spec"]["expiresAt"]
    assert (details["run"], details["runUid"]) == ("checkout-oom-1", run["metadata"]["uid"])
    assert details["action"] == "RolloutRestart" and details["target"] == "Deployment/checkout"
    assert "kubectl flywheel approve checkout-oom-1" in requested["message"]

    decide(test_cluster, namespace, "checkout-oom-1", "Approve", "known OOM", APPROVER, APPROVERS)
    final = wait_for_run(test_cluster, namespace, "checkout-oom-1", *FINAL, timeout=60)
    assert final["state"] == "Succeeded", final

    database = tmp_path / "flywheel.db"
    def both_recorded() -> list[dict[str, Any]] | None:
        rows = deliveries(database)
        kinds = {row["kind"] for row in rows}
        return rows if {"approval_requested", "run_finished"} <= kinds else None

    recorded = wait_for(both_recorded, timeout=30, what="both deliveries recorded")
    # Both are on record, so both were handled: nothing else of these kinds is on its way.
    (finished,) = receiver.of_kind("run_finished")
    assert len(receiver.of_kind("approval_requested")) == 1
    assert finished["reason"] == "RunSucceeded"
    assert finished["details"]["state"] == "Succeeded" and finished["details"]["errorCode"] is None
    assert finished["details"]["runUid"] == run["metadata"]["uid"]
    mine = {row["kind"]: row for row in recorded if row["kind"] in ("approval_requested", "run_finished")}
    assert {row["outcome"] for row in mine.values()} == {"Delivered"}
    assert {row["attempts"] for row in mine.values()} == {1}
    assert mine["run_finished"]["delivery_id"] == f"run_finished/{run['metadata']['uid']}"

    url = f"sqlite:///{database}"
    timeline = flywheel(test_cluster, "timeline", "checkout-oom-1", "-n", namespace, "--database-url", url)
    assert timeline.returncode == 0, timeline.stderr
    assert "notification approval_requested (webhook/json)" in timeline.stdout
    assert "notification run_finished (webhook/json)" in timeline.stdout
    story = flywheel(test_cluster, "explain", "incident", "checkout-oom", "-n", namespace, "--database-url", url)
    assert story.returncode == 0, story.stderr
    history = story.stdout.split("History (")[1]
    assert not history.startswith("0 notifications")
    assert "notification approval_requested" in history and "notification run_finished" in history
    assert "Delivered" in history


def test_a_receiver_failing_twice_gets_the_notification_once_on_the_third_attempt(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory,
    tmp_path: Path, receivers: list[Receiver],
) -> None:
    receiver = Receiver(statuses=[503, 503])
    receivers.append(receiver)
    create_deployment(test_cluster, "cart", namespace)
    start_operator(clean_redis_url, notify_webhook_url=receiver.url, notify_events="run_finished")

    create_auto_incident(test_cluster, namespace, "cart-crash", "cart")
    final = wait_for_run(test_cluster, namespace, "cart-crash-1", *FINAL, timeout=60)
    assert final["state"] == "Succeeded", final
    database = tmp_path / "flywheel.db"
    (row,) = wait_for(lambda: deliveries(database), timeout=60, what="the delivery recorded")
    assert (row["kind"], row["outcome"], row["attempts"], row["error"]) == ("run_finished", "Delivered", 3, None)
    # Two refused, one accepted: the same notification, and nothing of another kind.
    assert [body["kind"] for body in receiver.bodies] == ["run_finished"] * 3
    assert len({json.dumps(body, sort_keys=True) for body in receiver.bodies}) == 1

    timeline = flywheel(test_cluster, "timeline", "cart-crash-1", "-n", namespace,
                        "--database-url", f"sqlite:///{database}")
    assert "notification run_finished (webhook/json)" in timeline.stdout and "3 attempts" in timeline.stdout


def test_a_receiver_that_always_fails_leaves_a_recorded_final_failure(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory,
    tmp_path: Path, receivers: list[Receiver],
) -> None:
    receiver = Receiver(otherwise=500)
    receivers.append(receiver)
    create_deployment(test_cluster, "search", namespace)
    start_operator(clean_redis_url, notify_webhook_url=receiver.url, notify_events="run_finished",
                   notify_webhook_retries="2")

    create_auto_incident(test_cluster, namespace, "search-crash", "search")
    final = wait_for_run(test_cluster, namespace, "search-crash-1", *FINAL, timeout=60)
    assert final["state"] == "Succeeded", final
    database = tmp_path / "flywheel.db"
    (row,) = wait_for(lambda: deliveries(database), timeout=60, what="the final failure recorded")
    assert (row["kind"], row["outcome"], row["attempts"]) == ("run_finished", "Failed", 3)
    assert row["error"].startswith("HTTP 500")
    assert len(receiver.bodies) == 3

    timeline = flywheel(test_cluster, "timeline", "search-crash-1", "-n", namespace,
                        "--database-url", f"sqlite:///{database}")
    assert "notification run_finished (webhook/json)" in timeline.stdout and "Failed" in timeline.stdout
