"""The intake's own defences (issue 17, item 8), against the real operator process.

Scenario matrix:
- an intake token shorter than 32 characters: the operator refuses to start, naming
  FLYWHEEL_INTAKE_TOKEN and the length, never printing the token;
- raw HTTP: JSON nested past FLYWHEEL_INTAKE_MAX_JSON_DEPTH (just past, and far past the
  parser's own recursion limit) → 400 naming the reason, no Incident, the intake still serves;
- raw HTTP: a client address past its burst → 429 with Retry-After, while another client
  address (127.0.0.2) is still served;
- TLS from FLYWHEEL_INTAKE_TLS_CERT_DIR: the real Alertmanager, trusting the CA through
  webhook_config.http_config.tls_config.ca_file, delivers an alert that becomes an Incident;
  plain HTTP and an untrusting client are refused; a rotated certificate in the directory is
  served by the same listener.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flywheel.stores.webhook_certificate import fingerprint
from flywheel.stores.webhooks import write_certificate
from tests.conftest import OperatorFactory
from tests.e2e.test_intake import (
    ALERTMANAGER_BINARY,
    INTAKE_PATH,
    TOKEN,
    Alertmanager,
    alert,
    healthy,
    intake_incidents,
    payload,
    post,
    rfc3339,
    running_alertmanager,
)
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.ports import free_port
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e


def test_a_short_intake_token_keeps_the_operator_from_starting(
    test_cluster: TestCluster, namespace: str, tmp_path: Path
) -> None:
    short = "only-twenty-chars-xx"
    result = subprocess.run(
        [sys.executable, "-m", "flywheel", "run", "--standalone", "--namespace", namespace],
        env={**test_cluster.env, "KUBECONFIG": test_cluster.kubeconfig, "FLYWHEEL_INTAKE_TOKEN": short,
             "FLYWHEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'flywheel.db'}", "FLYWHEEL_METRICS_PORT": "0"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "FLYWHEEL_INTAKE_TOKEN" in output and "at least 32" in output, output
    assert short not in output


@pytest.fixture()
def limited_intake(start_operator: OperatorFactory, clean_redis_url: str) -> str:
    port = free_port()
    start_operator(redis_url=clean_redis_url, intake_port=str(port), intake_token=TOKEN, metrics_port="0",
                   intake_max_json_depth="8", intake_rate_limit_per_second="0.05", intake_rate_limit_burst="4")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: healthy(base), timeout=30, what="the intake to listen")
    return base + INTAKE_PATH


def raw_post(url: str, body: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST from a chosen source address (any 127/8 address is loopback on Linux)."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        connection.request("POST", INTAKE_PATH, body=body, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}"), dict(response.getheaders())
    finally:
        connection.close()


def test_deep_nesting_is_a_400_and_a_client_past_its_rate_gets_429(
    test_cluster: TestCluster, namespace: str, limited_intake: str
) -> None:
    just_past = payload(alert(namespace))
    just_past["commonAnnotations"] = {"a": [[[[[[["deep"]]]]]]]}  # 9 levels with the payload itself
    status, body, _ = raw_post(limited_intake, json.dumps(just_past).encode())
    assert (status, body["error"]) == (400, "body nests JSON deeper than 8 levels"), body
    far_past = b"[" * 200_000 + b"]" * 200_000
    status, body, _ = raw_post(limited_intake, far_past)
    assert (status, body["error"]) == (400, "body nests JSON deeper than 8 levels"), body
    assert intake_incidents(test_cluster, namespace) == []

    # Two of the burst of 4 are spent; the next two are served (and refused for what they are).
    for _ in range(2):
        status, body, _ = raw_post(limited_intake, b"{}")
        assert status == 422, body
    status, body, headers = raw_post(limited_intake, b"{}")
    assert status == 429, body
    assert int(headers["Retry-After"]) >= 1
    assert "rate limit" in body["error"] and "127.0.0.1" in body["error"]
    status, body, _ = raw_post(limited_intake, b"{}", source="127.0.0.2")
    assert status == 422, "another client address has its own budget"


# --------------------------------------------------------------------------- TLS


def served_certificate(port: int, ca_file: Path) -> str:
    context = ssl.create_default_context(cafile=str(ca_file))
    with contextlib.closing(http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)) as conn:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    return fingerprint(ssl.DER_cert_to_PEM_cert(der).encode())


@contextlib.contextmanager
def alertmanager_for(intake_url: str, ca_file: Path, tmp_path: Path) -> Iterator[Alertmanager]:
    binary = shutil.which("prometheus-alertmanager") or ALERTMANAGER_BINARY
    assert Path(binary).exists(), "install prometheus-alertmanager (hack/setup.sh does)"
    config = tmp_path / "alertmanager.yml"
    config.write_text(json.dumps({
        "route": {"receiver": "flywheel", "group_by": ["alertname", "namespace"], "group_wait": "1s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "flywheel", "webhook_configs": [{
            "url": intake_url,
            "send_resolved": True,
            "http_config": {"authorization": {"credentials": TOKEN}, "tls_config": {"ca_file": str(ca_file)}},
        }]}],
    }))
    with running_alertmanager(binary, config, tmp_path) as manager:
        yield manager


def test_the_real_alertmanager_delivers_over_tls_and_a_rotation_is_served_in_place(
    test_cluster: TestCluster, namespace: str, start_operator: OperatorFactory, clean_redis_url: str,
    tmp_path: Path,
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    tls = tmp_path / "intake-tls"
    first = write_certificate(tls, ["localhost"], ["127.0.0.1"])
    ca_file = tmp_path / "first-ca.crt"
    ca_file.write_bytes(first.ca_pem)
    port = free_port()
    start_operator(redis_url=clean_redis_url, intake_port=str(port), intake_token=TOKEN, metrics_port="0",
                   intake_tls_cert_dir=str(tls))
    wait_for(lambda: served_certificate(port, ca_file), timeout=30, what="the intake to serve TLS")
    url = f"https://127.0.0.1:{port}{INTAKE_PATH}"

    # Plain HTTP to the TLS port, and a client that does not trust the CA, get nowhere.
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        post(f"http://127.0.0.1:{port}{INTAKE_PATH}", payload(alert(namespace)))
    with pytest.raises(ssl.SSLError):
        served_certificate(port, Path(unrelated_ca_bundle(tmp_path)))

    with alertmanager_for(url, ca_file, tmp_path) as manager:
        started = datetime.now(UTC).replace(microsecond=0)
        manager.post_alerts([{
            "labels": {"alertname": "KubePodOOMKilled", "namespace": namespace, "deployment": "checkout",
                       "severity": "warning", "reason": "OOMKilled"},
            "annotations": {"summary": "checkout was OOM-killed"},
            "startsAt": rfc3339(started), "generatorURL": "http://prometheus.example/graph",
        }])
        created = wait_for(lambda: intake_incidents(test_cluster, namespace), timeout=60,
                           what="the Incident delivered over TLS")
        assert created[0]["spec"]["alertName"] == "KubePodOOMKilled"

    # Rotation: a new pair (and CA) in the directory is loaded into the listening context.
    served_before = served_certificate(port, ca_file)
    second = write_certificate(tls, ["localhost"], ["127.0.0.1"])
    second_ca = tmp_path / "second-ca.crt"
    second_ca.write_bytes(second.ca_pem)
    expected = fingerprint((tls / "tls.crt").read_bytes())
    assert expected != served_before

    def rotated() -> bool:
        try:
            return served_certificate(port, second_ca) == expected
        except ssl.SSLError:
            return False  # still the first certificate

    wait_for(rotated, timeout=90, interval=2, what="the rotated certificate to be served")


def unrelated_ca_bundle(tmp_path: Path) -> str:
    """A CA bundle with an unrelated CA: a client trusting only it cannot verify the intake."""
    other = write_certificate(tmp_path / "unrelated", ["localhost"], ["127.0.0.1"])
    path = tmp_path / "unrelated-ca.crt"
    path.write_bytes(other.ca_pem)
    return str(path)
