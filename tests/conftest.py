"""Shared fixtures: real Redis, real PostgreSQL and the real local control plane.

Nothing here is mocked. When a component cannot start, the fixture fails with the
reason; it never skips (in CI a skipped e2e test would hide a broken foundation).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from pytest_redis import factories as redis_factories
from pytest_redis.executor import RedisExecutor

from tests.harness.cluster import TestCluster, ensure_test_cluster
from tests.harness.operator import OperatorProcess
from tests.harness.postgres import PostgresServer, start_postgres
from tests.harness.redis_failover import Failover, redis_executor

redis_proc = redis_factories.redis_proc(host="127.0.0.1", port=None, timeout=30)


@pytest.fixture(scope="session")
def redis_url(redis_proc: object) -> str:
    """URL of a real redis-server started for this test session on a free loopback port."""
    return f"redis://{redis_proc.host}:{redis_proc.port}/0"  # type: ignore[attr-defined]


@pytest.fixture()
def clean_redis_url(redis_url: str) -> Iterator[str]:
    """The session Redis, emptied before the test so that counts start from zero."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    yield redis_url


@pytest.fixture()
def own_redis() -> Iterator[RedisExecutor]:
    """A Redis this test may stop and start again on the same port (outage scenarios)."""
    executor = redis_executor()
    executor.start()
    yield executor
    executor.stop()


@pytest.fixture()
def redis_failover(own_redis: RedisExecutor) -> Iterator[Failover]:
    """Demotes ``own_redis`` into a read-only replica of another Redis (a failover) and back."""
    new_primary = redis_executor()
    new_primary.start()
    failover = Failover(own_redis, new_primary)
    try:
        yield failover
    finally:
        failover.promote()
        failover.close()
        new_primary.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for this session (Debian's cluster tools when running as root)."""
    with start_postgres() as server:
        yield server


@pytest.fixture()
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server (psycopg 3 URL)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    postgres_server.create_database(name)
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def test_cluster() -> Iterator[TestCluster]:
    """The local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok).

    Started by ``flywheel dev up --name flywheel-test`` unless ``FLYWHEEL_TEST_KUBECONFIG``
    points at a cluster explicitly. Refuses a kubeconfig that is not the test cluster.
    """
    with ensure_test_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kubeconfig(test_cluster: TestCluster) -> str:
    return test_cluster.kubeconfig


@pytest.fixture()
def namespace(test_cluster: TestCluster) -> Iterator[str]:
    """A fresh namespace per test, opted in to remediation, deleted afterwards (without waiting)."""
    with fresh_namespace(test_cluster, {"flywheel.dev/remediation": "enabled"}) as name:
        yield name


@pytest.fixture()
def unlabelled_namespace(test_cluster: TestCluster) -> Iterator[str]:
    """A fresh namespace that has not opted in to remediation (no flywheel.dev/remediation label)."""
    with fresh_namespace(test_cluster, {}) as name:
        yield name


@contextlib.contextmanager
def fresh_namespace(test_cluster: TestCluster, labels: dict[str, str]) -> Iterator[str]:
    name = f"fw-{uuid.uuid4().hex[:8]}"
    test_cluster.kubectl("create", "namespace", name)
    try:
        if labels:
            test_cluster.kubectl("label", "namespace", name, *(f"{key}={value}" for key, value in labels.items()))
        yield name
    finally:
        test_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def flywheel_crds(test_cluster: TestCluster) -> None:
    """The generated CRDs from crds/, applied to the test cluster and Established."""
    crds = Path(__file__).resolve().parents[1] / "crds"
    test_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    test_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


OperatorFactory = Callable[..., OperatorProcess]


@pytest.fixture()
def start_operator(
    test_cluster: TestCluster, flywheel_crds: None, namespace: str, tmp_path: Path
) -> Iterator[OperatorFactory]:
    """Start the real operator for this test's namespace: ``start_operator(redis_url=..., **env)``.

    The process is stopped after the test; its log is printed when the test fails.
    """
    started: list[OperatorProcess] = []

    def factory(
        redis_url: str,
        database_url: str | None = None,
        *,
        run_args: Sequence[str] = ("--standalone",),
        kubeconfig: str | None = None,
        command: Sequence[str] | None = None,
        cwd: Path | None = None,
        **env: str,
    ) -> OperatorProcess:
        environment = {
            "FLYWHEEL_REDIS_URL": redis_url,
            "FLYWHEEL_DATABASE_URL": database_url or f"sqlite:///{tmp_path / 'flywheel.db'}",
            "FLYWHEEL_LOG_LEVEL": "INFO",
            # Several operators run at once (tests, developers): no fixed ports unless asked.
            "FLYWHEEL_INTAKE_PORT": "0",
            "FLYWHEEL_METRICS_PORT": "0",
            # Secrets the operator keeps (the approval signing key) live in the test's namespace.
            "FLYWHEEL_NAMESPACE": namespace,
            # The operator's own namespace is protected: only the list opts it in (a label is not enough).
            "FLYWHEEL_REMEDIATION_NAMESPACES": namespace,
            # The symptom is checked as soon as the rollout completes (tests that need a window set one).
            "FLYWHEEL_VERIFICATION_WINDOW_SECONDS": "0",
            **{f"FLYWHEEL_{key.upper()}": value for key, value in env.items()},
        }
        process = OperatorProcess(
            test_cluster,
            namespace,
            environment,
            tmp_path / f"operator-{len(started)}.log",
            run_args=run_args,
            kubeconfig=kubeconfig,
            command=command,
            cwd=cwd,
        )
        process.start()
        started.append(process)
        return process

    yield factory
    for process in started:
        process.stop()
    # A killed loopback-webhook operator leaves its configurations behind; with failurePolicy
    # Fail they would refuse every later write in this namespace, its deletion included.
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        test_cluster.kubectl("delete", kind, f"flywheel-{namespace}", "--ignore-not-found", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and "start_operator" in getattr(item, "fixturenames", ()):
        logs = sorted(Path(str(item.funcargs.get("tmp_path", "."))).glob("operator-*.log"))  # type: ignore[attr-defined]
        for log in logs:
            report.sections.append((f"operator log {log.name}", log.read_text(errors="replace")[-8000:]))
