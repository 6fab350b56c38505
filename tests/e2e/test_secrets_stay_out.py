"""Secrets stay out of logs, Events and statuses (issue 17, item 10).

One operator runs with every credential it can hold — the intake token, the advisor API key,
the PostgreSQL password in the database URL, the approval signing key — through the paths
where a secret could slip out: an approval (webhooks on, a JWT minted and spent), the intake
(good and wrong tokens, a refused alert), the history database, and an advisor that answers
an error echoing the Authorization header it received (as proxies and model servers do).
Then the operator's log, every Event of the namespace and every Flywheel object's status and
annotations are scanned for each secret and for anything shaped like a JWT: none may appear.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import OperatorFactory
from tests.e2e.test_approvals import APPROVER, APPROVERS, decide, signing_key, wait_for_webhooks, waiting_run
from tests.e2e.test_incidents import apply_incident, wait_for_phase
from tests.e2e.test_intake import INTAKE_PATH, TOKEN, alert, healthy, payload, post
from tests.e2e.test_runs import FINAL, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.ports import free_port
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

ADVISOR_KEY = "advisor-key-7f3a9c2e5b1d4f6a8c0e2b4d6f8a0c2e"
JWT = re.compile(r"eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*")


@pytest.fixture()
def echoing_advisor() -> Iterator[str]:
    """An advisor endpoint that refuses with a 401 whose body echoes the credentials it got."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"error": {"message": f"invalid api key: {self.headers.get('Authorization')}",
                                         "key": ADVISOR_KEY}}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def flywheel_objects(cluster: TestCluster, namespace: str) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for kind in ("incidents.flywheel.dev", "runs.flywheel.dev", "approvals.flywheel.dev"):
        objects.extend(cluster.kubectl_json("get", kind, "-n", namespace)["items"])
    return objects


def visible_parts(body: dict[str, Any]) -> dict[str, Any]:
    """What the shipped roles read: the status and the annotations (the spec is the writer's own input)."""
    status = dict(body.get("status") or {})
    return {"kind": body["kind"], "name": body["metadata"]["name"], "status": status,
            "annotations": (body["metadata"].get("annotations") or {})}


def test_no_secret_appears_in_logs_events_or_statuses(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, postgres_url: str,
    start_operator: OperatorFactory, echoing_advisor: str,
) -> None:
    password = postgres_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert len(password) >= 6, "the harness's PostgreSQL has a password to look for"
    create_deployment(test_cluster, "checkout", namespace)
    create_deployment(test_cluster, "payments", namespace)
    port = free_port()
    operator = start_operator(
        redis_url=clean_redis_url, database_url=postgres_url, intake_port=str(port), intake_token=TOKEN,
        metrics_port="0", webhook_mode="loopback", webhook_port="0", approver_groups=APPROVERS,
        advisor_urls=echoing_advisor, advisor_api_key=ADVISOR_KEY, advisor_timeout_seconds="5",
        log_level="DEBUG",
    )
    wait_for_webhooks(test_cluster, namespace, operator)
    wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), timeout=30, what="the intake")

    # An approval: a decision stamped and sealed, a token minted and spent.
    waiting_run(test_cluster, namespace, "checkout-oom", "checkout")
    decide(test_cluster, namespace, "checkout-oom-1", "Approve", "fine", APPROVER, APPROVERS)
    assert wait_for_run(test_cluster, namespace, "checkout-oom-1", *FINAL, timeout=90)["state"] == "Succeeded"
    # An advisor that answers with the key in its error body (P0 Incidents ask the advisors).
    apply_incident(test_cluster, namespace, "payments-p0", severity="P0", service="payments",
                   alertName="PaymentsErrorBudgetBurn", targetRef={"kind": "Deployment", "name": "payments"})
    decision = wait_for_phase(test_cluster, namespace, "payments-p0", "Mitigating", "Investigating",
                              timeout=60)["decision"]
    assert decision["source"] == "rules" and decision["error"], "the advisor's refusal was met"
    # The intake: accepted, refused for its token, refused for its namespace label.
    url = f"http://127.0.0.1:{port}{INTAKE_PATH}"
    assert post(url, payload(alert(namespace))).status in (200, 201)
    assert post(url, payload(alert(namespace)), token=TOKEN[:-1] + "!").status == 401
    wait_for_run(test_cluster, namespace, "checkout-oom-1", *FINAL)

    secrets = {
        "intake token": TOKEN,
        "advisor API key": ADVISOR_KEY,
        "database password": password,
    }
    key = signing_key(test_cluster, namespace)
    secrets |= {"signing key (base64)": base64.b64encode(key).decode(), "signing key (hex)": key.hex()}
    operator.stop()
    places = {
        "operator log": operator.log(),
        "Events": json.dumps([(e["reason"], e["message"]) for e in
                              test_cluster.kubectl_json("get", "events", "-n", namespace)["items"]]),
        "statuses and annotations": json.dumps([visible_parts(o) for o in flywheel_objects(test_cluster, namespace)]),
    }
    found = [
        (what, where) for where, text in places.items() for what, secret in secrets.items() if secret in text
    ] + [("a JWT", where) for where, text in places.items() if JWT.search(text)]
    details = {where: JWT.findall(text)[:3] for where, text in places.items()}
    assert found == [], (found, details)
