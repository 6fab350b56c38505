"""The Prometheus ALERTS client against a real Prometheus: answers, refusals and unavailability.

A real Prometheus scrapes itself and fires a rule over its own ``up`` series; the client finds
the alert's labels among the firing ALERTS; a malformed expression is refused (permanent), a
closed port and a timeout are unavailable (transient).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from flywheel.errors import PrometheusRefusedError, PrometheusUnavailableError, StoreUnavailableError
from flywheel.stores.prometheus_alerts import PrometheusAlerts
from tests.harness.ports import free_port
from tests.harness.prometheus import prometheus_server
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.integration


def test_firing_alerts_refusals_and_unavailability(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "t", "interval": "1s", "rules": [
        {"alert": "PrometheusSelfUp", "expr": "up == 1", "labels": {"severity": "info"}},
    ]}]}))
    port = free_port()
    with prometheus_server([f"127.0.0.1:{port}"], rule_files=[rules], port=port) as prometheus:
        query = 'ALERTS{alertstate="firing",alertname="PrometheusSelfUp"}'
        wait_for(lambda: prometheus.query(query), timeout=60, what="the self-up alert firing")

        async def scenario() -> None:
            client = PrometheusAlerts(prometheus.url, timeout_seconds=5)
            try:
                [series] = await client.firing(query)
                assert series["alertname"] == "PrometheusSelfUp" and series["severity"] == "info"
                assert series["instance"] == f"127.0.0.1:{port}" and series["alertstate"] == "firing"
                assert await client.firing('ALERTS{alertstate="firing",alertname="NoSuchAlert"}') == []
                with pytest.raises(PrometheusRefusedError):
                    await client.firing("ALERTS{")
            finally:
                await client.close()
            closed = PrometheusAlerts(f"http://127.0.0.1:{free_port()}", timeout_seconds=2)
            try:
                with pytest.raises(PrometheusUnavailableError) as unavailable:
                    await closed.firing("ALERTS")
                assert isinstance(unavailable.value, StoreUnavailableError)
            finally:
                await closed.close()

        asyncio.run(scenario())
