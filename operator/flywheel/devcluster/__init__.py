"""The local development control plane: etcd, kube-apiserver, controller-manager,
scheduler and KWOK, run by kwokctl's binary runtime from binaries we build ourselves.

The binaries come from ``hack/build-controlplane.sh`` (Go module proxy, cached by
version). KWOK's fake nodes run the pods, so Deployments roll out for real: the
controller-manager creates ReplicaSets and Pods, the scheduler binds them and KWOK
marks them Running and Ready.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from flywheel.errors import DevClusterError
from flywheel.logs import get_logger

log = get_logger(__name__)

DEFAULT_CLUSTER_NAME = "flywheel"
# Parallel checkouts (one per worktree) each name their own test cluster.
TEST_CLUSTER_NAME = os.environ.get("FLYWHEEL_TEST_CLUSTER_NAME", "flywheel-test")
# Nodes that kwokctl creates carry this annotation; kwok manages only those.
FAKE_NODE_COUNT = 2
# A ConfigMap that marks a cluster as one of ours, so tests can refuse any other cluster.
MARKER_NAMESPACE = "kube-system"
MARKER_CONFIGMAP = "flywheel-dev-cluster"


def cache_root() -> Path:
    return Path(os.environ.get("FLYWHEEL_CACHE_DIR", Path.home() / ".cache" / "flywheel"))


def kwok_workdir() -> Path:
    return Path(os.environ.get("KWOK_WORKDIR", Path.home() / ".kwok"))


def repo_root() -> Path:
    """The source checkout holding ``hack/`` (dev commands run from a checkout)."""
    candidates = [Path(__file__).resolve().parents[3], Path.cwd(), *Path.cwd().parents]
    for candidate in candidates:
        if (candidate / "hack" / "build-controlplane.sh").is_file():
            return candidate
    raise DevClusterError(
        "cannot find hack/build-controlplane.sh: run `flywheel dev` from a Flywheel source checkout"
    )


@dataclass(frozen=True)
class ClusterPaths:
    name: str
    state_dir: Path

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def redis_dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def redis_pidfile(self) -> Path:
        return self.redis_dir / "redis.pid"

    @property
    def redis_port_file(self) -> Path:
        return self.redis_dir / "port"

    @property
    def operator_pidfile(self) -> Path:
        return self.state_dir / "operator.pid"

    @classmethod
    def for_cluster(cls, name: str) -> ClusterPaths:
        return cls(name=name, state_dir=cache_root() / "clusters" / name)


def build_binaries() -> Path:
    """Build (first time) or reuse the cached control-plane binaries; returns their directory."""
    script = repo_root() / "hack" / "build-controlplane.sh"
    log.info("control_plane_binaries_preparing", script=str(script))
    result = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise DevClusterError(f"{script} failed with exit code {result.returncode} (its log is above)")
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    if not (bin_dir / "kube-apiserver").is_file():
        raise DevClusterError(f"{script} did not produce kube-apiserver in {bin_dir}")
    return bin_dir


def _kwokctl_env(bin_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        KWOK_KUBE_APISERVER_BINARY=str(bin_dir / "kube-apiserver"),
        KWOK_KUBE_CONTROLLER_MANAGER_BINARY=str(bin_dir / "kube-controller-manager"),
        KWOK_KUBE_SCHEDULER_BINARY=str(bin_dir / "kube-scheduler"),
        KWOK_CONTROLLER_BINARY=str(bin_dir / "kwok"),
        KWOK_ETCD_BINARY=str(bin_dir / "etcd"),
        KWOK_KUBECTL_BINARY=str(bin_dir / "kubectl"),
        KWOK_KUBE_VERSION=_kube_version_of(bin_dir),
    )
    return env


def _kube_version_of(bin_dir: Path) -> str:
    versions = (repo_root() / "hack" / "versions.env").read_text()
    for line in versions.splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip()
    raise DevClusterError("hack/versions.env has no KUBERNETES_VERSION")


def _run(
    args: list[str], env: dict[str, str], *, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, env=env, input=stdin, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise DevClusterError(
            f"`{' '.join(args)}` failed ({result.returncode}):\n{result.stderr.strip() or result.stdout.strip()}"
        )
    return result


class DevCluster:
    """One named local cluster plus the Redis that the demo and tests use with it."""

    def __init__(self, name: str = DEFAULT_CLUSTER_NAME, bin_dir: Path | None = None) -> None:
        self.name = name
        self.paths = ClusterPaths.for_cluster(name)
        self._bin_dir = bin_dir

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = build_binaries()
        return self._bin_dir

    @property
    def env(self) -> dict[str, str]:
        return _kwokctl_env(self.bin_dir)

    def kwokctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([str(self.bin_dir / "kwokctl"), "--name", self.name, *args], self.env, check=check)

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return _run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.paths.kubeconfig), *args],
            self.env,
            check=check,
            stdin=stdin,
        )

    # -- cluster -----------------------------------------------------------------------

    def exists(self) -> bool:
        listed = self.kwokctl("get", "clusters", check=False).stdout.split()
        return self.name in listed

    def apiserver_ready(self) -> bool:
        if not self.paths.kubeconfig.is_file():
            return False
        return self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0

    def up(self, *, with_redis: bool = True, recreate_stopped: bool = False) -> None:
        """Start the cluster (and Redis); harmless when it already runs.

        A cluster that exists but is stopped is started again, or, with ``recreate_stopped``,
        deleted and created anew: a restarted cluster comes back with the state of the
        processes that were killed — fake nodes whose heartbeats stopped, leader leases of
        dead controllers, pods of deleted namespaces — and settles only minutes later, which
        a test suite must not depend on (creating one takes ~10 s).
        """
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        if self.exists() and not self.apiserver_ready() and recreate_stopped:
            log.info("cluster_recreating", reason="stopped", cluster=self.name)
            self.kwokctl("delete", "cluster", check=False)
        if self.exists() and not self.apiserver_ready():
            log.info("cluster_starting", cluster=self.name)
            if self.kwokctl("start", "cluster", "--wait", "2m", check=False).returncode != 0 or not self._ready_soon():
                # Its processes were killed uncleanly (a session ended, the machine rebooted):
                # a fresh cluster is quicker and safer than repairing it.
                log.warning("cluster_recreating", reason="does not start", cluster=self.name)
                self.kwokctl("delete", "cluster", check=False)
        if not self.exists():
            log.info("cluster_creating", cluster=self.name)
            result = self.kwokctl(
                "create", "cluster", "--runtime", "binary",
                "--kubeconfig", str(self.paths.kubeconfig),
                "--wait", "3m",
                check=False,
            )
            if result.returncode != 0:
                logs = self.kwokctl("logs", "kube-apiserver", check=False).stdout[-3000:]
                raise DevClusterError(
                    f"kwokctl create cluster failed:\n{result.stderr.strip()}\n--- kube-apiserver log ---\n{logs}"
                )
        self._write_kubeconfig()
        self._wait_ready()
        self._ensure_nodes()
        self._mark_cluster()
        if with_redis:
            self.redis_up()

    def _ready_soon(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.apiserver_ready():
                return True
            time.sleep(1)
        return False

    def _write_kubeconfig(self) -> None:
        kubeconfig = self.kwokctl("get", "kubeconfig").stdout
        self.paths.kubeconfig.write_text(kubeconfig)
        self.paths.kubeconfig.chmod(0o600)

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.apiserver_ready() and self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0:
                return
            time.sleep(1)
        raise DevClusterError(f"kube-apiserver of cluster {self.name} not ready within {timeout:.0f}s")

    def _ensure_nodes(self) -> None:
        nodes = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        if len(nodes) < FAKE_NODE_COUNT:
            self.kwokctl("scale", "node", "--replicas", str(FAKE_NODE_COUNT))
        self.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=120s")

    def _mark_cluster(self) -> None:
        manifest = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": MARKER_CONFIGMAP, "namespace": MARKER_NAMESPACE},
                "data": {"cluster": self.name},
            }
        )
        self.kubectl("apply", "-f", "-", stdin=manifest)

    def down(self) -> None:
        """Stop everything ``up`` started: operator (demo), Redis, the cluster."""
        self.operator_down()
        self.redis_down()
        if self.exists():
            self.kwokctl("delete", "cluster")
        if self.paths.kubeconfig.exists():
            self.paths.kubeconfig.unlink()

    # -- redis -------------------------------------------------------------------------

    def redis_url(self) -> str | None:
        if not self.redis_running():
            return None
        return f"redis://127.0.0.1:{self.paths.redis_port_file.read_text().strip()}/0"

    def redis_running(self) -> bool:
        return _pid_alive(self.paths.redis_pidfile)

    def redis_up(self) -> str:
        if self.redis_running():
            url = self.redis_url()
            assert url is not None
            return url
        server = shutil.which("redis-server")
        if server is None:
            raise DevClusterError("redis-server is not installed (apt-get install redis-server)")
        self.paths.redis_dir.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        subprocess.run(
            [
                server, "--bind", "127.0.0.1", "--port", str(port), "--daemonize", "yes",
                "--dir", str(self.paths.redis_dir), "--pidfile", str(self.paths.redis_pidfile),
                "--logfile", str(self.paths.redis_dir / "redis.log"), "--save", "", "--appendonly", "no",
            ],
            check=True,
        )
        self.paths.redis_port_file.write_text(str(port))
        deadline = time.monotonic() + 10
        while not self.redis_running() and time.monotonic() < deadline:
            time.sleep(0.1)
        return f"redis://127.0.0.1:{port}/0"

    def redis_down(self) -> None:
        _stop_pidfile(self.paths.redis_pidfile)

    def operator_down(self) -> None:
        _stop_pidfile(self.paths.operator_pidfile)

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        components: dict[str, str] = {}
        if self.exists():
            # kwokctl lists names only; its binary runtime keeps one pid file per component.
            pids = kwok_workdir() / "clusters" / self.name / "pids"
            for component in self.kwokctl("get", "components", check=False).stdout.split():
                alive = _pid_alive(pids / f"{component}.pid")
                components[component] = "running" if alive else "stopped"
        nodes: list[str] = []
        if self.apiserver_ready():
            nodes = self.kubectl("get", "nodes", "-o", "name", check=False).stdout.split()
        return {
            "cluster": self.name,
            "exists": bool(components) or self.exists(),
            "apiserverReady": self.apiserver_ready(),
            "components": components,
            "nodes": nodes,
            "kubeconfig": str(self.paths.kubeconfig) if self.paths.kubeconfig.exists() else None,
            "redis": self.redis_url(),
            "operatorPid": _read_pid(self.paths.operator_pidfile) if _pid_alive(self.paths.operator_pidfile) else None,
        }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _pid_alive(pidfile: Path) -> bool:
    pid = _read_pid(pidfile)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_pidfile(pidfile: Path, timeout: float = 15.0) -> None:
    import signal

    pid = _read_pid(pidfile)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
