"""The rule catalogue reloaded by the running operator, as a mounted ConfigMap is updated in place.

The catalogue file lives in a directory laid out like a ConfigMap volume and is updated like
the kubelet's atomic writer does it (a new ``..<timestamp>`` directory, the ``..data`` symlink
swapped). The operator runs as if in a Pod (``POD_NAME``/``POD_NAMESPACE`` name a real Pod of
the test namespace standing in for the operator's own). Scenario:
- the operator decides with the catalogue it started with;
- a rule added on disk (a selector rule binding KubePodOOMKilled in this namespace to Scale)
  takes effect on the next Incident, without a restart; counted ``loaded``;
- a broken edit (not YAML) is refused: one Warning Event ``RuleCatalogueRefused`` on the Pod,
  counted ``refused``, logged once; the next Incident is still decided by the rule added before;
- a later fix is picked up and decides the next Incident;
- the metrics show the reloads by result and the hash of the catalogue in force; a real
  Prometheus loaded with the shipped PrometheusRule (``for`` shortened to 1 s) fires
  FlywheelRuleCatalogueRefused while the broken version is on disk, and no more once it is fixed.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from flywheel.controllers.catalogue_reload import DIGEST_LABEL_LENGTH
from tests.conftest import OperatorFactory
from tests.e2e.test_runs import apply_incident, get
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.ports import free_port
from tests.harness.prometheus import PrometheusServer, prometheus_server
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RULES = (ROOT / "operator" / "flywheel" / "rules" / "default.yaml").read_text()
PROMETHEUS_RULE = ROOT / "manifests" / "monitoring" / "prometheusrule.yaml"
ALERT = "FlywheelRuleCatalogueRefused"


@pytest.fixture()
def alert_rules(tmp_path: Path) -> Path:
    """The shipped PrometheusRule's groups, the refusal alert's ``for`` shortened to 1 s."""
    groups = yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"]
    (rule,) = [rule for group in groups for rule in group["rules"] if rule.get("alert") == ALERT]
    assert rule["for"] == "5m"
    rule["for"] = "1s"
    path = tmp_path / "flywheel-alerts.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def firing(prometheus: PrometheusServer) -> list[dict[str, Any]]:
    alerts = prometheus.api("/api/v1/alerts")["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == ALERT and a["state"] == "firing"]


def team_rule(name: str, namespace: str, action: str) -> str:
    return f"""
- name: {name}
  match:
    alertnames: [KubePodOOMKilled]
    namespaces: ["{namespace}"]
  action: {action}
  risk: low
"""


class ConfigMapVolume:
    """A ConfigMap volume's layout, updated as the kubelet's atomic writer updates it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()

    def write(self, content: str) -> str:
        self.generation += 1
        version_dir = self.root / f"..2025_03_01_12_00_{self.generation:02d}.000000001"
        version_dir.mkdir()
        (version_dir / "rules.yaml").write_text(content)
        (self.root / "..data_tmp").symlink_to(version_dir.name)
        os.replace(self.root / "..data_tmp", self.root / "..data")
        if not (self.root / "rules.yaml").is_symlink():
            (self.root / "rules.yaml").symlink_to("..data/rules.yaml")
        return hashlib.sha256(content.encode()).hexdigest()[:DIGEST_LABEL_LENGTH]

    @property
    def path(self) -> Path:
        return self.root / "rules.yaml"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def reloads(port: int, result: str) -> float:
    for line in scrape(port).splitlines():
        if line.startswith(f'flywheel_rule_catalogue_reloads_total{{result="{result}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def matched_rule(cluster: TestCluster, namespace: str, name: str) -> str | None:
    decision = (get(cluster, namespace, "incident", name).get("status") or {}).get("decision") or {}
    return decision.get("matchedRule")


def decide(cluster: TestCluster, namespace: str, name: str, error_type: str) -> str:
    # A distinct errorType per Incident: a distinct anomaly, never a Duplicate of the one before.
    apply_incident(cluster, namespace, name, "checkout", errorType=error_type)
    rule = wait_for(lambda: matched_rule(cluster, namespace, name), timeout=60, what=f"{name} decided")
    return str(rule)


def refusal_events(cluster: TestCluster, namespace: str, pod: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector",
        f"involvedObject.kind=Pod,involvedObject.name={pod},reason=RuleCatalogueRefused")["items"]
    return items


def test_a_catalogue_edited_on_disk_is_reloaded_and_a_broken_edit_refused(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory,
    tmp_path: Path, alert_rules: Path,
) -> None:
    create_deployment(test_cluster, "checkout", namespace)
    pod = test_cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app=checkout")["items"][0]
    volume = ConfigMapVolume(tmp_path / "rules")
    first = volume.write(DEFAULT_RULES)
    port = free_port()
    operator = start_operator(redis_url=clean_redis_url, rules_file=str(volume.path), rules_reload_seconds="0.5",
                              metrics_port=str(port), metrics_bind_address="127.0.0.1", intake_port="0")
    # Run as if in that Pod: the downward API's variables name it.
    operator.stop()
    operator.env.update(POD_NAME=pod["metadata"]["name"], POD_NAMESPACE=namespace)
    operator.start()

    with prometheus_server([f"127.0.0.1:{port}"], rule_files=[alert_rules]) as prometheus:
        assert decide(test_cluster, namespace, "oom-1", "OOMKilled-1") == "pod_crash"
        assert f'flywheel_rule_catalogue_info{{rules="5",sha256="{first}"}} 1.0' in scrape(port)

        added = volume.write(team_rule("team_oom", namespace, "{type: Scale, params: {replicas: 2}}") + DEFAULT_RULES)
        wait_for(lambda: reloads(port, "loaded") == 1, timeout=30, what="the new catalogue to be loaded")
        assert decide(test_cluster, namespace, "oom-2", "OOMKilled-2") == "team_oom"
        assert get(test_cluster, namespace, "runs.flywheel.dev", "oom-2-1")["spec"]["action"]["type"] == "Scale"

        # An edit that loses a brace: not YAML any more.
        volume.write(team_rule("team_oom_v2", namespace, "{type: RolloutRestart") + DEFAULT_RULES)
        wait_for(lambda: reloads(port, "refused") == 1, timeout=30, what="the broken catalogue to be refused")
        (event,) = wait_for(lambda: refusal_events(test_cluster, namespace, pod["metadata"]["name"]), timeout=30,
                            what="the Warning Event on the operator's Pod")
        assert event["type"] == "Warning"
        assert event["involvedObject"]["uid"] == pod["metadata"]["uid"]
        assert str(volume.path) in event["message"] and "not valid YAML" in event["message"]
        assert f"sha256 {added}" in event["message"] and "stays in force" in event["message"]
        assert decide(test_cluster, namespace, "oom-3", "OOMKilled-3") == "team_oom", "the old catalogue works"
        wait_for(lambda: firing(prometheus), timeout=60, what=f"{ALERT} firing")
        assert prometheus.value("flywheel_rule_catalogue_refused") == 1
        assert f'sha256="{added}"' in scrape(port)

        fixed = volume.write(team_rule("team_oom_v2", namespace, "{type: RolloutRestart}") + DEFAULT_RULES)
        wait_for(lambda: reloads(port, "loaded") == 2, timeout=30, what="the fixed catalogue to be loaded")
        assert decide(test_cluster, namespace, "oom-4", "OOMKilled-4") == "team_oom_v2"
        assert f'sha256="{fixed}"' in scrape(port)
        assert reloads(port, "refused") == 1
        assert len(refusal_events(test_cluster, namespace, pod["metadata"]["name"])) == 1
        assert operator.log().count("rule_catalogue_refused") == 1, "logged once per broken version"
        wait_for(lambda: prometheus.value("flywheel_rule_catalogue_refused") == 0, timeout=60,
                 what="the refusal gauge back to 0")
        wait_for(lambda: not firing(prometheus), timeout=60, what=f"{ALERT} no longer firing")
