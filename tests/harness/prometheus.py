"""A real Prometheus server (Debian's /usr/bin/prometheus) scraping local targets, for tests and docs.

Scrapes every second with its TSDB in a temporary directory and its web API on a free
loopback port; optionally loads rule files. Stopped (and its data deleted) on exit.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.ports import free_port

PROMETHEUS = "/usr/bin/prometheus"
START_DEADLINE_SECONDS = 60.0




@dataclass(frozen=True)
class PrometheusServer:
    url: str
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus API {path} failed: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector result of ``expr`` (each item has ``metric`` and ``value``)."""
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` (NaN included), or None when the result is empty."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise AssertionError(f"{expr} returned {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query_range", query=expr, start=str(start), end=str(end), step=str(step))
        return list(data["result"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def is_nan(value: float | None) -> bool:
    return value is not None and math.isnan(value)


@contextlib.contextmanager
def prometheus_server(
    targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    job: str = "flywheel",
    *,
    port: int | None = None,
    alertmanagers: Sequence[str] = (),
) -> Iterator[PrometheusServer]:
    """Prometheus scraping ``targets`` (host:port) every second, sending alerts to ``alertmanagers`` (host:port)."""
    if shutil.which(PROMETHEUS) is None and not Path(PROMETHEUS).exists():
        raise AssertionError(f"{PROMETHEUS} not found (apt-get install prometheus)")
    workdir = Path(tempfile.mkdtemp(prefix="flywheel-prometheus-"))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = port or free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1d",
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(url=f"http://127.0.0.1:{port}", log_path=log_path)
    try:
        deadline = time.monotonic() + START_DEADLINE_SECONDS
        while True:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited with {process.returncode}:\n{server.log()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready within {START_DEADLINE_SECONDS}s:\n{server.log()[-4000:]}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
