"""The wheel, as a user installs it: built from the tree, installed (not editable) outside it, run.

The image installs the same two things (requirements/runtime.txt, hash-checked, then the package
without resolving again); this test proves the installed package alone carries what the operator
needs at run time — the rule catalogue, the Alembic migrations and the CRD models — with no file of
the checkout reachable (the process runs from a directory outside it, without PYTHONPATH).

Scenario matrix (one operator, the packaged ``flywheel`` console script, against the local control
plane, a real Redis and a fresh SQLite history it must migrate itself):
- the installed package is the wheel's, not the checkout's (its ``__file__`` is in the new venv);
- ``flywheel crds --check`` from the wheel finds the CRDs committed in crds/ identical;
- an automatic Incident is remediated (Run Succeeded, the Deployment rolled, Incident Resolved);
- an approval round trip through the admission webhooks (an approver approves, the Run acts);
- /metrics is scraped and holds Flywheel's series with those Runs counted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
import venv
from pathlib import Path

import pytest

from tests.conftest import OperatorFactory
from tests.e2e.test_approvals import (
    APPROVER,
    APPROVERS,
    approval,
    create_incident,
    decide,
    wait_for_webhooks,
)
from tests.e2e.test_runs import FINAL, apply_incident, get, replica_sets, wait_for_run
from tests.e2e.workloads import create_deployment
from tests.harness.cluster import TestCluster
from tests.harness.ports import free_port
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str | Path, cwd: Path) -> str:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([str(arg) for arg in args], cwd=cwd, env=environment, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, f"{' '.join(map(str, args))}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv outside the checkout with the locked runtime dependencies and the built wheel."""
    work = tmp_path_factory.mktemp("packaged")
    wheels = work / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", wheels, REPO_ROOT, cwd=work)
    [wheel] = wheels.glob("flywheel_operator-*.whl")
    environment = work / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", "--require-hashes", "-r", REPO_ROOT / "requirements" / "runtime.txt",
         cwd=work)
    _run(python, "-m", "pip", "install", "--quiet", "--no-deps", wheel, cwd=work)
    return environment


def test_the_installed_wheel_remediates_approves_and_serves_metrics(
    test_cluster: TestCluster, namespace: str, clean_redis_url: str, start_operator: OperatorFactory,
    packaged: Path, tmp_path: Path,
) -> None:
    python, flywheel = packaged / "bin" / "python", packaged / "bin" / "flywheel"
    location = _run(python, "-c", "import flywheel; print(flywheel.__file__)", cwd=packaged)
    assert location.strip().startswith(str(packaged)), location
    assert not (packaged / "lib").joinpath("python3.11", "site-packages", "__editable__.flywheel_operator-0.1.0.pth").exists()
    committed = tmp_path / "crds"
    shutil.copytree(REPO_ROOT / "crds", committed)
    _run(flywheel, "crds", "--output-dir", committed, "--check", cwd=packaged)  # exit 1 on any difference

    create_deployment(test_cluster, "checkout", namespace)
    create_deployment(test_cluster, "payments", namespace)
    revisions_before = len(replica_sets(test_cluster, namespace, "checkout"))
    metrics_port = free_port()
    operator = start_operator(
        clean_redis_url,
        command=(str(flywheel),),
        cwd=packaged,
        webhook_mode="loopback",
        webhook_port="0",
        approver_groups=APPROVERS,
        metrics_port=str(metrics_port),
        metrics_interval_seconds="2",
    )
    wait_for_webhooks(test_cluster, namespace, operator)

    apply_incident(test_cluster, namespace, "checkout-oom", "checkout")
    assert wait_for_run(test_cluster, namespace, "checkout-oom-1", *FINAL, timeout=120)["state"] == "Succeeded"
    assert len(replica_sets(test_cluster, namespace, "checkout")) == revisions_before + 1
    wait_for(lambda: get(test_cluster, namespace, "incident", "checkout-oom").get("status", {}).get("phase") == "Resolved",
             timeout=60, what="the Incident resolved")

    create_incident(test_cluster, namespace, "payments-oom", "payments")
    wait_for_run(test_cluster, namespace, "payments-oom-1", "WaitingApproval", timeout=60)
    approval(test_cluster, namespace, "payments-oom-1")
    decide(test_cluster, namespace, "payments-oom-1", "Approve", "packaged smoke test", APPROVER, APPROVERS)
    assert wait_for_run(test_cluster, namespace, "payments-oom-1", *FINAL, timeout=120)["state"] == "Succeeded"
    decided = get(test_cluster, namespace, "approval", "payments-oom-1")["status"]
    assert (decided["phase"], decided["decidedBy"]) == ("Approved", APPROVER)

    def succeeded_runs() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("flywheel_runs{") and 'state="Succeeded"' in line)

    assert wait_for(lambda: succeeded_runs() >= 2, timeout=60, what="both Runs counted in /metrics")
    # The packaged migrations created the history schema the Runs were recorded in.
    assert "history_database_migrated" in operator.log()
