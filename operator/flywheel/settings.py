"""Operator settings, read from ``FLYWHEEL_*`` environment variables.

Every field carries its documentation; the README's configuration table is generated
from this model (``flywheel config-reference``), so the two cannot drift apart.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flywheel.api.enums import RiskLevel
from flywheel.domain.alerts import MIN_INTAKE_TOKEN_LENGTH
from flywheel.domain.notifications import NotificationKind, WebhookFormat
from flywheel.logs import LogFormat, LogLevel


class WebhookMode(StrEnum):
    OFF = "off"
    LOOPBACK = "loopback"
    SERVICE = "service"


class WebhookCertSource(StrEnum):
    MANAGED = "managed"
    DIRECTORY = "directory"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class FlywheelSettings(BaseSettings):
    """All of Flywheel's configuration. Environment variables are ``FLYWHEEL_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore", frozen=True)

    # The URLs are secrets: they may carry a password (redis://:password@host, postgresql://user:password@host).
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis holding recurrence windows, repair history and single-use ids.",
    )
    redis_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Socket timeout for Redis calls; past it the anomaly counts are marked degraded.",
    )
    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///flywheel.db"),
        description=(
            "SQLAlchemy URL of the history database: an SQLite file (embedded default) or "
            "postgresql+psycopg://user:password@host/db."
        ),
    )
    history_spool_dir: str | None = Field(
        default=None,
        description=(
            "Writable directory where audit events, repair executions and knowledge entries wait for the "
            "history database (an fsync'd SQLite file, replayed at start), so an outage followed by a restart "
            "loses none. Empty: they wait in memory and survive an outage, not a restart."
        ),
    )
    finished_ttl_seconds: int = Field(
        default=604800,
        ge=0,
        description=(
            "Seconds after an Incident is Resolved or Closed before it is deleted with its Runs, Approvals and "
            "claim Lease, once the history database holds them all (like a Job's ttlSecondsAfterFinished); "
            "0 keeps every Incident forever."
        ),
    )
    retention_interval_seconds: float = Field(
        default=60.0, ge=1.0, description="How often the active replica looks for finished Incidents past their TTL."
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
    rules_reload_seconds: float = Field(
        default=10.0,
        ge=0,
        description=(
            "How often FLYWHEEL_RULES_FILE is checked for a new version (a mounted ConfigMap is updated in "
            "place); a valid one replaces the catalogue without a restart, a broken one is refused and the "
            "old one kept. 0: read once at start-up."
        ),
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
    advisor_api_key: SecretStr | None = Field(
        default=None, description="Bearer token sent to the advisors, if they require one."
    )
    advisor_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Deadline for an advisor answer; later answers fall back to the rules."
    )
    run_timeout_seconds: int = Field(default=600, ge=10, description="Default deadline of a Run.")
    run_max_attempts: int = Field(default=2, ge=1, le=10, description="Default attempts of a Run's action.")
    verification_window_seconds: int = Field(
        default=600,
        ge=0,
        le=86400,
        description=(
            "How long a Run stays Verifying after its rollout completes before the symptom is checked "
            "(alerts resolved, or Pods Ready without restarts); a catalogue rule may set its own. "
            "Leave room for the alert rule's evaluation interval plus Alertmanager's group_interval."
        ),
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus asked for ALERTS at the end of a verification window. Empty: Alertmanager's resolved notifications only.",
    )
    prometheus_timeout_seconds: float = Field(default=5.0, gt=0, description="Timeout of one Prometheus query.")
    max_decisions_per_incident: int = Field(
        default=3, ge=1, le=100, description="Decisions (and Runs) at most per Incident: the remediation ladder's length."
    )
    ladder_requires_approval: bool = Field(
        default=True, description="Every decision after an Incident's first requires approval."
    )
    run_max_concurrent_per_namespace: int = Field(
        default=5,
        ge=1,
        description="Runs executing at once per namespace; further Runs (approved ones too) wait with condition Throttled.",
    )
    run_max_concurrent_per_target: int = Field(
        default=1,
        ge=1,
        description="Runs executing at once per workload; further Runs (approved ones too) wait with condition Throttled.",
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
    intake_port: int = Field(
        default=8081,
        ge=0,
        le=65535,
        description=(
            "Port of the Alertmanager webhook receiver (POST /intake/alertmanager, GET /healthz); 0 disables it."
        ),
    )
    intake_token: SecretStr | None = Field(
        default=None,
        description=(
            "Bearer token Alertmanager must send (http_config.authorization.credentials), at least "
            f"{MIN_INTAKE_TOKEN_LENGTH} characters (the operator refuses to start with a shorter one). "
            "Unset: the receiver refuses every request with 401."
        ),
    )
    intake_max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest webhook payload accepted; larger ones are refused with 413.",
    )
    intake_max_json_depth: int = Field(
        default=16,
        ge=4,
        le=256,
        description=(
            "Deepest JSON nesting accepted in a webhook payload (Alertmanager's is 4 levels); deeper ones "
            "are refused with 400."
        ),
    )
    intake_rate_limit_per_second: float = Field(
        default=20.0,
        ge=0,
        description=(
            "Requests per second each client address may send to the intake (a token bucket); over it the "
            "answer is 429 with Retry-After. 0 disables the limit."
        ),
    )
    intake_rate_limit_burst: int = Field(
        default=100, ge=1, description="Requests a client address may send at once before its rate limit applies."
    )
    intake_tls_cert_dir: str | None = Field(
        default=None,
        description=(
            "Directory with tls.crt and tls.key (e.g. a mounted cert-manager Secret): the intake serves HTTPS "
            "and loads the files again when they change. Unset: plain HTTP."
        ),
    )
    metrics_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="Port of the metrics server (/metrics, /stats/summary, /stats/flywheel, /healthz); 0 disables it.",
    )
    metrics_bind_address: str = Field(
        default="0.0.0.0", description="Address the metrics server listens on."
    )
    metrics_interval_seconds: float = Field(
        default=30.0,
        ge=1.0,
        description="How often the metrics snapshot is computed; scrapes read the latest snapshot and never query.",
    )
    funnel_period_minutes: int = Field(
        default=10, ge=5, description="Period of the remediation funnel and its stall rules, in minutes (at least 5)."
    )
    internal_sources: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Incident sources (spec.source) that are synthetic probes, comma-separated; "
            "left out of the funnel's source statistics."
        ),
    )
    notify_webhook_url: SecretStr | None = Field(
        default=None,
        description=(
            "Webhook receiving notifications (decision ready, approval requested, Run finished, ladder "
            "exhausted, funnel stalls); a secret, like a Slack incoming webhook's URL. Empty: none are sent "
            "outside the cluster (stalls still post Events)."
        ),
    )
    notify_events: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["all"],
        description=(
            "Notification kinds sent to the webhook, comma-separated: decision_ready, approval_requested, "
            "run_finished, ladder_exhausted, funnel_stall, or all (the default)."
        ),
    )
    notify_webhook_format: WebhookFormat = Field(
        default=WebhookFormat.JSON,
        description="Webhook payload format: json (generic) or slack (Slack-compatible incoming webhook).",
    )
    notify_webhook_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Timeout of one webhook delivery attempt."
    )
    notify_webhook_retries: int = Field(
        default=3, ge=0, le=10, description="Retries of a webhook delivery that failed transiently (5xx, 429, network)."
    )
    namespace: str = Field(
        default="flywheel-system",
        min_length=1,
        description="The operator's own namespace; the approval signing-key Secret lives there.",
    )
    remediation_namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Namespaces Flywheel may act in besides those labelled flywheel.dev/remediation=enabled, "
            "comma-separated; the only way to include kube-system, kube-public, kube-node-lease or "
            "FLYWHEEL_NAMESPACE. Runs elsewhere fail with NamespaceNotEnabled and the intake refuses their alerts."
        ),
    )
    approver_groups: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["flywheel-approvers"],
        description="Groups whose members may decide Approvals, comma-separated.",
    )
    approver_users: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Users who may decide Approvals, comma-separated, in addition to the groups.",
    )
    approval_timeout_seconds: int = Field(
        default=3600,
        ge=5,
        description="How long an Approval waits for a decision before it expires and its Run times out.",
    )
    degraded_requires_approval: bool = Field(
        default=True,
        description=(
            "An anomaly whose recurrence counts are degraded (Redis unavailable) needs approval before an "
            "automatic action: ESCALATE or PERMANENT_FIX cannot be ruled out (fail closed)."
        ),
    )
    approval_token_ttl_seconds: int = Field(
        default=600,
        ge=5,
        description="Lifetime of the approval token handed to the executor once a Run is approved.",
    )
    approval_signing_secret: str = Field(
        default="flywheel-approval-signing-key",
        min_length=1,
        description="Secret (in FLYWHEEL_NAMESPACE, key signing-key) holding the HS256 key of approval tokens; created on first start if absent.",
    )
    webhook_mode: WebhookMode = Field(
        default=WebhookMode.OFF,
        description=(
            "Admission webhooks: off (approvals are refused: nobody's identity can be stamped), "
            "loopback (local control plane: generated CA, 127.0.0.1, configurations managed by the operator) "
            "or service (in a cluster: served behind FLYWHEEL_WEBHOOK_SERVICE, configurations from manifests/, "
            "certificate from FLYWHEEL_WEBHOOK_CERT_SOURCE)."
        ),
    )
    webhook_port: int = Field(
        default=9443, ge=0, le=65535, description="Port of the admission webhook server; 0 picks a free one (loopback only)."
    )
    webhook_cert_source: WebhookCertSource = Field(
        default=WebhookCertSource.DIRECTORY,
        description=(
            "Service mode's certificate: managed (the operator keeps a CA and serving pair in the Secret "
            "FLYWHEEL_WEBHOOK_CERT_SECRET, injects the CA bundle into its webhook configurations and rotates both) "
            "or directory (tls.crt and tls.key from FLYWHEEL_WEBHOOK_CERT_DIR, e.g. cert-manager's Secret)."
        ),
    )
    webhook_cert_secret: str = Field(
        default="flywheel-webhook-certs",
        min_length=1,
        description="Secret (in FLYWHEEL_NAMESPACE) holding the managed webhook CA and serving pair; created on first start.",
    )
    webhook_cert_dns_names: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "More DNS names for the managed serving certificate besides <FLYWHEEL_WEBHOOK_SERVICE>.<namespace>.svc "
            "(and .cluster.local), comma-separated: for webhook configurations that reach the operator by "
            "clientConfig.url (an operator outside the cluster), like cert-manager's --dynamic-serving-dns-names."
        ),
    )
    webhook_service: str = Field(
        default="flywheel",
        min_length=1,
        description="Service in front of the webhook server: the managed certificate is for <service>.<namespace>.svc.",
    )
    webhook_configuration: str = Field(
        default="flywheel",
        min_length=1,
        description="Name of the Mutating- and ValidatingWebhookConfiguration whose caBundle the managed mode sets.",
    )
    webhook_cert_validity_seconds: int = Field(
        default=90 * 24 * 3600,
        ge=30,
        description="Lifetime of a managed serving certificate; a new one is issued at 2/3 of it.",
    )
    webhook_ca_validity_seconds: int = Field(
        default=3 * 365 * 24 * 3600,
        ge=30,
        description=(
            "Lifetime of a managed webhook CA (at least the serving certificate's): its successor joins the "
            "bundle at 1/2, signs from 2/3; the old CA stays trusted until it expires."
        ),
    )
    webhook_cert_dir: str = Field(
        default="/etc/flywheel/webhook-tls",
        description="Directory with tls.crt and tls.key of the webhook server (FLYWHEEL_WEBHOOK_CERT_SOURCE=directory).",
    )
    log_level: LogLevel = Field(
        default=LogLevel.INFO, description="Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)."
    )
    log_format: LogFormat = Field(default=LogFormat.CONSOLE, description="Log format: console or json.")

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

    @field_validator("webhook_ca_validity_seconds")
    @classmethod
    def _ca_outlives_serving_certificates(cls, value: int, info: object) -> int:
        serving = getattr(info, "data", {}).get("webhook_cert_validity_seconds")
        if serving is not None and value < serving:
            raise ValueError(
                f"webhook_ca_validity_seconds ({value}) must be at least webhook_cert_validity_seconds ({serving})"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_in_any_case(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator(
        "internal_sources", "approver_groups", "approver_users", "remediation_namespaces", "webhook_cert_dns_names",
        mode="before",
    )
    @classmethod
    def _lists_from_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("notify_events", mode="before")
    @classmethod
    def _known_notification_kinds(cls, value: object) -> object:
        names = _split_csv(value)
        if not isinstance(names, list):
            return names
        known = {"all", *(kind.value for kind in NotificationKind)}
        unknown = [str(name) for name in names if name not in known]
        if unknown:
            raise ValueError(
                f"notify_events: unknown notification kind(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return names or ["all"]

    @field_validator("intake_tls_cert_dir", mode="before")
    @classmethod
    def _blank_cert_dir_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("notify_webhook_url", "prometheus_url", "advisor_api_key", mode="before")
    @classmethod
    def _blank_webhook_is_none(cls, value: object) -> object:
        # An empty FLYWHEEL_NOTIFY_WEBHOOK_URL (a blank ConfigMap entry) means "no webhook".
        return None if isinstance(value, str) and not value.strip() else value




@lru_cache(maxsize=1)
def get_settings() -> FlywheelSettings:
    """The process-wide settings, read once from the environment."""
    return FlywheelSettings()
