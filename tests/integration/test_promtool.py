"""The metrics server scraped live and checked with promtool; the PrometheusRule checked and unit-tested.

Scenarios:
- a metrics server computing real snapshots from PostgreSQL (history seeded through the
  migrations' schema) and Redis (anomalies recorded by the anomaly store) is scraped over
  HTTP, and ``promtool check metrics`` accepts the exposition without a lint problem;
- the JSON endpoints answer from the same snapshot (NaN as null), ``/healthz`` reports the
  snapshot's age, and a standby answers 503 on ``/stats/*``;
- ``promtool check rules`` accepts the PrometheusRule's groups;
- ``promtool test rules``: the success-rate alert fires on a real 10% and stays silent on NaN
  (fewer than 10 executions), the Redis alert fires after 2 minutes down, a stall alert fires
  after 5 minutes — the NaN-safety claim of the rule file, proven by Prometheus' own engine.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from flywheel.api.enums import IncidentPhase, RunMode, RunState, TargetKind
from flywheel.domain.escalation import EscalationThresholds
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import ObservedRun
from flywheel.metrics.collector import OperatorCounters, build_registry
from flywheel.metrics.runtime import MetricsRuntime
from flywheel.metrics.server import MetricsApp, MetricsServer
from flywheel.metrics.snapshot import LiveView, SnapshotComputer, SnapshotHolder
from flywheel.stores.anomaly_redis import AnomalyStore, connect_redis
from flywheel.stores.history import create_history_engine, upgrade
from flywheel.stores.metrics_queries import AnomalyMetricsReader, HistoryMetricsQueries
from tests.harness.history_rows import (
    APPROVALS,
    EXECUTIONS,
    INCIDENTS,
    RUNS,
    approval_row,
    execution_row,
    incident_row,
    insert_rows,
    run_row,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_RULE = ROOT / "manifests" / "monitoring" / "prometheusrule.yaml"
PROMTOOL = "/usr/bin/promtool"


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], input=stdin.decode() if stdin is not None else None, capture_output=True, text=True,
        check=False, cwd=cwd, timeout=120,
    )


def live_view(now: datetime) -> LiveView:
    return LiveView(
        incidents=(
            IncidentView(namespace="shop", name="waiting", uid="u1", created_at=now - timedelta(minutes=3),
                         phase=IncidentPhase.INVESTIGATING, alert_name="KubePodOOMKilled", source="alertmanager"),
            IncidentView(namespace="shop", name="remediating", uid="u2", created_at=now - timedelta(minutes=2),
                         phase=IncidentPhase.MITIGATING, has_decision=True, run_uid="r1"),
        ),
        runs=(ObservedRun(namespace="shop", name="remediating-1", uid="r1", created_at=now,
                          target_kind=TargetKind.DEPLOYMENT, target_name="checkout", mode=RunMode.AUTO,
                          requires_approval=False, state=RunState.RUNNING, started_at=None),),
    )


async def _serve(holder: SnapshotHolder, computer: SnapshotComputer, active: bool) -> tuple[MetricsRuntime, str]:
    async def leadership() -> bool:
        return active

    server = MetricsServer(MetricsApp(holder, build_registry(holder, OperatorCounters())), "127.0.0.1", 0)
    runtime = MetricsRuntime(computer=computer, holder=holder, counters=OperatorCounters(), is_active=leadership,
                             interval_seconds=3600, server=server)
    await runtime.start()
    while holder.latest is None:  # the first snapshot is computed right after start
        await asyncio.sleep(0.05)
    return runtime, f"http://127.0.0.1:{server.port}"


@pytest.fixture()
async def served(postgres_url: str, clean_redis_url: str) -> AsyncIterator[str]:
    now = datetime.now(UTC)
    upgrade(postgres_url)
    engine = create_history_engine(postgres_url)
    insert_rows(engine, {
        INCIDENTS: [incident_row(f"i{n}", now - timedelta(minutes=n), alert_name=None if n == 2 else "Oom")
                    for n in range(1, 5)],
        RUNS: [run_row("r-ok", now - timedelta(minutes=8), state="Succeeded", started_at=now - timedelta(minutes=7),
                       completed_at=now - timedelta(minutes=6)),
               run_row("r-bad", now - timedelta(minutes=8), state="Failed", started_at=now - timedelta(minutes=7),
                       completed_at=now - timedelta(minutes=1), error_code="E-VERIFY-TIMEOUT")],
        APPROVALS: [approval_row("a1", now - timedelta(minutes=9), phase="Approved",
                                 decided_at=now - timedelta(minutes=8))],
        EXECUTIONS: [execution_row(now - timedelta(minutes=n), succeeded=n % 2 == 0) for n in range(1, 4)],
    })
    client = connect_redis(clean_redis_url)
    thresholds = EscalationThresholds()
    store = AnomalyStore(client, thresholds)
    for index in range(4):
        await store.record_occurrence("shop", "0123456789abcdef", {"alert_name": "KubePodOOMKilled",
                                      "service": "checkout", "namespace": "shop", "error_type": "OOMKilled"},
                                      f"occ-{index}", now - timedelta(minutes=index), now=now)
    holder = SnapshotHolder()
    computer = SnapshotComputer(
        history=HistoryMetricsQueries(engine), anomalies=AnomalyMetricsReader(client, thresholds),
        live_view=lambda: live_view(datetime.now(UTC)), playbook_count=lambda: 5, period=timedelta(minutes=10),
    )
    runtime, url = await _serve(holder, computer, active=True)
    try:
        yield url
    finally:
        await runtime.stop()
        await client.aclose()
        engine.dispose()


async def get(url: str) -> tuple[int, bytes, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read(), response.headers.get("Content-Type", "")


async def test_live_scrape_passes_promtool_check_metrics(served: str) -> None:
    status, body, content_type = await get(f"{served}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    text = body.decode()
    assert 'flywheel_anomaly_occurrences{alertname="KubePodOOMKilled"' in text
    assert "flywheel_execution_success_rate NaN" in text  # 3 executions: not enough to judge
    assert 'flywheel_funnel_stage{stage="opened"} 4.0' in text
    assert "process_resident_memory_bytes" in text
    checked = promtool("check", "metrics", stdin=body)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == ""


async def test_json_endpoints_read_the_same_snapshot(served: str) -> None:
    status, body, content_type = await get(f"{served}/stats/summary")
    assert status == 200 and content_type.startswith("application/json")
    summary = json.loads(body)
    assert summary["active"] is True and summary["redis_up"] is True and summary["database_up"] is True
    assert summary["execution_success_rate"] is None and summary["executions"] == 3
    assert summary["playbook_count"] == 5
    assert summary["alertname_null_rate"] == 0.25
    assert summary["funnel"]["opened"] == 4 and summary["funnel"]["open_waiting_samples"] == ["shop/waiting"]
    assert summary["funnel"]["failure_classes"] == [
        {"code": "E-VERIFY-TIMEOUT", "count": 1, "examples": ["shop/r-bad"]}
    ]
    assert summary["runs_by_state"]["Running"] == 1
    assert summary["anomalies"]["top"][0]["counts"]["24h"] == 4
    # r-ok passed verification but no Incident was resolved in the period.
    assert [stall["rule"] for stall in summary["stalls"]] == ["RESOLVE_STALL"]

    status, body, _ = await get(f"{served}/stats/flywheel")
    flywheel = json.loads(body)
    assert list(flywheel["nodes"]) == ["monitoring", "deduplication", "diagnosis", "reasoning", "execution",
                                       "learning"]
    assert flywheel["nodes"]["monitoring"]["activity"] == 4
    assert flywheel["nodes"]["diagnosis"]["activity"] == 4
    assert [(item["name"], item["node"]) for item in flywheel["current_flow"]] == [
        ("remediating", "execution"), ("waiting", "diagnosis"),
    ]

    status, body, _ = await get(f"{served}/healthz")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["snapshot"]["age_seconds"] >= 0


async def test_a_standby_refuses_stats_but_serves_status_metrics(clean_redis_url: str, tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'history.db'}"
    upgrade(database_url)
    engine = create_history_engine(database_url)
    client = connect_redis(clean_redis_url)
    holder = SnapshotHolder()
    computer = SnapshotComputer(
        history=HistoryMetricsQueries(engine), anomalies=AnomalyMetricsReader(client, EscalationThresholds()),
        live_view=LiveView, playbook_count=lambda: 5, period=timedelta(minutes=10),
    )
    runtime, url = await _serve(holder, computer, active=False)
    try:
        status, body, _ = await get(f"{url}/stats/summary")
        assert status == 503 and json.loads(body)["active"] is False
        status, body, _ = await get(f"{url}/metrics")
        text = body.decode()
        assert "flywheel_active 0.0" in text and "flywheel_redis_up 1.0" in text
        assert "flywheel_funnel_stage" not in text and "flywheel_runs{" not in text
        checked = promtool("check", "metrics", stdin=body)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        await runtime.stop()
        await client.aclose()
        engine.dispose()


# --------------------------------------------------------------------------- rules


def rule_groups() -> dict[str, Any]:
    manifest = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert manifest["kind"] == "PrometheusRule"
    return {"groups": manifest["spec"]["groups"]}


def alert_rule(name: str) -> dict[str, Any]:
    return next(rule for group in rule_groups()["groups"] for rule in group["rules"] if rule.get("alert") == name)


def test_prometheus_rule_passes_promtool_check_rules(tmp_path: Path) -> None:
    rules = tmp_path / "flywheel-rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups()))
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_alerts_fire_on_real_values_and_stay_silent_on_nan(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    nan_hour = " ".join(["NaN"] * 60)
    success = alert_rule("FlywheelExecutionSuccessRateLow")
    redis_down = alert_rule("FlywheelRedisDown")
    stall = alert_rule("FlywheelFunnelStall")
    stall_description = stall["annotations"]["description"].replace("{{ $labels.rule }}", "CLAIM_STALL")
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'flywheel_execution_success_rate{namespace="fw",pod="quiet"}', "values": nan_hour},
                    {"series": 'flywheel_execution_success_rate{namespace="fw",pod="failing"}', "values": "0.1x60"},
                    {"series": 'flywheel_execution_success_rate{namespace="fw",pod="healthy"}', "values": "0.9x60"},
                    {"series": 'flywheel_redis_up{namespace="fw",pod="a"}', "values": "1x9 0x10"},
                    {"series": 'flywheel_funnel_stall{namespace="fw",pod="a",rule="CLAIM_STALL"}', "values": "1x10"},
                    {"series": 'flywheel_funnel_stall{namespace="fw",pod="a",rule="PASS_STALL"}', "values": "0x10"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "45m",
                        "alertname": "FlywheelExecutionSuccessRateLow",
                        "exp_alerts": [{
                            "exp_labels": {"namespace": "fw", "pod": "failing", "severity": "warning"},
                            "exp_annotations": {
                                "summary": "Flywheel remediation success rate is 10%",
                                "description": success["annotations"]["description"],
                            },
                        }],
                    },
                    {
                        "eval_time": "11m",
                        "alertname": "FlywheelRedisDown",
                        "exp_alerts": [],  # down since 9m: not yet 2 minutes
                    },
                    {
                        "eval_time": "12m",
                        "alertname": "FlywheelRedisDown",
                        "exp_alerts": [{
                            "exp_labels": {"namespace": "fw", "pod": "a", "severity": "critical"},
                            "exp_annotations": {
                                "summary": "Flywheel on a cannot reach Redis",
                                "description": redis_down["annotations"]["description"],
                            },
                        }],
                    },
                    {
                        "eval_time": "6m",
                        "alertname": "FlywheelFunnelStall",
                        "exp_alerts": [{
                            "exp_labels": {"namespace": "fw", "rule": "CLAIM_STALL", "severity": "warning"},
                            "exp_annotations": {
                                "summary": "Flywheel remediation funnel stalled: CLAIM_STALL",
                                "description": stall_description,
                            },
                        }],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, width=1000))
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
