"""The test cluster: the real local control plane, or an explicitly named existing cluster."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.devcluster import MARKER_CONFIGMAP, MARKER_NAMESPACE, TEST_CLUSTER_NAME, DevCluster

EXPLICIT_KUBECONFIG_ENV = "FLYWHEEL_TEST_KUBECONFIG"


class ForeignClusterError(RuntimeError):
    """Raised instead of running e2e tests against a cluster that is not the test cluster."""


@dataclass
class TestCluster:
    kubeconfig: str
    kubectl_binary: str
    bin_dir: Path | None
    env: dict[str, str] = field(default_factory=dict)

    __test__ = False  # not a test class, despite its name

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_binary, "--kubeconfig", self.kubeconfig, *args],
            input=input, capture_output=True, text=True, check=False, env=self.env, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
            )
        return result

    def kubectl_json(self, *args: str) -> dict:  # type: ignore[type-arg]
        return json.loads(self.kubectl(*args, "-o", "json").stdout)  # type: ignore[no-any-return]


def _guard_is_test_cluster(cluster: TestCluster) -> None:
    """Refuse anything but our own test cluster: e2e tests create and delete resources."""
    marker = cluster.kubectl(
        "get", "configmap", MARKER_CONFIGMAP, "-n", MARKER_NAMESPACE, "-o", "jsonpath={.data.cluster}",
        check=False,
    )
    if marker.returncode != 0 or marker.stdout.strip() != TEST_CLUSTER_NAME:
        raise ForeignClusterError(
            f"refusing to run e2e tests: {cluster.kubeconfig} does not point at the Flywheel test cluster "
            f"(ConfigMap {MARKER_NAMESPACE}/{MARKER_CONFIGMAP} with cluster={TEST_CLUSTER_NAME} is missing). "
            f"Set {EXPLICIT_KUBECONFIG_ENV} to run against another cluster on purpose."
        )


@contextlib.contextmanager
def ensure_test_cluster() -> Iterator[TestCluster]:
    explicit = os.environ.get(EXPLICIT_KUBECONFIG_ENV)
    if explicit:
        yield TestCluster(kubeconfig=explicit, kubectl_binary="kubectl", bin_dir=None, env=dict(os.environ))
        return
    dev = DevCluster(TEST_CLUSTER_NAME)
    already_running = dev.exists() and dev.apiserver_ready()
    dev.up(with_redis=False, recreate_stopped=True)
    env = dict(dev.env)
    env["KUBECONFIG"] = str(dev.paths.kubeconfig)
    cluster = TestCluster(
        kubeconfig=str(dev.paths.kubeconfig),
        kubectl_binary=str(dev.bin_dir / "kubectl"),
        bin_dir=dev.bin_dir,
        env=env,
    )
    _guard_is_test_cluster(cluster)
    try:
        yield cluster
    finally:
        # Keep a cluster someone else started; stop the one this session started,
        # unless asked to keep it for the next run (saves ~20 s locally).
        if not already_running and os.environ.get("FLYWHEEL_TEST_KEEP_CLUSTER") != "1":
            dev.down()
