"""Operator settings, read from ``FLYWHEEL_*`` environment variables.

Every field carries its documentation; the README's configuration table is generated
from this model (``flywheel config-reference``), so the two cannot drift apart.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flywheel.api.enums import RiskLevel


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class FlywheelSettings(BaseSettings):
    """All of Flywheel's configuration. Environment variables are ``FLYWHEEL_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore", frozen=True)

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis holding recurrence windows, repair history and single-use ids.",
    )
    redis_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Socket timeout for Redis calls; past it the anomaly counts are marked degraded.",
    )
    database_url: str = Field(
        default="sqlite:///flywheel.db",
        description=(
            "SQLAlchemy URL of the history database: an SQLite file (embedded default) or "
            "postgresql+psycopg://user:password@host/db."
        ),
    )
    tenant: str | None = Field(
        default=None,
        description="Redis key prefix shared by all namespaces (a project id). Empty: one prefix per namespace.",
    )
    repeat_threshold: int = Field(default=3, ge=1, description="24h occurrences at which an anomaly is REPEAT.")
    escalate_threshold: int = Field(
        default=5, ge=1, description="24h occurrences at which an anomaly is ESCALATE (approval required)."
    )
    permanent_fix_threshold: int = Field(
        default=10,
        ge=1,
        description="24h occurrences at which an anomaly needs a PERMANENT_FIX (no automatic action).",
    )
    rules_file: str | None = Field(
        default=None,
        description="YAML rule catalogue replacing the built-in one (mount a ConfigMap here).",
    )
    max_automatic_risk: RiskLevel = Field(
        default=RiskLevel.MEDIUM,
        description="Riskiest action applied without approval (low, medium, high, critical); riskier ones wait for a person.",
    )
    max_scale_replicas: int = Field(
        default=10, ge=1, description="Upper bound for Scale actions; scaling never lowers the current count."
    )
    advisor_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "OpenAI-compatible chat-completions endpoints (comma-separated base URLs). "
            "Empty: rules only. For P0/P1 every advisor votes."
        ),
    )
    advisor_model: str = Field(default="default", description="Model name sent to the advisors.")
    advisor_api_key: str | None = Field(
        default=None, description="Bearer token sent to the advisors, if they require one."
    )
    advisor_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Deadline for an advisor answer; later answers fall back to the rules."
    )
    run_timeout_seconds: int = Field(default=600, ge=10, description="Default deadline of a Run.")
    run_max_attempts: int = Field(default=2, ge=1, le=10, description="Default attempts of a Run's action.")
    run_max_concurrent_per_namespace: int = Field(
        default=5,
        ge=1,
        description="Runs executing at once per namespace; further Runs wait Pending with condition Throttled.",
    )
    run_max_concurrent_per_target: int = Field(
        default=1,
        ge=1,
        description="Runs executing at once per workload; further Runs wait Pending with condition Throttled.",
    )
    circuit_breaker_max_remediations: int = Field(
        default=3,
        ge=1,
        description=(
            "Automatic remediations of one workload within the circuit-breaker window after which "
            "the next Run is not executed automatically but waits for approval."
        ),
    )
    circuit_breaker_window_seconds: int = Field(
        default=3600, ge=1, description="Window over which the circuit breaker counts a workload's remediations."
    )
    log_level: str = Field(default="INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    log_format: str = Field(default="console", description="Log format: console or json.")

    @field_validator("advisor_urls", mode="before")
    @classmethod
    def _advisor_urls_from_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("permanent_fix_threshold")
    @classmethod
    def _thresholds_ascending(cls, value: int, info: object) -> int:
        data = getattr(info, "data", {})
        repeat, escalate = data.get("repeat_threshold"), data.get("escalate_threshold")
        if repeat is not None and escalate is not None and not repeat <= escalate <= value:
            raise ValueError(
                "thresholds must ascend: repeat_threshold <= escalate_threshold <= permanent_fix_threshold"
            )
        return value

    @field_validator("log_format")
    @classmethod
    def _known_log_format(cls, value: str) -> str:
        if value not in ("console", "json"):
            raise ValueError("log_format must be 'console' or 'json'")
        return value




@lru_cache(maxsize=1)
def get_settings() -> FlywheelSettings:
    """The process-wide settings, read once from the environment."""
    return FlywheelSettings()
