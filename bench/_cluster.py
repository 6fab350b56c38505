"""Shared pieces of the end-to-end benchmarks: the control plane, Redis, the operator process,
a plain asyncio Kubernetes client, and the API server's own request counters.

Everything here is real: a named local control plane (``flywheel dev up --name``), a private
redis-server, ``flywheel run`` as a subprocess, and the kube-apiserver's
``apiserver_request_total`` metric as the count of API requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp
import psutil
import redis
import yaml

from flywheel.devcluster import DevCluster, kwok_workdir

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLUSTER = "flywheel-bench"
SERVER_START_DEADLINE_SECONDS = 10.0
READY_MARK = "Initial authentication has finished"
GROUP_VERSION = "flywheel.dev/v1alpha1"
TERMINAL_RUN_STATES = frozenset({"Succeeded", "Failed", "Cancelled", "TimedOut"})
# A Run that left Pending (and WaitingApproval) has been admitted and is executing or done.
STARTED_RUN_STATES = frozenset({"Running", "Verifying"}) | TERMINAL_RUN_STATES
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})
# The processes whose CPU a phase reports (kwokctl keeps a pid file for each).
CONTROL_PLANE_COMPONENTS = ("kube-apiserver", "etcd", "kube-controller-manager", "kwok-controller")
# KWOK runs pods only on its fake nodes, which carry this taint.
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


# --------------------------------------------------------------------------- processes


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def private_redis_server() -> Iterator[str]:
    """A throw-away redis-server (no persistence) on a free loopback port; yields its URL."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server not found on PATH (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-redis-") as workdir:
        port = free_loopback_port()
        log_path = Path(workdir) / "redis.log"
        command = [
            executable,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", workdir,
            "--logfile", str(log_path),
        ]  # fmt: skip
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            wait_until_answering(url, server, log_path)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def wait_until_answering(url: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_DEADLINE_SECONDS
    probe = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        while True:
            if server.poll() is not None:
                log = log_path.read_text() if log_path.exists() else ""
                raise SystemExit(f"redis-server exited with {server.returncode}:\n{log}")
            try:
                probe.ping()
                return
            except redis.exceptions.ConnectionError as exc:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"redis-server did not answer within {SERVER_START_DEADLINE_SECONDS:.0f} s"
                    ) from exc
                time.sleep(0.05)
    finally:
        probe.close()


@dataclass(frozen=True)
class ProcessUsage:
    cpu_seconds: float
    rss_bytes: int
    peak_rss_bytes: int


class OperatorProcess:
    """``python -m flywheel run --standalone -n NS...`` with FLYWHEEL_* settings, read from /proc."""

    def __init__(self, kubeconfig: Path, namespaces: Sequence[str], settings: Mapping[str, str],
                 log_path: Path, *, profile_path: Path | None = None) -> None:
        self.log_path = log_path
        # cProfile writes its statistics when the operator exits (SIGTERM is a clean stop).
        profiler = ["-m", "cProfile", "-o", str(profile_path)] if profile_path else []
        self.command = [sys.executable, *profiler, "-m", "flywheel", "run", "--standalone"]
        for namespace in namespaces:
            self.command += ["--namespace", namespace]
        self.env = {
            **os.environ,
            # The operator keeps its Secrets (the Run-binding and approval signing key) in its own
            # namespace, and acts only where namespaces opt in: the bench's namespaces are both.
            "FLYWHEEL_NAMESPACE": namespaces[0],
            "FLYWHEEL_REMEDIATION_NAMESPACES": ",".join(namespaces),
            **{f"FLYWHEEL_{name.upper()}": value for name, value in settings.items()},
            "KUBECONFIG": str(kubeconfig),
            "PYTHONUNBUFFERED": "1",
            # As in the shipped image (Dockerfile); override it to measure without.
            "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2"),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"operator exited with {self.process.returncode}:\n{self.log_tail()}")
            if READY_MARK in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise SystemExit(f"operator not ready within {timeout:.0f} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def usage(self) -> ProcessUsage:
        """CPU seconds (user + system) and resident memory, now and at its peak (VmHWM)."""
        process = psutil.Process(self.pid)
        times = process.cpu_times()
        peak = 0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
        return ProcessUsage(times.user + times.system, process.memory_info().rss, peak)

    def log_tail(self, characters: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:] if self.log_path.exists() else ""

    def errors_in_log(self) -> int:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return len(re.findall(r"\b(ERROR|Traceback)\b", text))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --------------------------------------------------------------------------- the cluster


class BenchCluster:
    """A named local control plane (KWOK fake nodes) with Flywheel's CRDs installed."""

    def __init__(self, name: str = DEFAULT_CLUSTER) -> None:
        self.dev = DevCluster(name)
        self.leftover_namespaces: list[str] = []

    @property
    def kubeconfig(self) -> Path:
        return self.dev.paths.kubeconfig

    def up(self) -> None:
        self.dev.up(with_redis=False, recreate_stopped=True)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")

    def down(self) -> None:
        self.dev.down()

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return self.dev.kubectl(*args, stdin=stdin, check=check).stdout

    def create_namespace(self, namespace: str) -> None:
        manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        self.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))

    def wait_for_quiet(self, prefix: str = "bench-", timeout: float = 300.0) -> None:
        """Wait until earlier runs' namespaces are gone: their deletion would count as our requests."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            names = self.kubectl("get", "namespaces", "-o", "name").split()
            if not any(name.removeprefix("namespace/").startswith(prefix) for name in names):
                return
            time.sleep(2)
        print(f"warning: namespaces {prefix}* still being deleted after {timeout:.0f} s; request counts are noisier")

    def delete_namespace(self, namespace: str) -> None:
        self.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")

    def create_deployments(self, namespace: str, names: Sequence[str], timeout_seconds: int = 300) -> None:
        """Deployments whose pods KWOK runs, so that a restart really rolls out; waits until available."""
        items = [deployment_manifest(name, namespace) for name in names]
        self.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        self.kubectl("wait", "--for=condition=Available", "deployment", "--all", "-n", namespace,
                     f"--timeout={timeout_seconds}s")

    def control_plane_cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) each control-plane process has used so far, from /proc.

        The API server shares the machine with the operator: what it spends per Incident bounds
        the throughput as much as the operator's own CPU does.
        """
        pids = kwok_workdir() / "clusters" / self.dev.name / "pids"
        used: dict[str, float] = {}
        for component in CONTROL_PLANE_COMPONENTS:
            try:
                times = psutil.Process(int((pids / f"{component}.pid").read_text().strip())).cpu_times()
            except (FileNotFoundError, ValueError, psutil.Error):
                continue
            used[component] = times.user + times.system
        return used

    def request_counts(self) -> Counter[tuple[str, str, str, str]]:
        """The API server's request counter: (verb, resource, subresource, dry_run) -> requests."""
        return parse_request_counts(self.kubectl("get", "--raw", "/metrics"))


def deployment_manifest(name: str, namespace: str, replicas: int = 1) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "app", "image": "registry.example/flywheel-sample:1.0"}],
                    "tolerations": [KWOK_TOLERATION],
                },
            },
        },
    }


_REQUEST_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_request_counts(metrics_text: str) -> Counter[tuple[str, str, str, str]]:
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for line in metrics_text.splitlines():
        match = _REQUEST_LINE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""),
               labels.get("dry_run", ""))
        counts[key] += int(float(match["value"]))
    return counts


@dataclass
class RequestTally:
    """API requests between two snapshots, less the background noise and our own client's requests."""

    counts: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)

    @classmethod
    def between(
        cls,
        before: Counter[tuple[str, str, str, str]],
        after: Counter[tuple[str, str, str, str]],
        *,
        noise_per_second: Mapping[tuple[str, str, str, str], float] | None = None,
        seconds: float = 0.0,
        own: Mapping[tuple[str, str, str, str], int] | None = None,
    ) -> RequestTally:
        counts: Counter[tuple[str, str, str, str]] = Counter()
        for key in set(after) | set(before):
            value = after.get(key, 0) - before.get(key, 0)
            value -= round((noise_per_second or {}).get(key, 0.0) * seconds)
            value -= (own or {}).get(key, 0)
            if value > 0:
                counts[key] = value
        return cls(counts)

    def writes(self, *, dry_run: bool | None = None) -> int:
        return sum(
            count for (verb, _, _, dry), count in self.counts.items()
            if verb in WRITE_VERBS and (dry_run is None or bool(dry) == dry_run)
        )

    def total(self) -> int:
        return sum(self.counts.values())

    def breakdown(self, per: float, *, writes_only: bool = True) -> list[str]:
        rows = []
        for (verb, resource, subresource, dry), count in sorted(self.counts.items(), key=lambda item: -item[1]):
            if writes_only and verb not in WRITE_VERBS:
                continue
            what = resource + (f"/{subresource}" if subresource else "") + (" (dry run)" if dry else "")
            rows.append(f"{verb:>6} {what:<28} {count:>7}  {count / per:6.2f} per incident")
        return rows


def noise_rate(cluster: BenchCluster, seconds: float) -> dict[tuple[str, str, str, str], float]:
    """Requests per second the control plane makes on its own (leases, node heartbeats, ...)."""
    before = cluster.request_counts()
    time.sleep(seconds)
    after = cluster.request_counts()
    return {key: (after[key] - before.get(key, 0)) / seconds for key in after if after[key] > before.get(key, 0)}


# --------------------------------------------------------------------------- asyncio client


class KubeClient:
    """A plain aiohttp client for the API server, from the kubeconfig's client certificate."""

    def __init__(self, kubeconfig: Path, connections: int = 64) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        self.server = cluster["server"].rstrip("/")
        self._workdir = tempfile.TemporaryDirectory(prefix="flywheel-bench-client-")
        certificate = Path(self._workdir.name) / "client.crt"
        key = Path(self._workdir.name) / "client.key"
        certificate.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        self._ssl = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        self._ssl.load_cert_chain(certificate, key)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self.requests: Counter[tuple[str, str, str, str]] = Counter()

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._connections),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()
        self._workdir.cleanup()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    @staticmethod
    def path(plural: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        path = f"/apis/{GROUP_VERSION}/namespaces/{namespace}/{plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path

    async def request(self, method: str, path: str, body: Any = None, *, resource: str,
                      subresource: str = "", content_type: str = "application/json",
                      verb: str | None = None) -> dict[str, Any]:
        counted = (verb or method, resource, subresource, "")
        self.requests[counted] += 1
        data = json.dumps(body) if body is not None else None
        for attempt in range(5):
            async with self.session.request(method, self.server + path, data=data,
                                            headers={"Content-Type": content_type}) as response:
                payload = await response.json(content_type=None)
                if response.status == 429 or response.status >= 500:
                    await asyncio.sleep(0.2 * (attempt + 1))
                    self.requests[counted] += 1
                    continue
                if response.status >= 300:
                    raise RuntimeError(f"{method} {path}: {response.status} {payload.get('message')}")
                return dict(payload)
        raise RuntimeError(f"{method} {path}: the API server kept refusing")

    async def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", self.path(plural, namespace), body, resource=plural)

    async def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return await self.request(
            "PATCH", self.path(plural, namespace, name, "status"), {"status": status}, resource=plural,
            subresource="status", content_type="application/merge-patch+json",
        )

    async def delete(self, plural: str, namespace: str, name: str) -> None:
        self.requests[("DELETE", plural, "", "")] += 1
        async with self.session.delete(self.server + self.path(plural, namespace, name)) as response:
            await response.read()

    async def list(self, plural: str, namespace: str) -> dict[str, Any]:
        return await self.request("GET", self.path(plural, namespace), resource=plural, verb="LIST")

    async def watch(self, plural: str, namespace: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Every change of ``plural`` in ``namespace``, from now on (re-connecting on timeouts)."""
        listed = await self.list(plural, namespace)
        for item in listed.get("items") or []:
            yield "ADDED", item
        version = listed["metadata"]["resourceVersion"]
        while True:
            self.requests[("WATCH", plural, "", "")] += 1
            url = (f"{self.server}{self.path(plural, namespace)}?watch=1&allowWatchBookmarks=true"
                   f"&timeoutSeconds=300&resourceVersion={version}")
            async with self.session.get(url) as response:
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    body = event["object"]
                    if event["type"] == "ERROR":
                        listed = await self.list(plural, namespace)  # 410 Gone: start over
                        version = listed["metadata"]["resourceVersion"]
                        for item in listed.get("items") or []:
                            yield "ADDED", item
                        break
                    version = body["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        yield event["type"], body


# --------------------------------------------------------------------------- objects and figures


def incident_manifest(name: str, *, service: str, target: str, mode: str,
                      alert_name: str = "KubePodCrashLooping", error_type: str = "CrashLoopBackOff") -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Incident",
        "metadata": {"name": name},
        "spec": {
            "alertName": alert_name,
            "service": service,
            "errorType": error_type,
            "severity": "P2",
            "source": "bench",
            "summary": f"{service} pods crash-looping (benchmark)",
            "targetRef": {"kind": "Deployment", "name": target},
            "remediation": {"mode": mode},
        },
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 100 values is the 99th)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


def describe_latencies(values: Sequence[float]) -> str:
    if not values:
        return "no samples"
    return (f"p50 {percentile(values, 0.50):.2f} s, p95 {percentile(values, 0.95):.2f} s, "
            f"p99 {percentile(values, 0.99):.2f} s, max {max(values):.2f} s, mean {statistics.fmean(values):.2f} s "
            f"({len(values)} samples)")


def megabytes(value: int) -> str:
    return f"{value / 2**20:.0f} MB"
