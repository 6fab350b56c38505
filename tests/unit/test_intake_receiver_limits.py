"""The receiver's early refusals through aiohttp's in-process test server: rate, depth, namespace.

No Kubernetes API: the stand-ins below fail the test if an alert gets past the refusal it is for.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from flywheel.domain.alerts import AlertRefusal, AlertSubject, NamespaceScope, RefusalReason, Workload
from flywheel.errors import KubernetesUnavailableError
from flywheel.intake import INTAKE_PATH, AlertRecorder, IntakeConfig, build_app

pytestmark = pytest.mark.unit

TOKEN = "t" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class NoIncidents:
    """The store: nothing may be written in these tests."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the intake reached the Incident store ({name})")


class NoWorkloads:
    async def resolve(self, namespace: str, subject: AlertSubject) -> Workload | AlertRefusal:
        raise AssertionError("the intake looked up a workload for a refused alert")


class Counter:
    def __init__(self) -> None:
        self.refused: list[RefusalReason] = []

    def alert_refused(self, reason: RefusalReason) -> None:
        self.refused.append(reason)


class Namespaces:
    def __init__(self) -> None:
        self.down = False

    async def refusal(self, namespace: str) -> str | None:
        if self.down:
            raise KubernetesUnavailableError("get namespace: Kubernetes API unavailable")
        return None if namespace == "enabled" else f"namespace {namespace} has not opted in to remediation"


def alertmanager_payload(namespace: str) -> dict[str, Any]:
    return {
        "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing", "receiver": "flywheel",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am:9093",
        "alerts": [{
            "status": "firing", "fingerprint": "a1b2c3d4e5f60718", "startsAt": "2025-03-01T12:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph",
            "labels": {"alertname": "KubePodCrashLooping", "namespace": namespace, "deployment": "checkout"},
            "annotations": {},
        }],
    }


@pytest.fixture()
async def client() -> AsyncIterator[tuple[TestClient[Any, Any], Counter, Namespaces]]:
    counter, namespaces = Counter(), Namespaces()
    config = IntakeConfig(token=SecretStr(TOKEN), max_body_bytes=1 << 20, scope=NamespaceScope(), max_json_depth=6,
                          rate_per_second=0.001, rate_burst=5)
    app = build_app(config, AlertRecorder(NoIncidents()), NoWorkloads(), counter, namespaces)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        yield test_client, counter, namespaces


async def test_an_alert_for_a_namespace_that_did_not_opt_in_is_refused_and_counted(
    client: tuple[TestClient[Any, Any], Counter, Namespaces],
) -> None:
    http, counter, _ = client
    response = await http.post(INTAKE_PATH, json=alertmanager_payload("team-a"), headers=AUTH)
    body = await response.json()
    assert response.status == 200, body
    (entry,) = body["alerts"]
    assert (entry["outcome"], entry["field"]) == ("refused", "alerts[0].labels.namespace")
    assert "has not opted in" in entry["reason"]
    assert counter.refused == [RefusalReason.NAMESPACE_NOT_ENABLED]


async def test_an_unknown_namespace_answer_is_a_503_for_alertmanager_to_resend(
    client: tuple[TestClient[Any, Any], Counter, Namespaces],
) -> None:
    http, _, namespaces = client
    namespaces.down = True
    response = await http.post(INTAKE_PATH, json=alertmanager_payload("enabled"), headers=AUTH)
    assert response.status == 503 and response.headers["Retry-After"]


async def test_depth_then_rate_are_refused_before_anything_is_read_from_the_cluster(
    client: tuple[TestClient[Any, Any], Counter, Namespaces],
) -> None:
    http, _, _ = client
    deep = alertmanager_payload("enabled")
    deep["commonAnnotations"] = {"a": [[[[["x"]]]]]}  # 7 levels with the payload itself
    response = await http.post(INTAKE_PATH, data=json.dumps(deep), headers=AUTH)
    assert (response.status, (await response.json())["error"]) == (400, "body nests JSON deeper than 6 levels")
    for _ in range(4):  # the rest of the burst of 5, wrong token or not
        assert (await http.post(INTAKE_PATH, data=b"{}", headers={"Authorization": "Bearer wrong"})).status == 401
    limited = await http.post(INTAKE_PATH, data=b"{}", headers=AUTH)
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
