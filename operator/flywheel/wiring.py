"""The composition root: every client, store and controller seam, built once at start-up.

The operator's one start-up step (``flywheel.main``) calls :func:`build_dependencies` and puts
the result on Kopf's operator memo (:class:`FlywheelMemo`), which Kopf hands to every handler;
the handlers only start their loops over what is built here. Each controller gets the
Protocols and the slice of the settings it reads, nothing else. One SQL engine serves the
history writer and the metrics queries; one notification delivery (``WebhookNotifier``) serves
every controller and the stall notifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import kopf
import redis.asyncio
from sqlalchemy import Engine

from flywheel.api.incident import Decision
from flywheel.controllers.approval import ApprovalGate, ApprovalSettings
from flywheel.controllers.catalogue_reload import LiveCatalogue
from flywheel.controllers.incident import AdvisorPanel, IncidentPolicy, IncidentStores
from flywheel.controllers.run import AttemptRecord, RunPolicy, RunStores
from flywheel.controllers.run_binding import RunBinder
from flywheel.domain.approval import ApproverPolicy
from flywheel.domain.escalation import EscalationThresholds
from flywheel.domain.ladder import LadderPolicy
from flywheel.domain.namespaces import RemediationScope
from flywheel.domain.rules import default_catalogue, default_catalogue_text, load_catalogue
from flywheel.domain.run_state import SafetyLimits
from flywheel.errors import ConfigurationError
from flywheel.metrics.collector import OperatorCounters
from flywheel.settings import FlywheelSettings, WebhookMode
from flywheel.stores.advisor_client import AdvisorClient, advisor_endpoints
from flywheel.stores.anomaly_redis import AnomalyStore, connect_redis
from flywheel.stores.approvals import SigningKeyStore, TokenLedger
from flywheel.stores.catalogue_file import CatalogueFile, content_digest
from flywheel.stores.claims import AnomalyClaims
from flywheel.stores.history import HistoryKind, HistoryStore, HistoryWriter, RepairExecution
from flywheel.stores.history.engine import create_history_engine
from flywheel.stores.history.migrate import upgrade
from flywheel.stores.history.spool import FileSpool
from flywheel.stores.incidents import IncidentStatusStore
from flywheel.stores.kube import FlywheelResources, KubeApi
from flywheel.stores.namespaces import KubeNamespaceReader, NamespaceLabels
from flywheel.stores.notifications import WebhookNotifier, WebhookSender, parse_kinds
from flywheel.stores.peering import PeeringObserver
from flywheel.stores.pod_health import PodHealthStore
from flywheel.stores.pod_owners import KubeObjectReader, PodOwnerStore
from flywheel.stores.prometheus_alerts import PrometheusAlerts
from flywheel.stores.workloads import WorkloadStore


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
class DecisionProgressWriter:
    """Writes an Incident's decision as Analyzing while its advisors are asked (one status merge patch)."""

    resources: FlywheelResources

    async def analyzing(self, namespace: str, name: str, decision: Decision, condition: dict[str, Any]) -> None:
        # The condition is merged by the pass's own write at its end (conditions are a list: not
        # patched here, so that no other condition is dropped); the decision says Analyzing now.
        await self.resources.patch_status(
            "incidents", namespace, name,
            {"decision": decision.model_dump(mode="json", by_alias=True, exclude_none=True)},
        )


@dataclass
class Dependencies:
    settings: FlywheelSettings
    kube: KubeApi
    redis: redis.asyncio.Redis
    anomalies: AnomalyStore
    # The catalogue in force; the reload loop (handlers/catalogue.py) replaces it when the file changes.
    catalogue: LiveCatalogue
    resources: FlywheelResources
    advisor_client: AdvisorClient | None
    history: HistoryWriter
    run_stores: RunStores
    run_policy: RunPolicy
    claims: AnomalyClaims
    incident_stores: IncidentStores
    incident_policy: IncidentPolicy
    # The history database, shared by the writer (which disposes of it) and the metrics queries.
    history_engine: Engine
    # The namespace opt-in: labels kept by the namespace watch, read by the Runs and the intake.
    namespaces: NamespaceLabels
    # The one delivery of notifications every controller and the stall notifier submit to.
    notifier: WebhookNotifier
    # The process's own counters, shared by the metrics and the intake.
    counters: OperatorCounters
    # The intake's workload lookup: one cache per process, shared by every request.
    alert_workloads: PodOwnerStore
    prometheus: PrometheusAlerts | None = None

    async def close(self) -> None:
        if self.prometheus is not None:
            await self.prometheus.close()
        # Before the history: the last deliveries' records go through the writer.
        await self.notifier.close()
        if self.advisor_client is not None:
            await self.advisor_client.close()
        await self.history.close()
        await self.redis.aclose()
        await self.kube.close()


def run_policy(settings: FlywheelSettings) -> RunPolicy:
    """The settings the Run controller reads."""
    return RunPolicy(
        tenant=settings.tenant,
        max_scale_replicas=settings.max_scale_replicas,
        limits=SafetyLimits(
            max_running_per_namespace=settings.run_max_concurrent_per_namespace,
            max_running_per_target=settings.run_max_concurrent_per_target,
            breaker_max_remediations=settings.circuit_breaker_max_remediations,
            breaker_window=timedelta(seconds=settings.circuit_breaker_window_seconds),
        ),
        verification_window_seconds=settings.verification_window_seconds,
        approval_timeout=timedelta(seconds=settings.approval_timeout_seconds),
    )


def approval_settings(settings: FlywheelSettings) -> ApprovalSettings:
    """The settings the approval gate reads."""
    return ApprovalSettings(
        approvers=ApproverPolicy.of(settings.approver_users, settings.approver_groups),
        decisions_stamped=settings.webhook_mode is not WebhookMode.OFF,
        token_ttl=timedelta(seconds=settings.approval_token_ttl_seconds),
        approval_timeout=timedelta(seconds=settings.approval_timeout_seconds),
    )


def incident_policy(settings: FlywheelSettings) -> IncidentPolicy:
    """The settings the Incident controller reads."""
    return IncidentPolicy(
        tenant=settings.tenant,
        max_automatic_risk=settings.max_automatic_risk,
        advisor_timeout_seconds=settings.advisor_timeout_seconds,
        run_timeout_seconds=settings.run_timeout_seconds,
        run_max_attempts=settings.run_max_attempts,
        ladder=LadderPolicy(
            max_decisions=settings.max_decisions_per_incident,
            later_decisions_require_approval=settings.ladder_requires_approval,
        ),
        verification_window_seconds=settings.verification_window_seconds,
        degraded_requires_approval=settings.degraded_requires_approval,
    )


async def build_dependencies(settings: FlywheelSettings, kube: KubeApi) -> Dependencies:
    """Everything is lazy about connecting: Redis may be down at start-up and come back later."""
    client = connect_redis(settings.redis_url.get_secret_value(), timeout_seconds=settings.redis_timeout_seconds)
    thresholds = EscalationThresholds(
        repeat=settings.repeat_threshold,
        escalate=settings.escalate_threshold,
        permanent_fix=settings.permanent_fix_threshold,
    )
    endpoints = advisor_endpoints(settings.advisor_urls, settings.advisor_model, settings.advisor_api_key)
    # The writer migrates the schema before its first write and keeps retrying while the
    # database is down: history is delayed, never lost, and start-up never waits for it.
    database_url = settings.database_url.get_secret_value()
    history_engine = create_history_engine(database_url)
    history = HistoryWriter(
        HistoryStore(history_engine),
        prepare=partial(upgrade, database_url),
        spool=FileSpool(settings.history_spool_dir) if settings.history_spool_dir else None,
    )
    history.start()
    notifier = WebhookNotifier(
        notification_sender(settings),
        kinds=parse_kinds(settings.notify_events),
        redis_client=client,
        history=history,
    )
    anomalies = AnomalyStore(client, thresholds)
    resources = FlywheelResources(kube)
    incidents = IncidentStatusStore(resources)
    approvals = ApprovalGate(
        approval_settings(settings),
        resources=resources,
        incidents=incidents,
        signing_key=SigningKeyStore(settings.namespace, settings.approval_signing_secret, kube),
        spent_tokens=TokenLedger(client),
        action_history=anomalies,
        audit=history,
        notifier=notifier,
    )
    binder = RunBinder(approvals.signing_key, resources)
    catalogue = live_catalogue(settings.rules_file)
    advisor_client = AdvisorClient() if endpoints else None
    advisors = AdvisorPanel(advisor_client, endpoints) if advisor_client is not None else None
    claims = AnomalyClaims(kube)
    namespaces = NamespaceLabels(KubeNamespaceReader(kube), remediation_scope(settings))
    workloads = WorkloadStore(kube)
    prometheus = (
        PrometheusAlerts(settings.prometheus_url, timeout_seconds=settings.prometheus_timeout_seconds)
        if settings.prometheus_url
        else None
    )
    return Dependencies(
        settings=settings,
        kube=kube,
        redis=client,
        anomalies=anomalies,
        catalogue=catalogue,
        resources=resources,
        advisor_client=advisor_client,
        history=history,
        run_stores=RunStores(
            workloads=workloads,
            incidents=incidents,
            attempts=HistoryAttemptSink(history),
            approvals=approvals,
            namespaces=namespaces,
            symptom_checks=True,
            pods=PodHealthStore(kube),
            prometheus=prometheus,
            reader=workloads,
            binder=binder,
            notifier=notifier,
        ),
        run_policy=run_policy(settings),
        claims=claims,
        incident_stores=IncidentStores(
            anomalies=anomalies, resources=resources, claims=claims, catalogue=catalogue, advisors=advisors,
            notifier=notifier, progress=DecisionProgressWriter(resources),
            binder=binder,
        ),
        incident_policy=incident_policy(settings),
        history_engine=history_engine,
        namespaces=namespaces,
        notifier=notifier,
        counters=OperatorCounters(),
        alert_workloads=PodOwnerStore(KubeObjectReader(kube)),
        prometheus=prometheus,
    )


def remediation_scope(settings: FlywheelSettings) -> RemediationScope:
    """Where Flywheel may act: the opt-in label, the listed namespaces, never the protected ones."""
    return RemediationScope.of(settings.remediation_namespaces, settings.namespace)


def live_catalogue(rules_file: str | None) -> LiveCatalogue:
    """The catalogue from ``FLYWHEEL_RULES_FILE`` when set, else the built-in one, with its content
    hash. A broken file refuses the start-up (ConfigurationError naming the rule and the field)."""
    now = datetime.now(UTC)
    if rules_file is None or not rules_file.strip():
        return LiveCatalogue(default_catalogue(), content_digest(default_catalogue_text().encode()), now)
    file = CatalogueFile(rules_file)
    source = f"rule catalogue {file.path}"
    version = file.read()
    try:
        catalogue = load_catalogue(version.text(), source=source)
    except ConfigurationError as exc:
        if str(exc).startswith(source):
            raise
        raise ConfigurationError(f"{source}: {exc}") from exc
    return LiveCatalogue(catalogue, version.digest, now)


def notification_sender(settings: FlywheelSettings) -> WebhookSender | None:
    """The notification webhook's client, when one is configured."""
    if not settings.notify_webhook_url:
        return None
    return WebhookSender(
        settings.notify_webhook_url.get_secret_value(),
        settings.notify_webhook_format,
        timeout_seconds=settings.notify_webhook_timeout_seconds,
        retries=settings.notify_webhook_retries,
    )


class FlywheelMemo(kopf.Memo):
    """Kopf's operator memo, typed: what the start-up step built, for every handler.

    Kopf copies the operator's memo into each resource's memo (a shallow copy: the same
    objects), so a handler of any resource reads the same dependencies.
    """

    deps: Dependencies
    peering: PeeringObserver
