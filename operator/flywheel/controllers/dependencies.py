"""The clients and configuration every handler shares, built once at operator start-up."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio

from flywheel.controllers.approval import ApprovalGate
from flywheel.controllers.run import AttemptRecord, RunStores
from flywheel.domain.escalation import EscalationThresholds
from flywheel.domain.rules import RuleCatalogue, configured_catalogue
from flywheel.settings import FlywheelSettings
from flywheel.stores.advisor_client import AdvisorClient, AdvisorEndpoint, advisors_from_settings
from flywheel.stores.anomaly_redis import AnomalyStore, connect_redis
from flywheel.stores.approvals import SigningKeyStore, TokenLedger
from flywheel.stores.claims import AnomalyClaims
from flywheel.stores.history import HistoryKind, HistoryWriter, RepairExecution, build_history_writer
from flywheel.stores.incidents import IncidentStatusStore
from flywheel.stores.kube import FlywheelResources, KubeApi
from flywheel.stores.workloads import WorkloadStore


@dataclass
class AdvisorPanel:
    """The configured advisors and the client that asks them."""

    client: AdvisorClient
    endpoints: list[AdvisorEndpoint]


@dataclass
class HistoryAttemptSink:
    """Hands each decided Run attempt to the history database as a repair execution."""

    history: HistoryWriter

    def record_attempt(self, record: AttemptRecord) -> None:
        self.history.submit(
            HistoryKind.REPAIR_EXECUTION,
            RepairExecution(
                run_uid=record.run_uid,
                attempt=record.attempt,
                namespace=record.namespace,
                incident_uid=record.incident_uid,
                anomaly_key=record.anomaly_key or "",
                action=record.action,
                target_kind=record.target_kind,
                target_name=record.target_name,
                succeeded=record.succeeded,
                started_at=record.started_at,
                finished_at=record.finished_at,
                error_code=record.error_code,
                shadow=record.shadow,
                latency_ms=record.latency_ms,
            ),
        )


@dataclass
class Dependencies:
    settings: FlywheelSettings
    kube: KubeApi
    redis: redis.asyncio.Redis
    anomalies: AnomalyStore
    catalogue: RuleCatalogue
    resources: FlywheelResources
    advisors: AdvisorPanel | None
    history: HistoryWriter
    run_stores: RunStores
    claims: AnomalyClaims

    async def close(self) -> None:
        if self.advisors is not None:
            await self.advisors.client.close()
        await self.history.close()
        await self.redis.aclose()
        await self.kube.close()


async def build_dependencies(settings: FlywheelSettings, kube: KubeApi) -> Dependencies:
    """Everything is lazy about connecting: Redis may be down at start-up and come back later."""
    client = connect_redis(settings.redis_url, timeout_seconds=settings.redis_timeout_seconds)
    thresholds = EscalationThresholds(
        repeat=settings.repeat_threshold,
        escalate=settings.escalate_threshold,
        permanent_fix=settings.permanent_fix_threshold,
    )
    endpoints = advisors_from_settings(settings)
    # The writer migrates the schema before its first write and keeps retrying while the
    # database is down: history is delayed, never lost, and start-up never waits for it.
    history = build_history_writer(settings.database_url, spool_dir=settings.history_spool_dir)
    history.start()
    anomalies = AnomalyStore(client, thresholds)
    resources = FlywheelResources(kube)
    incidents = IncidentStatusStore(resources)
    approvals = ApprovalGate(
        settings,
        resources=resources,
        incidents=incidents,
        signing_key=SigningKeyStore(settings.namespace, settings.approval_signing_secret, kube),
        spent_tokens=TokenLedger(client),
        action_history=anomalies,
        audit=history,
    )
    return Dependencies(
        settings=settings,
        kube=kube,
        redis=client,
        anomalies=anomalies,
        catalogue=configured_catalogue(settings.rules_file),
        resources=resources,
        advisors=AdvisorPanel(AdvisorClient(), endpoints) if endpoints else None,
        history=history,
        run_stores=RunStores(
            workloads=WorkloadStore(kube),
            incidents=incidents,
            attempts=HistoryAttemptSink(history),
            approvals=approvals,
        ),
        claims=AnomalyClaims(kube),
    )
