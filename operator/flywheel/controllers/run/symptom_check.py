"""The end of a verification window: is the Incident's symptom gone? (rules in ``domain/symptom.py``)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from flywheel.api.enums import TargetKind
from flywheel.controllers.run.views import RunObject
from flywheel.domain.incident import IncidentView
from flywheel.domain.symptom import (
    PodFacts,
    SymptomVerdict,
    pods_verdict,
    prometheus_query,
    signal_verdict,
)
from flywheel.errors import StoreRefusedError, StoreUnavailableError
from flywheel.logs import get_logger

log = get_logger(__name__)


class FiringAlerts(Protocol):
    """Prometheus' firing alerts (``flywheel.stores.prometheus_alerts.PrometheusAlerts``)."""

    async def firing(self, query: str) -> list[dict[str, str]]: ...


class PodHealth(Protocol):
    """The target's Pods (``flywheel.stores.pod_health.PodHealthStore``)."""

    async def pods(self, namespace: str, kind: TargetKind, name: str) -> tuple[int, list[PodFacts]]: ...


class SymptomCheck:
    """Gathers the evidence for one Run and asks the pure rules for the verdict."""

    def __init__(self, pods: PodHealth | None, prometheus: FiringAlerts | None) -> None:
        self._pods = pods
        self._prometheus = prometheus

    async def verdict(
        self, run: RunObject, incident: IncidentView | None, window_start: datetime
    ) -> SymptomVerdict | None:
        """The verdict, or None when the evidence cannot be read right now (try again).

        Raises the Kubernetes store's errors for a target that cannot be read for good.
        """
        signals = incident.signals if incident is not None else ()
        if signals:
            return signal_verdict(signals, await self._prometheus_firing(run, incident))
        if self._pods is None:
            return None
        action = run.action
        try:
            desired, pods = await self._pods.pods(run.namespace, action.target_kind, action.target_name)
        except StoreUnavailableError as exc:
            log.warning("run_symptom_pods_unavailable", run=run.name, namespace=run.namespace, error=str(exc))
            return None
        return pods_verdict(pods, desired, window_start)

    async def _prometheus_firing(self, run: RunObject, incident: IncidentView | None) -> list[dict[str, str]] | None:
        """Firing ALERTS series of the Incident's alert names; None: not configured or not answering."""
        if self._prometheus is None or incident is None:
            return None
        series: list[dict[str, str]] = []
        for query in sorted({prometheus_query(signal) for signal in incident.signals}):
            try:
                series += await self._prometheus.firing(query)
            except (StoreUnavailableError, StoreRefusedError) as exc:
                log.warning(
                    "run_symptom_prometheus_failed", run=run.name, namespace=run.namespace, error=str(exc)
                )
                return None
        return series
