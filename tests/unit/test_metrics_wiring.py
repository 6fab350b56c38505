"""Pieces around the metrics: leadership from Kopf's peering records, settings, webhook bodies.

Scenario matrix:
- leadership: alone → active; a live higher-priority peer → standby; a dead one → active;
  two live records of our priority → standby (Kopf pauses both); one of ours → active;
  outranked in any of several peering objects → standby; a standalone observer is active
  without reading anything;
- the notification scope: the tenant, else the sorted watched namespaces, else "cluster";
- settings: defaults, the funnel period's minimum, webhook format, comma-separated internal
  sources, a blank webhook URL meaning none;
- webhook configuration errors and the JSON/Slack bodies.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from flywheel.domain.funnel import ObjectSample
from flywheel.domain.notifications import Notification
from flywheel.errors import ConfigurationError
from flywheel.handlers.metrics import notification_scope
from flywheel.settings import FlywheelSettings
from flywheel.stores.notifications import WebhookFormat, WebhookSender, webhook_body
from flywheel.stores.peering import PeeringObserver, leadership

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


def peer(priority: int, seen_ago: timedelta = timedelta(seconds=5), lifetime: int = 60) -> dict[str, object]:
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - seen_ago).isoformat()}


class TestLeadership:
    def test_alone_is_active(self) -> None:
        assert leadership([{"me": peer(500)}], 500, NOW).active

    def test_a_live_higher_priority_peer_makes_a_standby(self) -> None:
        verdict = leadership([{"me": peer(500), "other": peer(700)}], 500, NOW)
        assert not verdict.active and "700 > 500" in verdict.reason

    def test_a_dead_higher_priority_peer_does_not(self) -> None:
        assert leadership([{"me": peer(500), "other": peer(700, seen_ago=timedelta(seconds=61))}], 500, NOW).active

    def test_two_records_of_our_priority_pause_both(self) -> None:
        assert not leadership([{"me": peer(500), "twin": peer(500)}], 500, NOW).active

    def test_lower_priority_peers_do_not_matter(self) -> None:
        assert leadership([{"me": peer(500), "other": peer(100)}], 500, NOW).active

    def test_outranked_in_any_peering_object_is_standby(self) -> None:
        assert not leadership([{"me": peer(500)}, {"me": peer(500), "x": peer(900)}], 500, NOW).active

    def test_no_peering_object_is_active(self) -> None:
        assert leadership([], 500, NOW).active


async def test_a_standalone_observer_is_active_without_reading_anything() -> None:
    observer = PeeringObserver(standalone=True, name="flywheel", priority=0, clusterwide=True, kube=None)
    assert (await observer.check(NOW)).active


def test_notification_scope() -> None:
    assert notification_scope(FlywheelSettings(tenant="acme"), ("b", "a")) == "acme"
    assert notification_scope(FlywheelSettings(), ("team-b", "team-a")) == "team-a,team-b"
    assert notification_scope(FlywheelSettings(), ()) == "cluster"


class TestSettings:
    def test_defaults(self) -> None:
        settings = FlywheelSettings()
        assert (settings.metrics_port, settings.metrics_interval_seconds, settings.funnel_period_minutes) == (8080, 30, 10)
        assert settings.notify_webhook_url is None and settings.notify_webhook_format == "json"
        assert settings.internal_sources == []

    def test_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FLYWHEEL_INTERNAL_SOURCES", "synthetic-probe, blackbox ,")
        monkeypatch.setenv("FLYWHEEL_NOTIFY_WEBHOOK_URL", "  ")
        monkeypatch.setenv("FLYWHEEL_METRICS_INTERVAL_SECONDS", "2")
        settings = FlywheelSettings()
        assert settings.internal_sources == ["synthetic-probe", "blackbox"]
        assert settings.notify_webhook_url is None
        assert settings.metrics_interval_seconds == 2.0

    def test_funnel_period_below_five_minutes_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="funnel_period_minutes"):
            FlywheelSettings(funnel_period_minutes=4)

    def test_unknown_webhook_format_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="json' or 'slack"):
            FlywheelSettings(notify_webhook_format="teams")


def test_webhook_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="http"):
        WebhookSender("ftp://example")
    with pytest.raises(ConfigurationError, match="json or slack"):
        WebhookSender("https://hooks.example/x", "xml")


def test_webhook_bodies() -> None:
    notification = Notification(
        kind="funnel_stall", reason="FunnelPassStall", title="Flywheel funnel stall PASS_STALL (shop)",
        message="2 Runs executed but none passed.", scope="shop", occurred_at=NOW,
        subjects=(ObjectSample("Run", "shop", "r1", "u1"),), details={"executed": 2},
    )
    generic = webhook_body(notification, WebhookFormat.JSON)
    assert generic == {
        "kind": "funnel_stall", "reason": "FunnelPassStall", "title": "Flywheel funnel stall PASS_STALL (shop)",
        "message": "2 Runs executed but none passed.", "severity": "warning", "scope": "shop",
        "occurredAt": "2026-03-14T12:00:00Z", "subjects": [{"kind": "Run", "namespace": "shop", "name": "r1"}],
        "details": {"executed": 2},
    }
    slack = webhook_body(notification, WebhookFormat.SLACK)
    assert slack["text"] == ":warning: *Flywheel funnel stall PASS_STALL (shop)*\n2 Runs executed but none passed."
    assert slack["blocks"][2]["elements"][0]["text"] == "Run shop/r1"
