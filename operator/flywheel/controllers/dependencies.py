"""The clients and configuration every handler shares, built once at operator start-up."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio

from flywheel.domain.escalation import EscalationThresholds
from flywheel.domain.rules import RuleCatalogue, configured_catalogue
from flywheel.settings import FlywheelSettings
from flywheel.stores.advisor_client import AdvisorClient, AdvisorEndpoint, advisors_from_settings
from flywheel.stores.anomaly_redis import AnomalyStore, connect_redis
from flywheel.stores.kube import FlywheelResources


@dataclass
class AdvisorPanel:
    """The configured advisors and the client that asks them."""

    client: AdvisorClient
    endpoints: list[AdvisorEndpoint]


@dataclass
class Dependencies:
    settings: FlywheelSettings
    redis: redis.asyncio.Redis
    anomalies: AnomalyStore
    catalogue: RuleCatalogue
    resources: FlywheelResources
    advisors: AdvisorPanel | None

    async def close(self) -> None:
        if self.advisors is not None:
            await self.advisors.client.close()
        await self.redis.aclose()


async def build_dependencies(settings: FlywheelSettings) -> Dependencies:
    """Everything is lazy about connecting: Redis may be down at start-up and come back later."""
    client = connect_redis(settings.redis_url, timeout_seconds=settings.redis_timeout_seconds)
    thresholds = EscalationThresholds(
        repeat=settings.repeat_threshold,
        escalate=settings.escalate_threshold,
        permanent_fix=settings.permanent_fix_threshold,
    )
    endpoints = advisors_from_settings(settings)
    return Dependencies(
        settings=settings,
        redis=client,
        anomalies=AnomalyStore(client, thresholds),
        catalogue=configured_catalogue(settings.rules_file),
        resources=FlywheelResources(),
        advisors=AdvisorPanel(AdvisorClient(), endpoints) if endpoints else None,
    )
