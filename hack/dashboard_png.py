"""Render docs/dashboard.png: every query of the Grafana dashboard, evaluated by a real Prometheus.

Usage (needs the ``docs`` extra, i.e. matplotlib)::

    PYTHONPATH=operator:. .venv/bin/python hack/dashboard_png.py [--rows 50000] [--minutes 4] [--output docs/dashboard.png]

What runs, all of it real:

1. the history is seeded with the benchmark's seeder (``bench/metrics_snapshot.py``: Incidents,
   Runs, Approvals, executions and knowledge entries over 30 days) in a temporary SQLite file,
   and anomalies are recorded by the anomaly store in a private redis-server;
2. Flywheel's metrics stack (snapshot computer, collector, HTTP server) serves them, with a
   snapshot every second, and /usr/bin/prometheus scrapes it every second;
3. for ``--minutes`` new Incidents keep arriving and move through Runs, approvals, executions
   and resolutions, in three acts: a healthy flow, a stall (nothing picks Incidents up, so
   CLAIM_STALL fires), and the recovery;
4. each panel's PromQL (``$namespace`` → ``.*``, ``$__rate_interval`` → 30s) is evaluated over
   that time with ``query_range`` and drawn at the panel's place in the dashboard's grid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.gridspec import GridSpec
from sqlalchemy import Engine, insert, update

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import metrics_snapshot as bench
from anomaly_record import private_redis_server

from flywheel.api.enums import IncidentPhase, RunMode, RunState, TargetKind
from flywheel.domain.escalation import EscalationThresholds
from flywheel.domain.incident import IncidentView
from flywheel.domain.run_state import ObservedRun
from flywheel.logs import configure_logging
from flywheel.metrics.collector import OperatorCounters, build_registry
from flywheel.metrics.runtime import MetricsRuntime
from flywheel.metrics.server import MetricsApp, MetricsServer
from flywheel.metrics.snapshot import LiveView, SnapshotComputer, SnapshotHolder
from flywheel.stores.anomaly_redis import AnomalyStore, connect_redis
from flywheel.stores.history import create_history_engine, upgrade
from flywheel.stores.metrics_queries import AnomalyMetricsReader, HistoryMetricsQueries
from tests.harness.prometheus import prometheus_server

DASHBOARD = ROOT / "manifests" / "monitoring" / "grafana-dashboard.json"
TICK_SECONDS = 2.0
ANOMALIES = (
    ("KubePodOOMKilled", "checkout", 6), ("HighLatencyP99", "search", 3), ("KubePodCrashLooping", "payments", 2),
    ("Http5xxRate", "gateway", 1), ("CpuThrottling", "reports", 1),
)
SOURCES = ("alertmanager", "alertmanager", "alertmanager", "jane", "omar", "grafana")
FAILURES = ("E-VERIFY-TIMEOUT", "E-VERIFY-TIMEOUT", "E-ROLLOUT-FAILED", "E-ACTION-FORBIDDEN")


@dataclass
class SimulatedRun:
    uid: str
    name: str
    incident: str
    created_at: datetime
    state: RunState = RunState.PENDING
    requires_approval: bool = False
    approval_uid: str | None = None
    ticks_in_state: int = 0


@dataclass
class Simulation:
    """New traffic on top of the seeded history: the resources live, the rows projected."""

    engine: Engine
    store: AnomalyStore
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    incidents: dict[str, IncidentView] = field(default_factory=dict)
    runs: dict[str, SimulatedRun] = field(default_factory=dict)
    counter: int = 0
    dispositions: list[tuple[IncidentView, str]] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)

    def live_view(self) -> LiveView:
        return LiveView(
            incidents=tuple(self.incidents.values()),
            runs=tuple(ObservedRun(namespace="demo", name=run.name, uid=run.uid, created_at=run.created_at,
                                   target_kind=TargetKind.DEPLOYMENT, target_name=run.incident, mode=RunMode.AUTO,
                                   requires_approval=run.requires_approval, state=run.state, started_at=None)
                       for run in self.runs.values()),
        )

    async def tick(self, act: str) -> None:
        now = datetime.now(UTC)
        arrivals = self.rng.choice((1, 1, 2, 2, 3)) if act != "recovery" else self.rng.choice((1, 2))
        for _ in range(arrivals):
            await self._open_incident(now)
        if act != "stall":
            for name, incident in list(self.incidents.items()):
                if incident.phase is IncidentPhase.INVESTIGATING and incident.run_uid is None:
                    self._start_run(name, now)
        self._advance_runs(now)
        while self.dispositions:
            incident, disposition = self.dispositions.pop()
            key = self.keys[incident.name]
            await self.store.record_disposition("demo", key, disposition, f"{incident.uid}:{disposition}", at=now)

    async def _open_incident(self, now: datetime) -> None:
        self.counter += 1
        name = f"demo-{self.counter}"
        alert, service, weight = self.rng.choices(ANOMALIES, weights=[a[2] for a in ANOMALIES])[0]
        del weight
        no_alertname = self.rng.random() < 0.08
        uid = str(uuid.uuid4())
        source = self.rng.choice(SOURCES)
        with self.engine.begin() as connection:
            connection.execute(insert(bench.INCIDENTS), [{
                **bench.incident_rows(self.rng, now, 1).__next__(),
                "uid": uid, "namespace": "demo", "name": name, "created_at": now, "source": source,
                "alert_name": None if no_alertname else alert, "service": service, "phase": "Investigating",
                "decision_id": None, "run_uid": None, "run_name": None, "duplicate_of": None, "resolved_at": None,
                "disposition": None, "projected_at": now,
            }])
        self.incidents[name] = IncidentView(namespace="demo", name=name, uid=uid, created_at=now,
                                            phase=IncidentPhase.INVESTIGATING,
                                            alert_name=None if no_alertname else alert, source=source)
        key = f"{abs(hash((alert, service))) % 16**16:016x}"
        self.keys[name] = key
        signature = {"alert_name": alert, "service": service, "namespace": "demo", "error_type": ""}
        await self.store.record_occurrence("demo", key, signature, uid, now, now=now)

    def _start_run(self, incident_name: str, now: datetime) -> None:
        incident = self.incidents[incident_name]
        run = SimulatedRun(str(uuid.uuid4()), f"{incident_name}-1", incident_name, now,
                           requires_approval=self.rng.random() < 0.25)
        row = {**next(bench.run_rows(self.rng, now, 1)), "uid": run.uid, "namespace": "demo", "name": run.name,
               "created_at": now, "mode": "Auto", "state": "Pending", "started_at": None, "completed_at": None,
               "error_code": None, "requires_approval": run.requires_approval, "projected_at": now}
        with self.engine.begin() as connection:
            connection.execute(insert(bench.RUNS), [row])
            connection.execute(update(bench.INCIDENTS).where(bench.INCIDENTS.c.uid == incident.uid)
                               .values(phase="Mitigating", run_uid=run.uid, decision_id=f"DEC-{run.uid[:12]}"))
            if run.requires_approval:
                run.approval_uid = str(uuid.uuid4())
                connection.execute(insert(bench.APPROVALS), [{
                    **next(bench.approval_rows(self.rng, now, 1)), "uid": run.approval_uid, "namespace": "demo",
                    "created_at": now, "expires_at": now + timedelta(hours=1), "phase": "Pending",
                    "decided_at": None, "decided_by": None, "run_uid": run.uid,
                }])
        self.runs[run.uid] = run
        self.incidents[incident_name] = IncidentView(
            namespace="demo", name=incident.name, uid=incident.uid, created_at=incident.created_at,
            phase=IncidentPhase.MITIGATING, alert_name=incident.alert_name, source=incident.source,
            has_decision=True, run_uid=run.uid,
        )

    def _advance_runs(self, now: datetime) -> None:
        with self.engine.begin() as connection:
            for run in self.runs.values():
                run.ticks_in_state += 1
                runs = update(bench.RUNS).where(bench.RUNS.c.uid == run.uid)
                if run.state is RunState.PENDING:
                    if run.requires_approval:
                        run.state, run.ticks_in_state = RunState.WAITING_APPROVAL, 0
                        connection.execute(runs.values(state=run.state.value))
                    else:
                        self._set(connection, run, RunState.RUNNING, started_at=now)
                elif run.state is RunState.WAITING_APPROVAL and run.ticks_in_state >= self.rng.randint(2, 12):
                    rejected = self.rng.random() < 0.2
                    connection.execute(update(bench.APPROVALS).where(bench.APPROVALS.c.uid == run.approval_uid)
                                       .values(phase="Rejected" if rejected else "Approved", decided_at=now))
                    if rejected:
                        self._set(connection, run, RunState.CANCELLED, completed_at=now, error_code="E-APPR-REJECTED")
                        self._resolve(connection, run, now, manual=True)
                    else:
                        self._set(connection, run, RunState.RUNNING, started_at=now)
                elif run.state is RunState.RUNNING:
                    self._set(connection, run, RunState.VERIFYING)
                elif run.state is RunState.VERIFYING and run.ticks_in_state >= self.rng.randint(1, 4):
                    succeeded = self.rng.random() < 0.75
                    code = None if succeeded else self.rng.choice(FAILURES)
                    state = RunState.SUCCEEDED if succeeded else RunState.FAILED
                    self._set(connection, run, state, completed_at=now, error_code=code)
                    connection.execute(insert(bench.EXECUTIONS), [{
                        **next(bench.execution_rows(self.rng, now, 1)), "run_uid": run.uid, "namespace": "demo",
                        "shadow": False, "succeeded": succeeded, "error_code": code,
                        "started_at": now - timedelta(seconds=TICK_SECONDS * 2), "finished_at": now,
                        "recorded_at": now,
                    }])
                    self._resolve(connection, run, now, manual=not succeeded)

    @staticmethod
    def _set(connection: Any, run: SimulatedRun, state: RunState, **values: Any) -> None:
        run.state, run.ticks_in_state = state, 0
        connection.execute(update(bench.RUNS).where(bench.RUNS.c.uid == run.uid).values(state=state.value, **values))

    def _resolve(self, connection: Any, run: SimulatedRun, now: datetime, manual: bool) -> None:
        incident = self.incidents[run.incident]
        if manual and self.rng.random() < 0.5:
            return  # left for a person: the Incident stays open
        self.dispositions.append((
            incident,
            "manual_resolved" if manual else "human_approved" if run.requires_approval else "auto_repair",
        ))
        connection.execute(update(bench.INCIDENTS).where(bench.INCIDENTS.c.uid == incident.uid)
                           .values(phase="Resolved", resolved_at=now))
        connection.execute(insert(bench.KNOWLEDGE), [{
            **next(bench.knowledge_rows(self.rng, now, 1)), "incident_uid": incident.uid, "namespace": "demo",
            "incident_name": incident.name, "resolved_at": now, "recorded_at": now,
            "root_cause": None if self.rng.random() < 0.3 else "memory limit too low",
        }])
        self.incidents[run.incident] = IncidentView(
            namespace="demo", name=incident.name, uid=incident.uid, created_at=incident.created_at,
            phase=IncidentPhase.RESOLVED, alert_name=incident.alert_name, source=incident.source,
            has_decision=True, run_uid=run.uid,
        )


def expand(expr: str) -> str:
    return expr.replace("$namespace", ".*").replace("$__rate_interval", "30s")


def label(template: str, metric: dict[str, str]) -> str:
    text = template
    for key, value in metric.items():
        text = text.replace("{{" + key + "}}", value)
    return text.replace("{{pod}}", "").strip() or "value"


def draw(prometheus: Any, start: float, end: float, output: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    height = max(panel["gridPos"]["y"] + panel["gridPos"]["h"] for panel in panels)
    figure = plt.figure(figsize=(24, height * 0.42))
    grid = GridSpec(height, 24, figure=figure, hspace=2.2, wspace=2.5, top=0.96, bottom=0.02)
    step = 2.0
    for panel in panels:
        position = panel["gridPos"]
        axes = figure.add_subplot(grid[position["y"]:position["y"] + position["h"], position["x"]:position["x"] + position["w"]])
        axes.set_title(panel["title"], fontsize=11, loc="left")
        instant = panel["type"] in ("bargauge", "stat")
        names, values = [], []
        for target in panel["targets"]:
            for series in prometheus.query_range(expand(target["expr"]), start, end, step):
                points = [(float(t) - start, float(v)) for t, v in series["values"]]
                name = label(target.get("legendFormat", ""), series["metric"])
                if instant:
                    names.append(name)
                    values.append(points[-1][1] if points else float("nan"))
                else:
                    axes.step([p[0] for p in points], [p[1] for p in points], where="post", label=name[:48])
        if instant:
            axes.barh(names, values, color="#3274d9")
            for index, value in enumerate(values):
                axes.text(value, index, f" {value:.3g}", va="center", fontsize=8)
            axes.invert_yaxis()
        else:
            axes.set_xlabel("seconds", fontsize=8)
            if axes.get_legend_handles_labels()[0]:
                axes.legend(fontsize=7, loc="upper left", ncol=2)
        axes.tick_params(labelsize=8)
    figure.suptitle(f"{dashboard['title']} dashboard — its queries evaluated by Prometheus over "
                    f"{(end - start) / 60:.0f} min of seeded and live data (x: seconds)", fontsize=14, y=0.985)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=60, bbox_inches="tight")
    print(f"wrote {output}")


async def run(rows: int, minutes: float, output: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="flywheel-dashboard-") as directory, private_redis_server() as redis_url:
        database_url = f"sqlite:///{Path(directory) / 'history.db'}"
        upgrade(database_url)
        engine = create_history_engine(database_url)
        now = datetime.now(UTC)
        print(f"seeding {rows:,} history rows ...", flush=True)
        bench.seed(engine, rows, now)
        client = connect_redis(redis_url)
        thresholds = EscalationThresholds()
        simulation = Simulation(engine, AnomalyStore(client, thresholds))
        holder = SnapshotHolder()
        counters = OperatorCounters()
        computer = SnapshotComputer(
            history=HistoryMetricsQueries(engine), anomalies=AnomalyMetricsReader(client, thresholds),
            live_view=simulation.live_view, playbook_count=lambda: 5, period=timedelta(minutes=5),
        )

        async def active() -> bool:
            return True

        server = MetricsServer(MetricsApp(holder, build_registry(holder, counters)), "127.0.0.1", 0)
        runtime = MetricsRuntime(computer=computer, holder=holder, counters=counters, is_active=active,
                                 interval_seconds=1.0, server=server)
        await runtime.start()
        try:
            with prometheus_server([f"127.0.0.1:{server.port}"]) as prometheus:
                start = time.time()
                total = minutes * 60
                while (elapsed := time.time() - start) < total:
                    act = "flow" if elapsed < total * 0.4 else "stall" if elapsed < total * 0.7 else "recovery"
                    await simulation.tick(act)
                    await asyncio.sleep(TICK_SECONDS)
                await asyncio.sleep(3)  # the last snapshot scraped
                draw(prometheus, start, time.time(), output)
        finally:
            await runtime.stop()
            await client.aclose()
            engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    configure_logging("WARNING")
    asyncio.run(run(args.rows, args.minutes, args.output))


if __name__ == "__main__":
    main()
