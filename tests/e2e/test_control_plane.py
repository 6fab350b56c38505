"""The local control plane is real: nodes, scheduling, rollouts and scaling work.

Scenario matrix: version stamping; fake nodes Ready; a Deployment reaches its
replicas; a rollout restart (pod-template annotation) completes with a new
ReplicaSet; scaling 1 → 3 completes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster

pytestmark = pytest.mark.e2e


def test_apiserver_reports_the_pinned_version(test_cluster: TestCluster) -> None:
    version = json.loads(test_cluster.kubectl("get", "--raw", "/version").stdout)
    pinned = next(
        line.split("=", 1)[1]
        for line in Path("hack/versions.env").read_text().splitlines()
        if line.startswith("KUBERNETES_VERSION=")
    )
    assert version["gitVersion"] == pinned
    assert version["minor"] == pinned.split(".")[1]


def test_fake_nodes_are_listed_and_ready(test_cluster: TestCluster) -> None:
    nodes = test_cluster.kubectl_json("get", "nodes")["items"]
    assert len(nodes) >= 2
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]
    table = test_cluster.kubectl("get", "nodes").stdout
    assert all(node["metadata"]["name"] in table for node in nodes)


def test_deployment_reaches_ready_replicas(test_cluster: TestCluster, namespace: str) -> None:
    create_deployment(test_cluster, "web", namespace, replicas=2)
    deployment = test_cluster.kubectl_json("get", "deployment", "web", "-n", namespace)
    assert deployment["status"]["readyReplicas"] == 2
    pods = test_cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app=web")["items"]
    assert [pod["status"]["phase"] for pod in pods] == ["Running", "Running"]
    assert all(pod["spec"]["nodeName"] for pod in pods)


def test_rollout_restart_completes_with_a_new_replicaset(test_cluster: TestCluster, namespace: str) -> None:
    create_deployment(test_cluster, "api", namespace, replicas=1)
    test_cluster.kubectl("rollout", "restart", "deployment/api", "-n", namespace)
    test_cluster.kubectl("rollout", "status", "deployment/api", "-n", namespace, "--timeout=120s")
    deployment = test_cluster.kubectl_json("get", "deployment", "api", "-n", namespace)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert "kubectl.kubernetes.io/restartedAt" in annotations
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert deployment["status"]["updatedReplicas"] == deployment["status"]["availableReplicas"] == 1
    replicasets = test_cluster.kubectl_json("get", "replicasets", "-n", namespace, "-l", "app=api")["items"]
    assert len(replicasets) == 2


def test_scale_from_one_to_three_completes(test_cluster: TestCluster, namespace: str) -> None:
    create_deployment(test_cluster, "worker", namespace, replicas=1)
    test_cluster.kubectl("scale", "deployment/worker", "--replicas=3", "-n", namespace)
    test_cluster.kubectl("rollout", "status", "deployment/worker", "-n", namespace, "--timeout=120s")
    deployment = test_cluster.kubectl_json("get", "deployment", "worker", "-n", namespace)
    assert deployment["status"]["readyReplicas"] == 3
    assert deployment["status"]["availableReplicas"] == 3


def test_harness_refuses_a_cluster_without_the_test_marker(test_cluster: TestCluster, tmp_path: Path) -> None:
    from tests.harness.cluster import ForeignClusterError, _guard_is_test_cluster

    foreign = tmp_path / "kubeconfig"
    foreign.write_text(Path(test_cluster.kubeconfig).read_text().replace("https://127.0.0.1", "https://127.0.0.2"))
    impostor = TestCluster(kubeconfig=str(foreign), kubectl_binary=test_cluster.kubectl_binary,
                           bin_dir=test_cluster.bin_dir, env=test_cluster.env)
    with pytest.raises(ForeignClusterError, match="refusing to run e2e tests"):
        _guard_is_test_cluster(impostor)
    _guard_is_test_cluster(test_cluster)  # the real test cluster passes


def test_dev_status_reports_the_running_components(test_cluster: TestCluster) -> None:
    from click.testing import CliRunner

    from flywheel.cli import cli
    from flywheel.devcluster import TEST_CLUSTER_NAME

    if test_cluster.bin_dir is None:
        pytest.skip("FLYWHEEL_TEST_KUBECONFIG points at a cluster that `flywheel dev` did not start")
    result = CliRunner().invoke(cli, ["dev", "status", "--name", TEST_CLUSTER_NAME, "-o", "json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output[result.output.index("{"):])
    assert status["apiserverReady"] is True
    assert set(status["components"]) >= {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                          "kwok-controller"}
    assert set(status["components"].values()) == {"running"}
    assert len(status["nodes"]) >= 2
