"""Run the real operator (``flywheel run``) as a subprocess against the test cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.harness.cluster import TestCluster

READY_MARK = "Initial authentication has finished"


class OperatorProcess:
    """One ``flywheel run --standalone -n NAMESPACE`` process, scoped to a test's namespace.

    ``run_args`` replaces ``--standalone`` (peering tests pass ``--peering NAME --priority N``);
    ``kubeconfig`` runs it as another identity (RBAC tests pass a ServiceAccount's kubeconfig).

    Scoping matters: several tests (and developers) share the test cluster, and an
    operator watching every namespace would act on the others' Incidents.
    """

    def __init__(
        self,
        cluster: TestCluster,
        namespace: str,
        env: dict[str, str],
        log_path: Path,
        *,
        run_args: Sequence[str] = ("--standalone",),
        kubeconfig: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.env = {
            **cluster.env,
            **env,
            "KUBECONFIG": kubeconfig or cluster.kubeconfig,
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = log_path
        self.run_args = tuple(run_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._ready_before = 0

    def start(self, timeout: float = 60.0) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready (chaos tests kill it at any moment)."""
        self.starts += 1
        self._ready_before = self.log().count(READY_MARK)
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            log.write(f"\n===== start #{self.starts} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flywheel", "run", *self.run_args, "--namespace", self.namespace],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"operator exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if self.log().count(READY_MARK) > self._ready_before:
                return
            time.sleep(0.2)
        raise AssertionError(f"operator not ready within {timeout}s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no cleanup, no finalizers — as if the node died."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
