"""The Alertmanager intake on the real control plane, served by the real operator process.

Scenario matrix:
- a firing alert → an Incident with the mapped fields, which the operator then processes;
- the same fingerprint again → the same Incident, a signal appended; a repeated identical
  post → nothing duplicated; many concurrent posts → every signal exactly once;
- a resolved alert → recorded on the Incident (status resolved, endsAt), not resolving it;
- after the Incident is resolved, the next firing opens the next Incident of the chain;
- a grouped payload of 3 alerts → 3 Incidents;
- alerts without namespace, without workload or outside the watched namespaces are
  refused per alert while the others of the payload are recorded;
- 401 (no token, wrong token, none configured), 400, 422 naming the field, 413 (declared
  and chunked bodies);
- the Kubernetes API out of reach → 503 with Retry-After, so Alertmanager re-sends; the
  operator lacking permissions → 500 (re-sent once fixed); an alert the API server
  refuses (no such namespace) → refused alone;
- the real Alertmanager, posting to its API, delivers firing and resolved alerts.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes.aio.client
import kubernetes.aio.config
import pytest
from pydantic import SecretStr

from flywheel.domain.alerts import LABEL_FINGERPRINT, NamespaceScope
from flywheel.intake import (
    HEALTH_PATH,
    INTAKE_PATH,
    AlertRecorder,
    IntakeConfig,
    IntakeServer,
    RetryPolicy,
    build_app,
)
from flywheel.metrics.collector import OperatorCounters
from flywheel.stores.kube import FlywheelResources, KubeApi
from flywheel.stores.pod_owners import KubeObjectReader, PodOwnerStore
from tests.conftest import OperatorFactory
from tests.e2e.workloads import deployment_manifest
from tests.harness.cluster import TestCluster
from tests.harness.ports import free_port
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

TOKEN = "intake-token-for-the-e2e-tests-0123456789"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ALERTMANAGER_BINARY = "/usr/bin/prometheus-alertmanager"




def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def alert(
    namespace: str | None,
    *,
    fingerprint: str = "a1b2c3d4e5f60718",
    alertname: str = "KubePodCrashLooping",
    status: str = "firing",
    starts_at: datetime = T0,
    ends_at: datetime | None = None,
    **labels: str,
) -> dict[str, Any]:
    all_labels = {"alertname": alertname, "deployment": "checkout", "severity": "critical",
                  "reason": "CrashLoopBackOff", **labels}
    if namespace is not None:
        all_labels["namespace"] = namespace
    return {
        "status": status,
        "labels": {key: value for key, value in all_labels.items() if value},
        "annotations": {"summary": f"{alertname} on {all_labels.get('deployment') or 'nothing'}"},
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(ends_at) if ends_at else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example/graph",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "flywheel",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts),
    }


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]

    def outcomes(self) -> list[str]:
        return [entry["outcome"] for entry in self.body["alerts"]]


def post(
    url: str, body: dict[str, Any] | bytes | Iterable[bytes], *, token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> Answer:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, json.loads(response.read()), dict(response.headers))
    except urllib.error.HTTPError as error:
        return Answer(error.code, json.loads(error.read() or b"{}"), dict(error.headers))


def healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + HEALTH_PATH, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def incident(cluster: TestCluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.kubectl_json("get", "incident", name, "-n", namespace)


def intake_incidents(cluster: TestCluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json("get", "incidents", "-n", namespace, "-l", LABEL_FINGERPRINT)[
        "items"
    ]
    return items


def signal_keys(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(s["fingerprint"], s["startsAt"], s["status"]) for s in body["spec"].get("signals", [])]


@pytest.fixture()
def checkout(test_cluster: TestCluster, namespace: str) -> str:
    """The Deployment the default alert names (the intake refuses alerts about workloads that do not exist)."""
    test_cluster.kubectl("apply", "-f", "-", input=deployment_manifest("checkout", namespace))
    return "checkout"


@pytest.fixture()
def intake_url(start_operator: OperatorFactory, clean_redis_url: str, checkout: str) -> str:
    """The intake of the real operator, scoped to this test's namespace."""
    port = free_port()
    # Metrics off: its fixed default port would collide with operators of concurrent test runs.
    start_operator(redis_url=clean_redis_url, intake_port=str(port), intake_token=TOKEN, metrics_port="0")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: healthy(base), timeout=30, what="the intake to listen")
    return base + INTAKE_PATH


# --------------------------------------------------------------------------- mapping and signals


def test_a_firing_alert_opens_an_incident_the_operator_processes(
    test_cluster: TestCluster, namespace: str, intake_url: str
) -> None:
    answer = post(intake_url, payload(alert(namespace)))
    assert answer.status == 201, answer.body
    assert answer.body["created"] == 1
    (entry,) = answer.body["alerts"]
    name = entry["incident"]
    assert name == "am-kubepodcrashlooping-a1b2c3d4e5f60718"

    body = incident(test_cluster, namespace, name)
    spec = body["spec"]
    assert spec["alertName"] == "KubePodCrashLooping"
    assert spec["service"] == "checkout"
    assert spec["errorType"] == "CrashLoopBackOff"
    assert spec["severity"] == "P1"
    assert spec["source"] == "alertmanager"
    assert spec["summary"] == "KubePodCrashLooping on checkout"
    assert spec["targetRef"] == {"kind": "Deployment", "name": "checkout"}
    assert signal_keys(body) == [("a1b2c3d4e5f60718", "2025-03-01T12:00:00Z", "firing")]
    assert body["metadata"]["labels"][LABEL_FINGERPRINT] == "a1b2c3d4e5f60718"
    assert body["metadata"]["annotations"]["flywheel.dev/alertmanager-receiver"] == "flywheel"
    # The Incident is a first-class one: the operator records its anomaly like any other.
    wait_for(lambda: (incident(test_cluster, namespace, name).get("status") or {}).get("anomaly"),
             timeout=60, what="the operator to process the Incident")


def test_the_same_fingerprint_appends_signals_to_the_same_incident_exactly_once(
    test_cluster: TestCluster, namespace: str, intake_url: str
) -> None:
    first = post(intake_url, payload(alert(namespace)))
    assert (first.status, first.outcomes()) == (201, ["created"])
    name = first.body["alerts"][0]["incident"]

    repeated = post(intake_url, payload(alert(namespace)))
    assert (repeated.status, repeated.outcomes()) == (200, ["unchanged"])
    later = post(intake_url, payload(alert(namespace, starts_at=T0 + timedelta(hours=1))))
    assert (later.status, later.outcomes()) == (200, ["updated"])
    assert later.body["alerts"][0]["incident"] == name
    assert post(intake_url, payload(alert(namespace, starts_at=T0 + timedelta(hours=1)))).outcomes() == ["unchanged"]

    assert [item["metadata"]["name"] for item in intake_incidents(test_cluster, namespace)] == [name]
    assert signal_keys(incident(test_cluster, namespace, name)) == [
        ("a1b2c3d4e5f60718", "2025-03-01T12:00:00Z", "firing"),
        ("a1b2c3d4e5f60718", "2025-03-01T13:00:00Z", "firing"),
    ]


def test_concurrent_deliveries_record_every_signal_exactly_once(
    test_cluster: TestCluster, namespace: str, intake_url: str
) -> None:
    # Eight episodes of one alert, each delivered three times at once: creations collide
    # (409 on create) and appends race each other (409 on the resourceVersion precondition).
    episodes = [T0 + timedelta(minutes=minute) for minute in range(8)]
    answers: list[Answer] = []

    def deliver(starts_at: datetime) -> None:
        answers.append(post(intake_url, payload(alert(namespace, starts_at=starts_at))))

    threads = [threading.Thread(target=deliver, args=(moment,)) for moment in episodes * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(answer.status in (200, 201) for answer in answers), [a.body for a in answers]
    outcomes = [outcome for answer in answers for outcome in answer.outcomes()]
    assert outcomes.count("created") == 1
    assert outcomes.count("created") + outcomes.count("updated") == len(episodes)
    (only,) = intake_incidents(test_cluster, namespace)
    assert sorted(signal_keys(only)) == [("a1b2c3d4e5f60718", rfc3339(moment), "firing") for moment in episodes]


def test_a_resolved_alert_is_recorded_without_resolving_the_incident(
    test_cluster: TestCluster, namespace: str, intake_url: str
) -> None:
    name = post(intake_url, payload(alert(namespace))).body["alerts"][0]["incident"]
    ended = T0 + timedelta(minutes=5)
    resolved = payload(alert(namespace, status="resolved", ends_at=ended))
    answer = post(intake_url, resolved)
    assert (answer.status, answer.outcomes()) == (200, ["updated"])
    assert post(intake_url, resolved).outcomes() == ["unchanged"]

    signals = incident(test_cluster, namespace, name)["spec"]["signals"]
    assert [(s["status"], s.get("endsAt")) for s in signals] == [("firing", None), ("resolved", rfc3339(ended))]
    phase = wait_for(lambda: (incident(test_cluster, namespace, name).get("status") or {}).get("phase"),
                     timeout=60, what="the operator to set a phase")
    assert phase != "Resolved", "only a person or a verified Run resolves an Incident"


def test_a_resolved_alert_nobody_saw_firing_opens_no_incident(
    test_cluster: TestCluster, namespace: str, intake_url: str
) -> None:
    answer = post(intake_url, payload(alert(namespace, status="resolved", ends_at=T0 + timedelta(minutes=1))))
    assert (answer.status, answer.outcomes()) == (200, ["ignored"])
    assert intake_incidents(test_cluster, namespace) == []


def test_a_recurrence_after_resolution_opens_the_next_incident(
    test_cluster: TestCluster, namespace: str, intake_url: str
) -> None:
    first = post(intake_url, payload(alert(namespace))).body["alerts"][0]["incident"]
    test_cluster.kubectl("patch", "incident", first, "-n", namespace, "--type", "merge",
                         "-p", json.dumps({"spec": {"resolution": {"note": "restarted by hand"}}}))
    wait_for(lambda: (incident(test_cluster, namespace, first).get("status") or {}).get("phase") == "Resolved",
             timeout=60, what="the manual resolution")

    recurrence = post(intake_url, payload(alert(namespace, starts_at=T0 + timedelta(days=1))))
    assert (recurrence.status, recurrence.outcomes()) == (201, ["created"])
    assert recurrence.body["alerts"][0]["incident"] == f"{first}-2"
    assert len(incident(test_cluster, namespace, first)["spec"]["signals"]) == 1


def test_a_group_of_three_alerts_opens_three_incidents(
    test_cluster: TestCluster, namespace: str, intake_url: str
) -> None:
    test_cluster.kubectl("apply", "-f", "-", input=deployment_manifest("payments", namespace))
    test_cluster.kubectl("apply", "-f", "-", input=statefulset_manifest("postgres", namespace))
    group = payload(
        alert(namespace, fingerprint="1111111111111111", deployment="checkout"),
        alert(namespace, fingerprint="2222222222222222", deployment="payments", alertname="HighLatency",
              severity="warning"),
        alert(namespace, fingerprint="3333333333333333", deployment="", statefulset="postgres", severity="page"),
    )
    answer = post(intake_url, group)
    assert (answer.status, answer.outcomes()) == (201, ["created"] * 3)
    by_name = {item["metadata"]["name"]: item["spec"] for item in intake_incidents(test_cluster, namespace)}
    assert {name: (spec["targetRef"]["name"], spec["severity"]) for name, spec in by_name.items()} == {
        "am-kubepodcrashlooping-1111111111111111": ("checkout", "P1"),
        "am-highlatency-2222222222222222": ("payments", "P2"),
        "am-kubepodcrashlooping-3333333333333333": ("postgres", "P0"),
    }


def test_unusable_alerts_are_refused_one_by_one_while_the_others_are_recorded(
    test_cluster: TestCluster, namespace: str, intake_url: str
) -> None:
    group = payload(
        alert(None, fingerprint="4444444444444444"),
        alert(namespace, fingerprint="5555555555555555"),
        alert(namespace, fingerprint="6666666666666666", deployment=""),
        alert("kube-system", fingerprint="7777777777777777"),
    )
    answer = post(intake_url, group)
    assert answer.status == 201, answer.body
    assert answer.outcomes() == ["refused", "created", "refused", "refused"]
    assert (answer.body["created"], answer.body["refused"]) == (1, 3)
    fields = [entry["field"] for entry in answer.body["alerts"]]
    assert fields == ["alerts[0].labels.namespace", None, "alerts[2].labels.pod", "alerts[3].labels.namespace"]
    reasons = [entry["reason"] for entry in answer.body["alerts"]]
    assert "missing" in reasons[0]
    assert "names no workload" in reasons[2]
    assert "not watched" in reasons[3] and namespace in reasons[3]
    assert [item["metadata"]["name"] for item in intake_incidents(test_cluster, namespace)] == [
        "am-kubepodcrashlooping-5555555555555555"
    ]


# --------------------------------------------------------------------------- refusing requests


def test_requests_without_the_right_token_are_refused(
    test_cluster: TestCluster, namespace: str, intake_url: str
) -> None:
    body = payload(alert(namespace))
    for token, headers in ((None, {}), ("wrong", {}), (None, {"Authorization": f"Basic {TOKEN}"}),
                           (TOKEN + "x", {})):
        answer = post(intake_url, body, token=token, headers=headers)
        assert answer.status == 401, (token, headers)
        assert answer.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert intake_incidents(test_cluster, namespace) == []


def test_malformed_wrongly_shaped_and_oversized_bodies_are_refused(
    test_cluster: TestCluster, namespace: str, intake_url: str
) -> None:
    assert post(intake_url, b"{not json").status == 400
    assert post(intake_url, b"\xff\xfe").status == 400

    wrong_version = post(intake_url, {**payload(alert(namespace)), "version": "3"})
    assert (wrong_version.status, wrong_version.body["field"]) == (422, "version")
    no_start = alert(namespace)
    del no_start["startsAt"]
    missing = post(intake_url, payload(alert(namespace), no_start))
    assert (missing.status, missing.body["field"]) == (422, "alerts[1].startsAt")
    assert "alerts[1].startsAt" in missing.body["error"]

    huge = payload(alert(namespace, padding="x" * (1024 * 1024)))
    assert post(intake_url, huge).status == 413
    chunked = post(intake_url, iter([json.dumps(huge).encode()]), headers={"Transfer-Encoding": "chunked"})
    assert chunked.status == 413
    assert intake_incidents(test_cluster, namespace) == []


# --------------------------------------------------------------------------- API unavailable


def unreachable_api() -> KubeApi:
    """The real client, pointed at a port where no API server listens."""
    return KubeApi(kubernetes.aio.client.Configuration(host=f"http://127.0.0.1:{free_port()}"))


class running_intake:
    """An intake app in this process on a free port, for what the operator's cannot show.

    It records through the real store on ``kube``, which it closes when it stops.
    """

    def __init__(self, config: IntakeConfig, kube: KubeApi, policy: RetryPolicy | None = None) -> None:
        self._kube = kube
        app = build_app(config, AlertRecorder(FlywheelResources(kube), policy),
                        PodOwnerStore(KubeObjectReader(kube)), OperatorCounters())
        self._server = IntakeServer(app, "127.0.0.1", 0)

    async def __aenter__(self) -> str:
        await self._server.start()
        return f"http://127.0.0.1:{self._server.port}{INTAKE_PATH}"

    async def __aexit__(self, *_: object) -> None:
        await self._server.stop()
        await self._kube.close()


async def test_an_intake_without_a_configured_token_refuses_everything() -> None:
    config = IntakeConfig(token=None, max_body_bytes=1024 * 1024, scope=NamespaceScope())
    async with running_intake(config, unreachable_api()) as url, aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
            async with session.post(url, json=payload(alert("shop")), headers=headers) as response:
                assert response.status == 401
                assert "no intake token" in (await response.json())["error"]


async def test_an_unreachable_api_server_answers_503_so_that_alertmanager_retries() -> None:
    config = IntakeConfig(token=SecretStr(TOKEN), max_body_bytes=1024 * 1024, scope=NamespaceScope())
    policy = RetryPolicy(budget_seconds=1.0, first_backoff_seconds=0.05, request_timeout_seconds=0.5)
    async with running_intake(config, unreachable_api(), policy) as url, aiohttp.ClientSession() as session:
        group = payload(alert("shop"), alert(None, fingerprint="4444444444444444"))
        async with session.post(url, json=group, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            body = await response.json()
            assert response.status == 503, body
            assert response.headers["Retry-After"].isdigit()
    assert [entry["outcome"] for entry in body["alerts"]] == ["failed", "refused"]
    assert "unreachable" in body["alerts"][0]["reason"]


async def cluster_api(cluster: TestCluster, *, bearer_token: str | None = None) -> KubeApi:
    """The real client of the test cluster; with ``bearer_token``, authenticated by that token alone."""
    configuration = kubernetes.aio.client.Configuration()
    await kubernetes.aio.config.load_kube_config(config_file=cluster.kubeconfig, client_configuration=configuration)
    if bearer_token is not None:
        configuration.cert_file = configuration.key_file = None
        configuration.api_key = {"BearerToken": f"Bearer {bearer_token}"}
    return KubeApi(configuration)


async def test_an_alert_the_api_server_refuses_is_refused_alone(
    test_cluster: TestCluster, namespace: str, checkout: str
) -> None:
    # Cluster-wide scope: the namespace check is left to the API server, which has no such namespace.
    config = IntakeConfig(token=SecretStr(TOKEN), max_body_bytes=1024 * 1024, scope=NamespaceScope())
    async with running_intake(config, await cluster_api(test_cluster)) as url, aiohttp.ClientSession() as session:
        group = payload(alert(f"{namespace}-absent", fingerprint="8888888888888888"),
                        alert(namespace, fingerprint="9999999999999999"))
        async with session.post(url, json=group, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            body = await response.json()
            assert response.status == 201, body
    assert [entry["outcome"] for entry in body["alerts"]] == ["refused", "created"]
    assert "does not exist" in body["alerts"][0]["reason"]


async def test_an_operator_without_permissions_answers_500_so_that_alertmanager_retries(
    test_cluster: TestCluster, namespace: str
) -> None:
    test_cluster.kubectl("create", "serviceaccount", "no-permissions", "-n", namespace)
    token = test_cluster.kubectl("create", "token", "no-permissions", "-n", namespace).stdout.strip()
    config = IntakeConfig(token=SecretStr(TOKEN), max_body_bytes=1024 * 1024, scope=NamespaceScope())
    kube = await cluster_api(test_cluster, bearer_token=token)
    async with (
        running_intake(config, kube) as url,
        aiohttp.ClientSession() as session,
        session.post(url, json=payload(alert(namespace)), headers={"Authorization": f"Bearer {TOKEN}"}) as response,
    ):
        body = await response.json()
        assert response.status == 500, body
    assert [entry["outcome"] for entry in body["alerts"]] == ["failed"]
    assert "403" in body["alerts"][0]["reason"]


# --------------------------------------------------------------------------- the real Alertmanager


@dataclass
class Alertmanager:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", data=json.dumps(alerts).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=10) as response:
            found: list[dict[str, Any]] = json.loads(response.read())
            return found

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")



@contextlib.contextmanager
def running_alertmanager(binary: str, config: Path, tmp_path: Path) -> Iterator[Alertmanager]:
    """The real Alertmanager with ``config`` on a free port, ready; stopped afterwards."""
    port = free_port()
    log_path = tmp_path / "alertmanager.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.path={tmp_path / 'alertmanager-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=debug"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    manager = Alertmanager(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_for(lambda: manager.ready() or process.poll() is not None, timeout=30, what="Alertmanager to be ready")
        assert process.poll() is None, manager.log()
        yield manager
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

@pytest.fixture()
def alertmanager(intake_url: str, tmp_path: Path) -> Iterator[Alertmanager]:
    """The real Alertmanager (Debian's prometheus-alertmanager) routing everything to the intake."""
    binary = shutil.which("prometheus-alertmanager") or ALERTMANAGER_BINARY
    assert Path(binary).exists(), "install prometheus-alertmanager (hack/setup.sh does)"
    config = tmp_path / "alertmanager.yml"
    config.write_text(json.dumps({  # JSON is YAML, and needs no YAML library here
        "route": {
            "receiver": "flywheel",
            "group_by": ["alertname", "namespace"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{
            "name": "flywheel",
            "webhook_configs": [{
                "url": intake_url,
                "send_resolved": True,
                "http_config": {"authorization": {"credentials": TOKEN}},
            }],
        }],
    }))
    with running_alertmanager(binary, config, tmp_path) as manager:
        yield manager


def test_the_real_alertmanager_delivers_firing_and_resolved_alerts(
    test_cluster: TestCluster, namespace: str, alertmanager: Alertmanager
) -> None:
    started = datetime.now(UTC).replace(microsecond=0)
    labels = {"alertname": "KubePodOOMKilled", "namespace": namespace, "deployment": "checkout",
              "severity": "warning", "reason": "OOMKilled"}
    firing = {"labels": labels, "annotations": {"summary": "checkout was OOM-killed"},
              "startsAt": rfc3339(started), "generatorURL": "http://prometheus.example/graph"}
    alertmanager.post_alerts([firing])

    (known,) = wait_for(alertmanager.alerts, timeout=30, what="Alertmanager to hold the alert")
    fingerprint = known["fingerprint"]
    name = f"am-kubepodoomkilled-{fingerprint}"
    created = wait_for(
        lambda: next((i for i in intake_incidents(test_cluster, namespace) if i["metadata"]["name"] == name), None),
        timeout=60, what=f"Incident {name} from Alertmanager's webhook",
    )
    spec = created["spec"]
    assert (spec["alertName"], spec["service"], spec["errorType"], spec["severity"]) == (
        "KubePodOOMKilled", "checkout", "OOMKilled", "P2")
    assert spec["summary"] == "checkout was OOM-killed"
    assert signal_keys(created) == [(fingerprint, rfc3339(started), "firing")]
    assert created["metadata"]["annotations"]["flywheel.dev/alertmanager-url"].startswith("http")

    alertmanager.post_alerts([{**firing, "endsAt": rfc3339(datetime.now(UTC))}])
    resolved = wait_for(
        lambda: [s for s in incident(test_cluster, namespace, name)["spec"]["signals"] if s["status"] == "resolved"],
        timeout=60, what="the resolved notification",
    )
    assert resolved[0]["startsAt"] == rfc3339(started)
    assert resolved[0]["endsAt"]
    # Whatever Alertmanager re-sent meanwhile, each notification is on record once.
    assert [s["status"] for s in incident(test_cluster, namespace, name)["spec"]["signals"]] == ["firing", "resolved"]


def statefulset_manifest(name: str, namespace: str) -> str:
    labels = {"app.kubernetes.io/name": f"{name}-db"}
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1, "serviceName": name, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "containers": [{"name": "db", "image": "registry.example/flywheel-sample:1.0"}],
                "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            }},
        },
    })


def pod_of(cluster: TestCluster, namespace: str, selector: str) -> str:
    items = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return str(items[0]["metadata"]["name"]) if items else ""


def test_kube_prometheus_alerts_about_pods_become_incidents_on_the_owning_workload(
    test_cluster: TestCluster, namespace: str, alertmanager: Alertmanager
) -> None:
    """Labels exactly as kube-prometheus-stack's rules (release "prometheus") emit them."""
    test_cluster.kubectl("apply", "-f", "-", input=statefulset_manifest("ledger", namespace))
    test_cluster.kubectl("rollout", "status", "deployment/checkout", "-n", namespace, "--timeout=120s")
    test_cluster.kubectl("rollout", "status", "statefulset/ledger", "-n", namespace, "--timeout=120s")
    web_pod = pod_of(test_cluster, namespace, "app=checkout")
    db_pod = wait_for(lambda: pod_of(test_cluster, namespace, "app.kubernetes.io/name=ledger-db"),
                      timeout=60, what="the StatefulSet's Pod")
    ksm = {"job": "kube-state-metrics", "endpoint": "http", "instance": "10.244.0.7:8080",
           "service": "prometheus-kube-state-metrics"}
    ksm_own_pod = {"pod": "prometheus-kube-state-metrics-6d9f7c8b5-x2x9z", "container": "kube-state-metrics"}
    cases = {
        "KubePodCrashLooping": ({"severity": "warning", "pod": web_pod, "container": "app", "uid": "0b7c1e2d",
                                 "reason": "CrashLoopBackOff", **ksm}, ("Deployment", "checkout"), "checkout"),
        "KubePodNotReady": ({"severity": "warning", "pod": db_pod}, ("StatefulSet", "ledger"), "ledger-db"),
        "KubeContainerWaiting": ({"severity": "warning", "pod": db_pod, "container": "db"},
                                 ("StatefulSet", "ledger"), "ledger-db"),
        "CPUThrottlingHigh": ({"severity": "info", "pod": web_pod, "container": "app", "instance": "172.18.0.2:10250",
                               "service": "prometheus-kube-prometheus-kubelet"}, ("Deployment", "checkout"), "checkout"),
        "KubeDeploymentReplicasMismatch": ({"severity": "warning", "deployment": "checkout", **ksm, **ksm_own_pod},
                                           ("Deployment", "checkout"), "checkout"),
        "KubeStatefulSetReplicasMismatch": ({"severity": "warning", "statefulset": "ledger", **ksm, **ksm_own_pod},
                                            ("StatefulSet", "ledger"), "ledger-db"),
    }
    started = rfc3339(datetime.now(UTC).replace(microsecond=0))
    alertmanager.post_alerts([
        {"labels": {"alertname": name, "namespace": namespace, **labels}, "startsAt": started,
         "generatorURL": "http://prometheus.example/graph"}
        for name, (labels, _, _) in cases.items()
    ])

    def by_alert() -> dict[str, dict[str, Any]] | None:
        found = {item["spec"]["alertName"]: item["spec"] for item in intake_incidents(test_cluster, namespace)}
        return found if set(found) == set(cases) else None

    specs = wait_for(by_alert, timeout=90, what="an Incident per alert from Alertmanager's webhook")
    for name, (_, (kind, workload), service) in cases.items():
        assert (specs[name]["targetRef"]["kind"], specs[name]["targetRef"]["name"]) == (kind, workload), name
        assert specs[name]["service"] == service, name


def test_an_alert_about_a_pod_that_is_gone_or_an_exporter_pod_is_refused_with_its_reason(
    test_cluster: TestCluster, namespace: str, intake_url: str
) -> None:
    gone = alert(namespace, fingerprint="abababababababab", deployment="", pod="checkout-5f7d9c-gone1")
    node = alert(namespace, fingerprint="cdcdcdcdcdcdcdcd", alertname="KubeNodeNotReady", deployment="", reason="",
                 pod="", node="node-1")
    answer = post(intake_url, payload(gone, node))
    assert answer.outcomes() == ["refused", "refused"], answer.body
    assert "does not exist" in answer.body["alerts"][0]["reason"]
    assert "names no workload" in answer.body["alerts"][1]["reason"]
    assert intake_incidents(test_cluster, namespace) == []
