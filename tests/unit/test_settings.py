"""Settings come from FLYWHEEL_* variables; bad values are refused with the field named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flywheel.settings import FlywheelSettings

pytestmark = pytest.mark.unit


def test_defaults_match_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in __import__("os").environ if v.startswith("FLYWHEEL_")]:
        monkeypatch.delenv(var)
    settings = FlywheelSettings()
    assert (settings.repeat_threshold, settings.escalate_threshold, settings.permanent_fix_threshold) == (3, 5, 10)
    assert settings.advisor_timeout_seconds == 30.0
    assert settings.advisor_urls == []


def test_environment_overrides_and_csv_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_REDIS_URL", "redis://10.0.0.1:6379/2")
    monkeypatch.setenv("FLYWHEEL_ADVISOR_URLS", "http://a:8000, http://b:8000")
    settings = FlywheelSettings()
    assert settings.redis_url.get_secret_value() == "redis://10.0.0.1:6379/2"
    assert settings.advisor_urls == ["http://a:8000", "http://b:8000"]


def test_descending_thresholds_are_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_ESCALATE_THRESHOLD", "12")
    with pytest.raises(ValidationError, match="permanent_fix_threshold"):
        FlywheelSettings()


def test_non_numeric_threshold_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_REPEAT_THRESHOLD", "three")
    with pytest.raises(ValidationError, match="repeat_threshold"):
        FlywheelSettings()


SECRETS = {
    "FLYWHEEL_ADVISOR_API_KEY": "sk-advisor-key-0123456789",
    "FLYWHEEL_INTAKE_TOKEN": "intake-token-" + "9" * 32,
    "FLYWHEEL_NOTIFY_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",
    "FLYWHEEL_DATABASE_URL": "postgresql+psycopg://flywheel:db-password-42@db/flywheel",
    "FLYWHEEL_REDIS_URL": "redis://:redis-password-42@redis:6379/0",
}


def test_secrets_are_held_as_secrets_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    settings = FlywheelSettings()
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    for name, value in SECRETS.items():
        field = name.removeprefix("FLYWHEEL_").lower()
        assert getattr(settings, field).get_secret_value() == value
        assert value not in shown, f"{name} shown"


def test_a_blank_advisor_key_or_webhook_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_ADVISOR_API_KEY", " ")
    monkeypatch.setenv("FLYWHEEL_NOTIFY_WEBHOOK_URL", "")
    settings = FlywheelSettings()
    assert (settings.advisor_api_key, settings.notify_webhook_url) == (None, None)


def test_formats_and_the_log_level_are_enumerations(monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel.domain.notifications import WebhookFormat
    from flywheel.logs import LogFormat, LogLevel

    monkeypatch.setenv("FLYWHEEL_LOG_LEVEL", "debug")
    monkeypatch.setenv("FLYWHEEL_LOG_FORMAT", "json")
    monkeypatch.setenv("FLYWHEEL_NOTIFY_WEBHOOK_FORMAT", "slack")
    settings = FlywheelSettings()
    assert settings.log_level is LogLevel.DEBUG
    assert settings.log_format is LogFormat.JSON
    assert settings.notify_webhook_format is WebhookFormat.SLACK


@pytest.mark.parametrize(("variable", "value"), [
    ("FLYWHEEL_LOG_LEVEL", "LOUD"), ("FLYWHEEL_LOG_FORMAT", "xml"), ("FLYWHEEL_NOTIFY_WEBHOOK_FORMAT", "teams"),
])
def test_an_unknown_format_or_level_is_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("FLYWHEEL_").lower()):
        FlywheelSettings()
