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
    assert settings.redis_url == "redis://10.0.0.1:6379/2"
    assert settings.advisor_urls == ["http://a:8000", "http://b:8000"]


def test_descending_thresholds_are_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_ESCALATE_THRESHOLD", "12")
    with pytest.raises(ValidationError, match="permanent_fix_threshold"):
        FlywheelSettings()


def test_non_numeric_threshold_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_REPEAT_THRESHOLD", "three")
    with pytest.raises(ValidationError, match="repeat_threshold"):
        FlywheelSettings()
