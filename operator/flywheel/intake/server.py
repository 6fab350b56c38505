"""The Alertmanager webhook receiver: an aiohttp app served by the operator process.

``POST /intake/alertmanager`` takes Alertmanager's webhook payload (version 4) and
records every alert on its Incident (see :mod:`flywheel.domain.alerts` for the
mapping; the workload an alert names, directly or through its Pod, is looked up by a
:class:`WorkloadResolver`, ``flywheel.stores.pod_owners``). Answers, in the order they are checked:

- 429 (with Retry-After) when the client address sent more than its rate limit
  (``intake_rate_limit_per_second``, ``intake_rate_limit_burst``), checked first so that
  guessing the token costs as much as any other request;
- 401 without the configured bearer token (or when none is configured at all);
- 413 when the body exceeds ``intake_max_body_bytes``;
- 400 when the body is not JSON or nests deeper than ``intake_max_json_depth`` (a 4xx:
  Alertmanager re-sends on 5xx, and a payload that cannot be read never gets better), 422 when
  it is not an Alertmanager payload (the message names the field);
- 503 (with Retry-After) when the Kubernetes API stayed unavailable past the retry
  budget, 500 when it refused the operator itself (RBAC): Alertmanager re-sends the
  group on any 5xx, and recording is idempotent, so nothing is lost or duplicated;
- otherwise 201 when an Incident was created, else 200.

Every answer past the 4xx checks carries a JSON report with one entry per alert
(created, updated, unchanged, ignored, refused or failed): a refused alert never
keeps the others of its group from being recorded. An alert for a namespace that has not
opted in to remediation (``flywheel.domain.namespaces``) is refused before any lookup.

``GET /healthz`` answers 200 without authentication, for probes.

With ``intake_tls_cert_dir`` the intake serves HTTPS from that directory's tls.crt and tls.key,
loaded again into the listening context when they change (as the webhook server does).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from pydantic import SecretStr

from flywheel.domain.alerts import (
    MIN_INTAKE_TOKEN_LENGTH,
    AlertAddress,
    AlertmanagerAlert,
    AlertmanagerPayload,
    AlertRefusal,
    AlertSubject,
    NamespaceScope,
    PayloadContext,
    RefusalReason,
    Workload,
    address_alert,
    fingerprint_key,
    parse_payload,
    plan_alert,
)
from flywheel.errors import ConfigurationError, InvalidInputError, KubernetesApiError, StoreUnavailableError
from flywheel.intake.rate_limit import ClientRateLimit
from flywheel.intake.recorder import AlertRecorder, IncidentWriter, RecordOutcome, RecordResult
from flywheel.intake.refusals import RefusalCounter, RefusalLog
from flywheel.logs import get_logger

log = get_logger(__name__)

INTAKE_PATH = "/intake/alertmanager"
HEALTH_PATH = "/healthz"
RETRY_AFTER_SECONDS = 5
MAX_CONCURRENT_ALERTS = 8
"""Alerts recorded at once, over all requests: a large group finishes quickly, and the
groups Alertmanager sends at the same time do not flood the API server (nor the
event loop's thread pool, which the Kubernetes client's calls run in)."""


class NamespaceGate(Protocol):
    """Whether Flywheel may act in a namespace (``flywheel.stores.namespaces.NamespaceLabels``)."""

    async def refusal(self, namespace: str) -> str | None: ...


class WorkloadResolver(Protocol):
    """Finds the workload an alert is about (``flywheel.stores.pod_owners.PodOwnerStore``)."""

    async def resolve(self, namespace: str, subject: AlertSubject) -> Workload | AlertRefusal: ...


@dataclass(frozen=True)
class IntakeConfig:
    token: SecretStr | None
    """The bearer token; ``None`` (or empty) refuses every request."""
    max_body_bytes: int
    scope: NamespaceScope
    max_json_depth: int = 16
    rate_per_second: float = 0.0
    """Requests per second per client address; 0: no limit."""
    rate_burst: int = 1


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _error(status: int, message: str, *, field: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return _json_response(status, body, headers)


class AlertmanagerReceiver:
    """Request handling; one instance per app."""

    def __init__(
        self,
        config: IntakeConfig,
        recorder: AlertRecorder,
        workloads: WorkloadResolver,
        refusals: RefusalLog,
        namespaces: NamespaceGate | None = None,
    ) -> None:
        self._config = config
        self._namespaces = namespaces
        self._recorder = recorder
        self._workloads = workloads
        self._refusals = refusals
        token = config.token.get_secret_value() if config.token else ""
        self._token = token.encode("utf-8") if token else None
        self._alerts_at_once = asyncio.Semaphore(MAX_CONCURRENT_ALERTS)
        self._rate_limit = (
            ClientRateLimit(config.rate_per_second, config.rate_burst, time.monotonic)
            if config.rate_per_second > 0
            else None
        )

    async def health(self, _: web.Request) -> web.Response:
        return _json_response(200, {"status": "ok"})

    async def receive(self, request: web.Request) -> web.Response:
        if self._rate_limit is not None:
            # Keyed by the peer address, never by a header the client chooses (X-Forwarded-For).
            wait = self._rate_limit.take(request.remote or "unknown")
            if wait is not None:
                return _error(429, f"rate limit of {self._config.rate_per_second:g} requests per second "
                              f"exceeded for {request.remote}; re-send after {wait}s",
                              headers={"Retry-After": str(wait)})
        if not self._authorized(request):
            reason = "missing or wrong bearer token" if self._token else "no intake token is configured"
            return _error(401, reason, headers={"WWW-Authenticate": 'Bearer realm="flywheel-intake"'})

        limit = self._config.max_body_bytes
        # Refuse on the declared length before reading anything; read() enforces the limit
        # again for chunked or compressed bodies, which declare no (or another) length.
        if request.content_length is not None and request.content_length > limit:
            return _error(413, f"body larger than {limit} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body larger than {limit} bytes")
        depth = self._config.max_json_depth
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, f"body is not JSON: {exc}")
        except RecursionError:
            return _error(400, f"body nests JSON deeper than {depth} levels")
        if json_depth(data) > depth:
            return _error(400, f"body nests JSON deeper than {depth} levels")
        try:
            payload = parse_payload(data)
        except InvalidInputError as exc:
            return _error(422, f"not an Alertmanager webhook payload: {exc}", field=exc.field)
        return await self._record(payload)

    def _authorized(self, request: web.Request) -> bool:
        if self._token is None:
            return False
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        # aiohttp decodes headers with surrogateescape; encoding back the same way gives the
        # bytes that were sent. compare_digest takes the same time wherever the tokens differ.
        presented = credentials.strip().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(presented, self._token)

    async def _record(self, payload: AlertmanagerPayload) -> web.Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._recorder.policy.budget_seconds
        context = PayloadContext.of(payload)
        if payload.truncated_alerts:
            log.warning("alert_group_truncated", hint="raise max_alerts of the webhook receiver",
                        receiver=payload.receiver, truncated_alerts=payload.truncated_alerts)
        addresses = [address_alert(alert, self._config.scope) for alert in payload.alerts]
        results = await asyncio.gather(*(self._record_one(alert, address, context, deadline)
                                         for alert, address in zip(payload.alerts, addresses, strict=True)))

        entries = [_report_entry(index, alert, result)
                   for index, (alert, result) in enumerate(zip(payload.alerts, results, strict=True))]
        for alert, entry, result in zip(payload.alerts, entries, results, strict=True):
            details = {key: value for key, value in entry.items() if value is not None and key != "fingerprint"}
            if result.outcome is RecordOutcome.REFUSED and result.code is not None:
                self._refusals.refused(fingerprint_key(alert.fingerprint), result.code,
                                       receiver=payload.receiver, **details)
            elif result.outcome in (RecordOutcome.REFUSED, RecordOutcome.FAILED):
                log.warning("alert_not_recorded", receiver=payload.receiver, fingerprint=alert.fingerprint, **details)
            else:
                log.info("alert_received", receiver=payload.receiver, fingerprint=alert.fingerprint, **details)
        counts = Counter(result.outcome for result in results)
        report: dict[str, Any] = {
            "received": len(results),
            **{outcome.value: counts.get(outcome, 0) for outcome in RecordOutcome},
            "truncatedAlerts": payload.truncated_alerts,
            "alerts": entries,
        }
        failures = [result for result in results if result.outcome is RecordOutcome.FAILED]
        if any(result.retryable for result in failures):
            return _json_response(503, {"error": "Kubernetes API unavailable, re-send later", **report},
                                  headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if failures:
            return _json_response(500, {"error": "the operator cannot write Incidents", **report})
        return _json_response(201 if counts.get(RecordOutcome.CREATED) else 200, report)

    async def _record_one(
        self, alert: AlertmanagerAlert, address: AlertAddress | AlertRefusal, context: PayloadContext, deadline: float
    ) -> RecordResult:
        if isinstance(address, AlertRefusal):
            return RecordResult.refused(address)
        async with self._alerts_at_once:
            refused = await self._namespace_refusal(address)
            if refused is not None:
                return refused
            workload = await self._workload(address, deadline)
            if isinstance(workload, RecordResult):
                return workload
            if isinstance(workload, AlertRefusal):
                return RecordResult.refused(workload)
            plan = plan_alert(alert, context, address, workload)
            if isinstance(plan, AlertRefusal):
                return RecordResult.refused(plan)
            return await self._recorder.record(plan, deadline)

    async def _namespace_refusal(self, address: AlertAddress) -> RecordResult | None:
        """A refusal when the alert's namespace has not opted in: no Incident there would ever act."""
        if self._namespaces is None:
            return None
        try:
            refusal = await self._namespaces.refusal(address.namespace)
        except StoreUnavailableError as exc:
            return RecordResult(RecordOutcome.FAILED, reason=str(exc), retryable=True)
        except KubernetesApiError as exc:
            log.error("intake_namespace_lookup_refused", error=str(exc), status=exc.status)
            return RecordResult(RecordOutcome.FAILED, reason=str(exc), retryable=False)
        if refusal is None:
            return None
        return RecordResult.refused(AlertRefusal("labels.namespace", refusal, RefusalReason.NAMESPACE_NOT_ENABLED))

    async def _workload(self, address: AlertAddress, deadline: float) -> Workload | AlertRefusal | RecordResult:
        """The alert's workload; a FAILED result when the API server cannot tell (retried until the deadline)."""
        try:
            return await self._recorder.policy.until(deadline)(
                self._workloads.resolve, address.namespace, address.subject
            )
        except StoreUnavailableError as exc:
            return RecordResult(RecordOutcome.FAILED, reason=str(exc), retryable=True)
        except KubernetesApiError as exc:
            # 401/403: the operator may not read Pods or workloads (RBAC). Not the alert's
            # fault: fail the request so that Alertmanager re-sends once it is fixed.
            log.error("intake_workload_lookup_refused", error=str(exc), status=exc.status)
            return RecordResult(RecordOutcome.FAILED, reason=str(exc), retryable=False)


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests arrays and objects (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        stack.extend((child, level) for child in children if isinstance(child, (dict, list)))
    return deepest


def _report_entry(index: int, alert: AlertmanagerAlert, result: RecordResult) -> dict[str, Any]:
    return {
        "index": index,
        "fingerprint": alert.fingerprint,
        "alertname": alert.labels.get("alertname"),
        "status": alert.status.value,
        "namespace": alert.labels.get("namespace"),
        "outcome": result.outcome.value,
        "incident": result.incident,
        # Field paths name the alert within the payload, as the 422 messages do.
        "field": f"alerts[{index}].{result.field}" if result.field else None,
        "reason": result.reason,
    }


def build_app(
    config: IntakeConfig,
    recorder: AlertRecorder,
    workloads: WorkloadResolver,
    refusals: RefusalCounter,
    namespaces: NamespaceGate | None = None,
) -> web.Application:
    if not (config.token and config.token.get_secret_value()):
        # Once, here: logging on every refused request would let anyone flood the log.
        log.warning("intake_token_missing", effect="the Alertmanager intake refuses every request",
                    setting="FLYWHEEL_INTAKE_TOKEN")
    receiver = AlertmanagerReceiver(config, recorder, workloads, RefusalLog(refusals), namespaces)
    # client_max_size makes aiohttp itself stop reading past the limit.
    app = web.Application(client_max_size=config.max_body_bytes)
    app.router.add_post(INTAKE_PATH, receiver.receive)
    app.router.add_get(HEALTH_PATH, receiver.health)
    return app


class IntakeServer:
    """The app on a TCP port, started and stopped with the operator."""

    def __init__(
        self, app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._host = host
        self._port = port
        self._ssl_context = ssl_context

    @property
    def port(self) -> int:
        """The bound port: the configured one, or the one the system chose for port 0."""
        addresses = self._runner.addresses
        return int(addresses[0][1]) if addresses else self._port

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl_context).start()
        log.info("intake_listening", host=self._host, port=self.port, path=INTAKE_PATH,
                 scheme="https" if self._ssl_context is not None else "http")

    async def stop(self) -> None:
        await self._runner.cleanup()


def intake_server(
    config: IntakeConfig,
    port: int,
    incidents: IncidentWriter,
    workloads: WorkloadResolver,
    refusals: RefusalCounter,
    host: str = "0.0.0.0",
    ssl_context: ssl.SSLContext | None = None,
    namespaces: NamespaceGate | None = None,
) -> IntakeServer:
    """The intake on ``port``, ready to start."""
    require_intake_token(config.token)
    app = build_app(config, AlertRecorder(incidents), workloads, refusals, namespaces)
    return IntakeServer(app, host, port, ssl_context)


def require_intake_token(token: SecretStr | None) -> None:
    """Refuse a short intake token before anything starts: it is a remediation credential.

    The message names the setting and the length, never the token.
    """
    length = len(token.get_secret_value()) if token else 0
    if 0 < length < MIN_INTAKE_TOKEN_LENGTH:
        raise ConfigurationError(
            f"FLYWHEEL_INTAKE_TOKEN is {length} characters long: at least {MIN_INTAKE_TOKEN_LENGTH} are "
            "required (e.g. `openssl rand -hex 32`)"
        )


__all__ = [
    "HEALTH_PATH",
    "INTAKE_PATH",
    "AlertmanagerReceiver",
    "IntakeConfig",
    "IntakeServer",
    "NamespaceGate",
    "WorkloadResolver",
    "build_app",
    "intake_server",
    "json_depth",
    "require_intake_token",
]
