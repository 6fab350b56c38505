"""Operator entry point: Kopf settings, shared dependencies, and the handler modules.

Only wiring lives here; handlers are in ``flywheel.handlers`` (one resource per module)
and the logic they call lives in ``flywheel.domain`` and ``flywheel.controllers``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kopf

from flywheel.errors import ConfigurationError, FlywheelError
from flywheel.logs import configure_logging, get_logger, register_secrets
from flywheel.settings import FlywheelSettings, WebhookCertSource, WebhookMode, get_settings

if TYPE_CHECKING:
    from flywheel.controllers.webhook_certificate import ServingPairSink
    from flywheel.stores.kube import KubeApi
    from flywheel.stores.peering import PeeringObserver
    from flywheel.wiring import FlywheelMemo

log = get_logger(__name__)

# How long a replica's peering keep-alive stays valid. Kopf rewrites it every lifetime − 5…10 s
# (randomised), so a standby sees a SIGKILLed leader's record expire — and takes over — at most
# this long after the leader's last keep-alive. Kopf's default (60 s) would leave Incidents
# unserved for a minute after a node failure.
PEERING_LIFETIME_SECONDS = 15


class RoutineSuccessFilter(logging.Filter):
    """Drops Kopf's per-object success lines ("Handler 'x' succeeded.", "Creation is processed: …").

    Kopf logs one at INFO for every handler call — for the history projection that is every
    watch event — and formatting them was a tenth of the operator's CPU in an alert storm
    (bench/e2e_throughput.py). Our own logs (run_transition, anomaly_occurrence_recorded, …) say
    what happened; failures, retries and warnings still pass.
    """

    _ROUTINE = re.compile(r"^(?:(?:Handler|Timer|Daemon) '[^']*' succeeded\.|\w+ is processed: \d+ succeeded; 0 failed\.)$")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not self._ROUTINE.match(record.getMessage())


def quiet_routine_kopf_successes() -> None:
    kopf_objects = logging.getLogger("kopf.objects")
    if not any(isinstance(existing, RoutineSuccessFilter) for existing in kopf_objects.filters):
        kopf_objects.addFilter(RoutineSuccessFilter())


class ChangeHandledDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf's diff-base, built only for the kinds that have change handlers.

    Kopf deep-copies every watched body to compare it with the last handled one, whether or
    not the kind has a change handler to call. Incidents and Runs have none (raw watch events
    and a driver loop, see flywheel.handlers.run): their copy was pure cost, ~4 % of the
    operator's CPU in an alert storm.
    """

    WITHOUT_CHANGE_HANDLERS = frozenset({"Incident", "Run"})

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if body.get("kind") in self.WITHOUT_CHANGE_HANDLERS:
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Kopf behaviour shared by ``flywheel run`` and the tests."""
    # Progress and diff-base in annotations: our status schemas stay strict and
    # Kopf's bookkeeping never shows up in `kubectl get -o yaml` status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.flywheel.dev")
    settings.persistence.diffbase_storage = ChangeHandledDiffBase(
        prefix="kopf.flywheel.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "flywheel.dev/finalizer"
    settings.posting.level = 20  # INFO and above become Kubernetes Events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # A stream that brings no event and no bookmark (requested every minute) for this long is
    # restarted by Kopf itself — a watch that silently stopped (Kopf issues #787, #1276);
    # flywheel_watch_restarts_total counts the restarts.
    settings.watching.inactivity_timeout = 70
    # No limit on Kopf's per-object workers. With a limit, an operator started over more objects
    # of an indexed kind than the limit never runs a handler: each worker waits, holding its slot,
    # until every object is indexed, and the objects without a slot are never indexed (Kopf issue
    # #1243). Workers are small tasks that end idle_timeout after their object's last event; the
    # API client's connection pool (flywheel.stores.kube.DEFAULT_CONNECTIONS) bounds the calls
    # they make, and the drivers (controllers/driver.py) bound the passes.
    settings.queueing.worker_limit = None
    settings.queueing.idle_timeout = 0.5
    # Kopf's threads for synchronous handlers: ours are all async (see flywheel.handlers).
    settings.execution.max_workers = 4
    settings.networking.request_timeout = 30
    quiet_routine_kopf_successes()
    settings.peering.lifetime = PEERING_LIFETIME_SECONDS


def default_priority() -> int:
    """A distinct peering priority per pod, so two replicas never tie (Kopf freezes on ties)."""
    identity = os.environ.get("POD_NAME") or socket.gethostname()
    return 100 + (sum(identity.encode()) % 900)


def require_shared_history(database_url: str, *, standalone: bool) -> None:
    """Refuse peering on SQLite: every replica would keep a history file of its own.

    Replicas that join Kopf peering take over from each other, so each would write a part of
    the history into its own SQLite file and none would hold all of it.
    """
    from flywheel.stores.history.engine import describe_database_url, normalize_database_url

    if standalone or normalize_database_url(database_url).get_backend_name() != "sqlite":
        return
    raise ConfigurationError(
        f"FLYWHEEL_DATABASE_URL is SQLite ({describe_database_url(database_url)}), but without --standalone "
        "this operator joins peering with other replicas, each of which would keep a history of its own: "
        "use PostgreSQL (postgresql+psycopg://...) for peering replicas, or run one replica with --standalone"
    )


def held_secrets(settings: FlywheelSettings) -> list[str | None]:
    """The secret values this operator holds, kept out of its log (``flywheel.logs.register_secrets``)."""
    from urllib.parse import urlsplit

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database_password = make_url(settings.database_url.get_secret_value()).password
    except ArgumentError:
        database_password = None
    try:
        redis_password = urlsplit(settings.redis_url.get_secret_value()).password
    except ValueError:
        redis_password = None
    return [
        settings.intake_token.get_secret_value() if settings.intake_token else None,
        settings.advisor_api_key.get_secret_value() if settings.advisor_api_key else None,
        settings.notify_webhook_url.get_secret_value() if settings.notify_webhook_url else None,
        str(database_password) if database_password else None,
        redis_password,
    ]


def run_operator(
    *,
    namespaces: list[str],
    standalone: bool,
    peering_name: str,
    priority: int | None,
    liveness_endpoint: str | None,
) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    register_secrets(held_secrets(settings))
    require_shared_history(settings.database_url.get_secret_value(), standalone=standalone)
    from flywheel.intake import require_intake_token

    require_intake_token(settings.intake_token)
    # Importing the handler modules registers them with Kopf's default registry.
    import flywheel.handlers

    if settings.webhook_mode is not WebhookMode.OFF:
        import flywheel.handlers.admission  # noqa: F401
    from flywheel.handlers.intake import MEMO_WATCHED_NAMESPACES
    from flywheel.wiring import FlywheelMemo

    log.info("operator_starting", namespaces=namespaces or "all", standalone=standalone)
    # Kopf treats an explicit peering name as "peering is mandatory", so pass it only
    # when peering is wanted: a standalone operator must not wait for the peering CRDs.
    peering: dict[str, Any] = {}
    if not standalone:
        from flywheel.stores.peering import ensure_peering_objects

        ensure_peering_objects(peering_name, namespaces)
        peering = {"peering_name": peering_name, "priority": priority if priority is not None else default_priority()}
    asyncio.run(
        kopf.operator(
            standalone=standalone,
            namespaces=namespaces,
            clusterwide=not namespaces,
            liveness_endpoint=liveness_endpoint,
            # The intake refuses alerts for namespaces this operator does not reconcile.
            memo=FlywheelMemo({MEMO_WATCHED_NAMESPACES: tuple(namespaces)}),
            **peering,
        )
    )


MEMO_LOOPBACK_WEBHOOKS = "loopback_webhooks"
# How long a loopback operator waits for its own webhook server to listen before registering it.
WEBHOOK_LISTEN_TIMEOUT_SECONDS = 30.0


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _register_when_listening(
    kube: KubeApi, port: int, name: str, ca_pem: bytes, namespaces: tuple[str, ...], operator_identity: str
) -> None:
    """Register the loopback webhooks once the server answers: never point the API server at nothing."""
    from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_delay, wait_fixed

    from flywheel.stores.kube import VERSION
    from flywheel.stores.webhooks import WebhookConfigurations

    listening = AsyncRetrying(
        stop=stop_after_delay(WEBHOOK_LISTEN_TIMEOUT_SECONDS),
        wait=wait_fixed(0.2),
        retry=retry_if_exception_type(OSError),
    )
    try:
        async for attempt in listening:
            with attempt:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
    except RetryError:
        log.error("webhook_server_not_listening", port=port)
        return
    try:
        await WebhookConfigurations(kube).apply(
            name, base_url=f"https://127.0.0.1:{port}", ca_pem=ca_pem, namespaces=namespaces, version=VERSION,
            operator_identity=operator_identity,
        )
    except FlywheelError as exc:
        # Without them no decision can be taken (none is stamped): say so loudly, keep running.
        log.error("webhook_configurations_not_applied", name=name, error=str(exc))


MEMO_CERTIFICATE_TASK = "webhook_certificate_task"


def service_certificate(
    settings: FlywheelSettings, kube: KubeApi, serving: ServingPairSink
) -> tuple[Callable[[], Awaitable[None]], timedelta]:
    """The pass that keeps the served certificate current, and how often it runs (service mode)."""
    from flywheel.controllers.webhook_certificate import ManagedCertificateKeeper, directory_watcher
    from flywheel.domain.webhook_certificates import MAX_CHECK_INTERVAL, CertificatePolicy
    from flywheel.stores.webhook_certificate import CertificateSecret
    from flywheel.stores.webhooks import WebhookConfigurations

    if settings.webhook_cert_source is WebhookCertSource.DIRECTORY:
        return directory_watcher(Path(settings.webhook_cert_dir), serving).reconcile, MAX_CHECK_INTERVAL
    host = f"{settings.webhook_service}.{settings.namespace}.svc"
    policy = CertificatePolicy(
        dns_names=frozenset({host, f"{host}.cluster.local", *settings.webhook_cert_dns_names}),
        serving_validity=timedelta(seconds=settings.webhook_cert_validity_seconds),
        authority_validity=timedelta(seconds=settings.webhook_ca_validity_seconds),
    )
    keeper = ManagedCertificateKeeper(
        CertificateSecret(kube, settings.namespace, settings.webhook_cert_secret),
        WebhookConfigurations(kube),
        settings.webhook_configuration,
        policy,
        serving,
        clock=lambda: datetime.now(UTC),
    )
    return keeper.reconcile, policy.check_interval


async def _first_certificate(reconcile: Callable[[], Awaitable[None]], interval: timedelta) -> None:
    """Serve nothing until there is a certificate: meanwhile the webhooks fail closed."""
    from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_fixed

    def not_ready(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.error("webhook_certificate_not_ready", error=str(error), retry_in_seconds=interval.total_seconds())

    until_ready = AsyncRetrying(
        stop=stop_never,
        wait=wait_fixed(interval),
        retry=retry_if_exception_type((FlywheelError, OSError, ValueError)),
        before_sleep=not_ready,
    )
    await until_ready(reconcile)


async def serve_admission(kopf_settings: kopf.OperatorSettings, settings: FlywheelSettings, memo: kopf.Memo) -> None:
    """Serve the admission webhooks as FLYWHEEL_WEBHOOK_MODE says (see flywheel.stores.webhooks)."""
    if settings.webhook_mode is WebhookMode.OFF:
        log.warning("admission_webhooks_off", effect="approval decisions are refused: no identity can be stamped")
        return
    # Importing the admission handlers registers them; Kopf refuses to run them without a server.
    from flywheel.controllers.webhook_certificate import keep_reconciling
    from flywheel.handlers.admission import MEMO_OPERATOR_IDENTITY
    from flywheel.handlers.intake import MEMO_WATCHED_NAMESPACES
    from flywheel.stores.webhooks import loopback_configuration_name, own_identity, write_certificate

    kube = memo.deps.kube
    memo[MEMO_OPERATOR_IDENTITY] = await own_identity(kube)
    memo.deps.run_stores.approvals.operator_identity = memo[MEMO_OPERATOR_IDENTITY]
    log.info("admission_webhooks_on", mode=settings.webhook_mode.value, identity=memo[MEMO_OPERATOR_IDENTITY])
    if settings.webhook_mode is WebhookMode.SERVICE:
        from flywheel.handlers.admission import ReloadableWebhookServer
        from flywheel.stores.serving_tls import ServingContext

        serving = ServingContext()
        reconcile, interval = service_certificate(settings, kube, serving)
        await _first_certificate(reconcile, interval)
        memo[MEMO_CERTIFICATE_TASK] = asyncio.create_task(
            keep_reconciling(reconcile, interval, settings.webhook_cert_source.value)
        )
        kopf_settings.admission.server = ReloadableWebhookServer(addr="0.0.0.0", port=settings.webhook_port, serving=serving)
        return
    namespaces = tuple(memo.get(MEMO_WATCHED_NAMESPACES, ()))
    port = settings.webhook_port or _free_loopback_port()
    certificate = await asyncio.to_thread(
        write_certificate, Path(tempfile.mkdtemp(prefix="flywheel-webhook-")), ["localhost"], ["127.0.0.1"]
    )
    kopf_settings.admission.server = kopf.WebhookServer(
        addr="127.0.0.1",
        port=port,
        host="127.0.0.1",
        certfile=certificate.cert_file,
        pkeyfile=certificate.key_file,
    )
    name = loopback_configuration_name(namespaces)
    memo[MEMO_LOOPBACK_WEBHOOKS] = name
    memo["loopback_webhook_task"] = asyncio.create_task(
        _register_when_listening(kube, port, name, certificate.ca_pem, namespaces, memo[MEMO_OPERATOR_IDENTITY])
    )


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, memo: FlywheelMemo, **_: Any) -> None:
    """The one start-up step that builds everything (registered first, so it runs first).

    It starts the intake itself, so that no alert is taken before its dependencies exist; the
    handler modules' own start-up handlers only start their loops over what this built.
    """
    configure_kopf(settings)
    from flywheel.handlers.intake import MEMO_WATCHED_NAMESPACES, start_intake
    from flywheel.stores.kube import KubeApi
    from flywheel.wiring import build_dependencies

    flywheel_settings = get_settings()
    kube = KubeApi()
    memo.peering = peering_observer(settings, tuple(memo.get(MEMO_WATCHED_NAMESPACES) or ()), kube)
    memo.deps = await build_dependencies(flywheel_settings, kube)
    scope = memo.deps.namespaces.scope
    # Flywheel acts only where a namespace opted in: say where, once, before anything acts (an
    # upgrade from a version without the opt-in stops acting in every unlabelled namespace).
    log.info("remediation_scope", acts_in=scope.describe(), listed=sorted(scope.listed),
             protected=sorted(scope.protected - scope.listed))
    await start_intake(memo)
    await serve_admission(settings, flywheel_settings, memo)


def peering_observer(
    settings: kopf.OperatorSettings, namespaces: tuple[str, ...], kube: KubeApi
) -> PeeringObserver:
    """Tells the loops Kopf does not pause themselves (metrics, the Run driver) whether to act."""
    from flywheel.stores.peering import PeeringObserver, literal_namespaces

    return PeeringObserver(
        standalone=settings.peering.standalone,
        name=settings.peering.name,
        priority=settings.peering.priority,
        clusterwide=settings.peering.clusterwide,
        # Globs cannot be read by name; Kopf pauses the whole operator anyway, so the
        # literal namespaces are enough to notice a higher-priority peer.
        namespaces=literal_namespaces(namespaces),
        kube=kube,
    )


@kopf.on.cleanup()
async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    certificate_task = memo.get(MEMO_CERTIFICATE_TASK)
    if certificate_task is not None:
        certificate_task.cancel()
    name = memo.get(MEMO_LOOPBACK_WEBHOOKS)
    deps = getattr(memo, "deps", None)
    if name is not None and deps is not None:
        from flywheel.stores.webhooks import WebhookConfigurations

        # Left behind, they would refuse every write in these namespaces (failurePolicy Fail).
        try:
            await WebhookConfigurations(deps.kube).delete(name)
        except FlywheelError as exc:
            log.error("webhook_configurations_not_deleted", name=name, error=str(exc))
    if deps is not None:
        await deps.close()
