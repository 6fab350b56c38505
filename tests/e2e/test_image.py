"""The operator image, built from the Dockerfile here and run as the Deployment runs it.

hack/build-image.sh builds it with buildah (no Docker engine, no registry: the base is a Debian
bookworm made by debootstrap and cached under ~/.cache/flywheel). podman then runs it as the shipped
Deployment's pod would: uid/gid 10001, a read-only root with only the data volume and /tmp writable,
no capabilities, no privilege escalation, the shipped settings (the rendered ConfigMap
flywheel-settings) with the rule catalogue mounted from the rendered ConfigMap flywheel-rules at the
shipped FLYWHEEL_RULES_FILE, the spool on the data volume, JSON logs, the managed webhook
certificate, Kopf peering and the liveness endpoint, acting as a ServiceAccount bound to exactly the
shipped RBAC, against a shared PostgreSQL history.

What differs from a cluster, and why: the local control plane has no kubelet (KWOK fakes the pods),
so the container shares the host's network (it reaches kube-apiserver, Redis and PostgreSQL on
loopback, and kube-apiserver reaches its webhook server on localhost); the ServiceAccount's token
comes in a mounted kubeconfig instead of the projected token volume; ports are free ones instead of
8080/8081/8090/9443 (other tests and developers share the host); the operator watches the test's
namespace instead of all of them (a shared cluster). The webhook configurations are the shipped
ones aimed at localhost, as tests/e2e/test_shipped_install.py explains.

Scenario matrix:
- the image declares what the Deployment relies on (entrypoint ``flywheel run``, user 10001:10001,
  working directory /var/lib/flywheel) and the container runs with those (nothing overridden);
- the operator injects its own CA into the shipped webhooks, and the database migrations it carries
  create the history schema;
- an automatic Incident is remediated (Run Succeeded, the Deployment rolled, Incident Resolved);
- an approval round trip through the admission webhooks (the decider stamped, the Run acts);
- /metrics is scraped from the container and counts both Runs; the liveness endpoint answers.

Runs as root where buildah, debootstrap, podman and runc are installed (hack/setup.sh installs
them, so CI runs it); skipped with the reason otherwise.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OperatorFactory
from tests.e2e.test_manifests import settings_data
from tests.e2e.test_rbac import (
    APPROVER_GROUP,
    PEERING_NAME,
    install_peering_crds,
    operator_account,  # noqa: F401  (fixture)
    wait_until_listening,
)
from tests.e2e.test_runs import FINAL, apply_incident, get, replica_sets, wait_for_run
from tests.e2e.test_shipped_install import (
    approval_round_trip,
    ca_bundles,
    shipped,  # noqa: F401  (fixture)
    shipped_configurations,  # noqa: F401  (fixture)
)
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.ports import free_port
from tests.harness.serviceaccount import ServiceAccountIdentity, only
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/flywheel-operator:e2e"
BUILD = REPO_ROOT / "hack" / "build-image.sh"
# runc: crun 1.8 refuses this sandbox's cgroup layout (v1, with a v2 hierarchy holding a
# controller: "cgroups in hybrid mode not supported, drop all controllers from cgroupv2").
OCI_RUNTIME = os.environ.get("FLYWHEEL_OCI_RUNTIME", "runc")
MISSING = [tool for tool in ("podman", "buildah", "debootstrap", OCI_RUNTIME) if shutil.which(tool) is None]
UID = 10001


@functools.cache
def podman() -> tuple[str, ...]:
    """podman on the store hack/build-image.sh builds into (a store of its own under ~/.cache/flywheel)."""
    storage = subprocess.run(["bash", str(BUILD), "--podman-args"], capture_output=True, text=True, check=True)
    return ("podman", *storage.stdout.split(), "--runtime", OCI_RUNTIME)


def ulimits() -> tuple[str, ...]:
    """Resource limits no higher than this process holds, which is all a runtime can set without
    CAP_SYS_RESOURCE.

    Unasked, podman writes RLIMIT_NOFILE 1048576 into the container's config (and, for ``--ulimit
    host``, its own process count limit, which it has lowered to kernel.pid_max), and the runtime's
    setrlimit then fails before the container starts: "setrlimit `RLIMIT_NOFILE`: Operation not
    permitted" in this sandbox, which runs us without CAP_SYS_RESOURCE.
    """
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    processes = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    processes = pid_max if processes == resource.RLIM_INFINITY else min(processes, pid_max)
    return ("--ulimit", f"nofile={files}:{files}", "--ulimit", f"nproc={processes}:{processes}")


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    """The image built from this checkout; returns its configuration (``podman image inspect``)."""
    if MISSING:
        pytest.skip(f"no container tooling to build and run the image: {', '.join(MISSING)} not installed "
                    "(hack/setup.sh installs it; tests/e2e/test_packaged.py proves the wheel without it)")
    if os.geteuid() != 0:
        pytest.skip("building and running the image needs root (debootstrap, a rootful podman store, "
                    "the data volume owned by uid 10001); tests/e2e/test_packaged.py proves the wheel")
    built = subprocess.run(["bash", str(BUILD), TAG], capture_output=True,
                           text=True, timeout=1500, check=False)
    assert built.returncode == 0, f"hack/build-image.sh:\n{built.stdout[-3000:]}{built.stderr[-6000:]}"
    inspected = subprocess.run([*podman(), "image", "inspect", TAG], capture_output=True, text=True, check=True)
    [configuration] = json.loads(inspected.stdout)
    return configuration  # type: ignore[no-any-return]


@pytest.fixture()
def container_name() -> Iterator[str]:
    """A name for the operator's container, removed after the test even if podman was killed.

    Requested before start_operator, so that it is torn down after the operator was stopped.
    """
    name = f"flywheel-e2e-{uuid.uuid4().hex[:10]}"
    yield name
    subprocess.run([*podman(), "rm", "--force", "--time", "0", "--ignore", name], capture_output=True, check=False)


def pod_volumes(shipped_documents: list[dict[str, Any]], pod: dict[str, Any], root: Path) -> dict[str, Path]:
    """Host directories standing in for the pod's volumes: the rules ConfigMap's files and an emptyDir
    owned by the pod's fsGroup (the kubelet would make it so)."""
    rules = root / "rules"
    rules.mkdir()
    [configmap] = [volume["configMap"]["name"] for volume in pod["volumes"] if volume["name"] == "rules"]
    for key, text in only(shipped_documents, "ConfigMap", configmap)["data"].items():
        (rules / key).write_text(text)
        (rules / key).chmod(0o644)
    rules.chmod(0o755)
    data = root / "data"
    data.mkdir()
    os.chown(data, UID, UID)
    data.chmod(0o770)
    return {"rules": rules, "data": data}


# The first build on a machine bootstraps the base (about 3 minutes here); the default 300 s
# covers fixture setup too.
@pytest.mark.timeout(1800)
def test_the_image_runs_as_the_deployment_does_remediates_approves_and_serves_metrics(
    test_cluster: TestCluster,
    namespace: str,
    clean_redis_url: str,
    postgres_url: str,
    image: dict[str, Any],
    container_name: str,
    operator_account: ServiceAccountIdentity,  # noqa: F811
    shipped: list[dict[str, Any]],  # noqa: F811
    shipped_configurations: dict[str, int],  # noqa: F811
    tmp_path: Path,
    # Last: torn down first, so the operator stops while its RBAC and webhooks still exist (it
    # removes itself from the peering on SIGTERM).
    start_operator: OperatorFactory,
) -> None:
    declared = image["Config"]
    assert (declared["Entrypoint"], declared["User"], declared["WorkingDir"]) == (
        ["flywheel", "run"], f"{UID}:{UID}", "/var/lib/flywheel"), declared

    deployment = only(shipped, "Deployment", "flywheel-operator")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert (pod["securityContext"]["runAsUser"], container["securityContext"]["readOnlyRootFilesystem"]) == (UID, True)
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    volumes = pod_volumes(shipped, pod, tmp_path)
    settings = settings_data(shipped)
    rules_file = Path(settings["FLYWHEEL_RULES_FILE"])
    assert rules_file.parent == Path(mounts["rules"]) and (volumes["rules"] / rules_file.name).is_file()
    assert Path(settings["FLYWHEEL_HISTORY_SPOOL_DIR"]).is_relative_to(mounts["data"])

    # The ServiceAccount's token kubeconfig, readable by the container's user (the harness keeps it 0600).
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copyfile(operator_account.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)

    install_peering_crds(test_cluster, namespace)
    for target in ("checkout", "payments"):
        create_deployment(test_cluster, target, namespace)
    test_cluster.kubectl("create", "role", "approver", "-n", namespace, "--verb=get,list,watch,patch",
                         "--resource=approvals.flywheel.dev")
    test_cluster.kubectl("create", "rolebinding", "approver", "-n", namespace, "--role=approver",
                         f"--group={APPROVER_GROUP}")
    revisions_before = len(replica_sets(test_cluster, namespace, "checkout"))

    webhook_port = shipped_configurations["port"]
    metrics_port, intake_port, liveness_port = free_port(), free_port(), free_port()
    # The shipped settings as they are, but for the endpoints of the pod's network (free ports here)
    # and Redis (the test's); what the test scopes or shortens is named below.
    shipped_env = {key.removeprefix("FLYWHEEL_").lower(): value for key, value in settings.items()
                   if key.startswith("FLYWHEEL_") and value}
    for endpoint in ("redis_url", "metrics_port", "intake_port", "webhook_port"):
        shipped_env.pop(endpoint)
    pod_name = f"flywheel-operator-{uuid.uuid4().hex[:6]}"
    # The harness runs `COMMAND run RUN_ARGS --namespace NS`: here `podman container run OPTIONS
    # IMAGE ARGS --namespace NS`, the last two the container's.
    podman_run = (
        "--rm", "--name", container_name, "--pull", "never", "--network", "host",
        *ulimits(),
        # The pod's securityContext: no user or working directory given, the image's are the
        # Deployment's (asserted above).
        "--read-only", "--read-only-tmpfs=false", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--volume", f"{volumes['rules']}:{mounts['rules']}:ro",
        "--volume", f"{volumes['data']}:{mounts['data']}",
        "--tmpfs", f"{mounts['tmp']}:rw,mode=1777,size=64m",
        "--volume", f"{kubeconfig}:/etc/flywheel/kubeconfig:ro",
        "--env", "KUBECONFIG=/etc/flywheel/kubeconfig",
        "--env", f"POD_NAME={pod_name}", "--env", f"POD_NAMESPACE={namespace}",
        # Every FLYWHEEL_* setting the harness gives the podman process (below), as envFrom would.
        "--env", "FLYWHEEL_*",
        TAG,
        # The image's entrypoint (`flywheel run`) with the Deployment's arguments; the harness adds
        # `--namespace NAMESPACE` last.
        f"--peering={PEERING_NAME}", f"--liveness=http://127.0.0.1:{liveness_port}/healthz",
    )
    operator = start_operator(
        clean_redis_url,
        postgres_url,
        command=(*podman(), "container"),
        run_args=podman_run,
        **{
            **shipped_env,
            "namespace": namespace,
            "remediation_namespaces": namespace,
            "metrics_port": str(metrics_port),
            "intake_port": str(intake_port),
            "webhook_port": str(webhook_port),
            "webhook_cert_dns_names": "localhost",
        },
    )
    wait_until_listening(webhook_port)
    wait_for(lambda: all(ca_bundles(test_cluster)), timeout=60, what="the operator's CA in every webhook")

    apply_incident(test_cluster, namespace, "checkout-oom", "checkout")
    assert wait_for_run(test_cluster, namespace, "checkout-oom-1", *FINAL, timeout=120)["state"] == "Succeeded"
    assert len(replica_sets(test_cluster, namespace, "checkout")) == revisions_before + 1
    wait_for(lambda: get(test_cluster, namespace, "incident", "checkout-oom").get("status", {}).get("phase") == "Resolved",
             timeout=60, what="the Incident resolved")

    approval_round_trip(test_cluster, namespace, "payments-oom", "payments")

    def scrape(port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.read().decode()  # type: ignore[no-any-return]

    def succeeded_runs() -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in scrape(metrics_port, "/metrics").splitlines()
                   if line.startswith("flywheel_runs{") and 'state="Succeeded"' in line)

    assert wait_for(lambda: succeeded_runs() >= 2, timeout=60, what="both Runs counted in /metrics")
    assert json.loads(scrape(liveness_port, "/healthz")) is not None
    # Every line the container wrote is JSON (the shipped FLYWHEEL_LOG_FORMAT); the migrations the
    # image carries created the history schema, and the catalogue came from the mounted ConfigMap.
    events = [json.loads(line) for line in operator.log().splitlines() if line and not line.startswith("=====")]
    assert any(event["event"] == "history_database_migrated" for event in events)
    assert {event.get("rules_file") for event in events if event["event"] == "catalogue_reload_started"} == {
        settings["FLYWHEEL_RULES_FILE"]}
