"""Sample workloads for e2e tests: Deployments whose pods KWOK runs on fake nodes."""

from __future__ import annotations

import json

from tests.harness.cluster import TestCluster


def deployment_manifest(name: str, namespace: str, replicas: int = 1) -> str:
    labels = {"app": name}
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": replicas,
                "revisionHistoryLimit": 5,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [{"name": "app", "image": "registry.example/flywheel-sample:1.0"}],
                        # KWOK runs pods only on its fake nodes, which carry this taint.
                        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                    },
                },
            },
        }
    )


def create_deployment(cluster: TestCluster, name: str, namespace: str, replicas: int = 1) -> None:
    cluster.kubectl("apply", "-f", "-", input=deployment_manifest(name, namespace, replicas))
    cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=120s")
