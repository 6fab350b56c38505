"""Recording one planned alert on its Incident, safely against retries and concurrent writers.

Each attempt reads the Incidents recorded for the alert's fingerprint, lets
:func:`flywheel.domain.alerts.place_signal` decide, and writes with a precondition:
creating a name that exists, or patching an Incident someone changed since it was
read, fails with 409, and the attempt starts over from a fresh read. Transient API
failures are retried with backoff until the request's deadline; past it the alert is
reported as failed, so that the webhook answers 503 and Alertmanager re-sends the
group. Every write is idempotent, so that re-sending never duplicates a signal.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, assert_never

from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    stop_any,
    wait_random,
)

from flywheel.api.bodies import incident_body
from flywheel.api.incident import INCIDENT
from flywheel.domain.alerts import (
    LABEL_FINGERPRINT,
    AlertIntake,
    AlertRefusal,
    AlreadyRecorded,
    AppendSignal,
    CreateIncident,
    NothingToRecordOn,
    RefusalReason,
    StoredIncident,
    place_signal,
)
from flywheel.errors import InvalidInputError, KubernetesApiError, StoreUnavailableError
from flywheel.logs import get_logger
from flywheel.retrying import Backoff, stop_past

log = get_logger(__name__)

FIELD_MANAGER = "flywheel-intake"

# Status codes with which the API server refuses the *alert's* Incident (its content, its
# namespace): retrying cannot help, the alert is refused. Any other refusal (401, 403:
# the operator's credentials or RBAC) is the receiver's fault and must be retried by
# Alertmanager once someone fixed it, so it fails the request instead.
_REFUSED_BY_API = frozenset({400, 404, 413, 422})
_CONFLICT = 409


class RecordOutcome(StrEnum):
    """What happened to one alert; the webhook's JSON report lists one per alert."""

    CREATED = "created"
    """A new Incident was created for the alert."""
    UPDATED = "updated"
    """The alert's signal was appended to its existing Incident."""
    UNCHANGED = "unchanged"
    """The signal was on record already (a repeated or re-sent notification)."""
    IGNORED = "ignored"
    """A resolved alert whose firing no Incident recorded: nothing to record it on."""
    REFUSED = "refused"
    """The alert cannot become an Incident (see ``field`` and ``reason``); re-sending will not help."""
    FAILED = "failed"
    """The Kubernetes API was unavailable past the deadline; Alertmanager should re-send."""


@dataclass(frozen=True)
class RecordResult:
    outcome: RecordOutcome
    incident: str | None = None
    field: str | None = None
    reason: str | None = None
    retryable: bool = False
    """For FAILED: the API server was unavailable (503); otherwise the receiver is misconfigured (500)."""
    code: RefusalReason | None = None
    """For REFUSED: the bounded reason (the metric's label)."""

    @classmethod
    def refused(cls, refusal: AlertRefusal) -> RecordResult:
        return cls(RecordOutcome.REFUSED, field=refusal.field, reason=refusal.reason, code=refusal.code)


class IncidentWriter(Protocol):
    """What the recorder needs from the Kubernetes store (``flywheel.stores.kube.FlywheelResources``)."""

    async def list_labelled(
        self, plural: str, namespace: str, label_selector: str, *, request_timeout: float | None = None
    ) -> list[dict[str, Any]]: ...

    async def create_new(
        self,
        plural: str,
        namespace: str,
        body: dict[str, Any],
        *,
        field_manager: str,
        request_timeout: float | None = None,
    ) -> dict[str, Any]: ...

    async def patch_spec_if_unchanged(
        self,
        plural: str,
        namespace: str,
        name: str,
        *,
        resource_version: str,
        spec: dict[str, Any],
        field_manager: str,
        request_timeout: float | None = None,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one request tries before answering 503."""

    budget_seconds: float = 5.0
    """Alertmanager waits at least 10 s for a webhook; answering 503 well before keeps its retry cheap."""
    first_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 1.0
    jitter: tuple[float, float] = (0.5, 1.0)
    """The factor on each delay: concurrent requests that failed together do not retry together."""
    request_timeout_seconds: float = 3.0
    max_conflicts: int = 25
    """Re-reads after a 409. Each one means another writer made progress, so this only
    runs out under pathological contention, which then counts as unavailability."""


    @property
    def backoff(self) -> Backoff:
        return Backoff(self.first_backoff_seconds, self.max_backoff_seconds, jitter=self.jitter)

    def until(self, deadline: float) -> AsyncRetrying:
        """Retries while a store is unavailable, with backoff, while the next delay fits before ``deadline``.

        ``deadline`` is on the running event loop's clock. Past it the last
        :class:`StoreUnavailableError` is raised, for the caller to answer 503.
        """
        backoff = self.backoff
        return AsyncRetrying(
            stop=backoff.stop_at_deadline(deadline, asyncio.get_running_loop().time),
            wait=backoff.wait(),
            retry=retry_if_exception_type(StoreUnavailableError),
            reraise=True,
        )


class _Retry(Exception):
    """Start the attempt over from a fresh read (the object changed under us)."""


class AlertRecorder:
    def __init__(self, incidents: IncidentWriter, policy: RetryPolicy | None = None) -> None:
        self._incidents = incidents
        self._policy = policy or RetryPolicy()

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    async def record(self, intake: AlertIntake, deadline: float) -> RecordResult:
        """Record the alert's signal; ``deadline`` is on the event loop's clock."""
        loop = asyncio.get_running_loop()
        rereads = AsyncRetrying(
            stop=stop_any(stop_after_attempt(self._policy.max_conflicts + 1), stop_past(deadline, loop.time)),
            # A little jitter, so that writers colliding on one Incident do not collide again.
            wait=wait_random(0, 0.05),
            retry=retry_if_exception_type(_Retry),
            before_sleep=lambda state: log.debug(
                "incident_changed_reading_again", namespace=intake.namespace,
                fingerprint=intake.signal.fingerprint, conflicts=state.attempt_number,
            ),
        )
        try:
            return await rereads(self._attempt_while_unavailable, intake, deadline)
        except RetryError as exc:
            log.warning("alert_not_recorded", reason="incident_kept_changing", namespace=intake.namespace,
                        fingerprint=intake.signal.fingerprint, conflicts=exc.last_attempt.attempt_number)
            return RecordResult(RecordOutcome.FAILED, reason="too many concurrent updates", retryable=True)
        except StoreUnavailableError as exc:
            log.warning("alert_not_recorded", reason="kubernetes_unavailable", namespace=intake.namespace,
                        fingerprint=intake.signal.fingerprint, error=str(exc))
            return RecordResult(RecordOutcome.FAILED, reason=str(exc), retryable=True)

    async def _attempt_while_unavailable(self, intake: AlertIntake, deadline: float) -> RecordResult:
        """One attempt, tried again with backoff while the API server is unavailable.

        A conflict (``_Retry``) leaves to :meth:`record`, which reads again; the API server
        answered it, so the backoff starts over for the next read.
        """
        return await self._policy.until(deadline)(self._attempt, intake)

    async def _attempt(self, intake: AlertIntake) -> RecordResult:
        timeout = self._policy.request_timeout_seconds
        try:
            bodies = await self._incidents.list_labelled(
                INCIDENT.plural, intake.namespace, f"{LABEL_FINGERPRINT}={intake.fingerprint_key}",
                request_timeout=timeout,
            )
            recorded = [StoredIncident.from_body(incident_body(body)) for body in bodies]
        except InvalidInputError as exc:
            return RecordResult(RecordOutcome.REFUSED, field=exc.field, code=RefusalReason.UNREADABLE_INCIDENT,
                                reason=f"an Incident of this alert is unreadable: {exc.reason}")
        except KubernetesApiError as exc:
            # Nothing in a list request comes from the alert (the selector is a hex key): the
            # operator cannot read Incidents at all (RBAC, CRD missing). Alertmanager should
            # re-send once that is fixed.
            return self._operator_failure(exc)

        placement = place_signal(intake, recorded)
        try:
            match placement:
                case AlreadyRecorded(incident=name):
                    return RecordResult(RecordOutcome.UNCHANGED, incident=name)
                case NothingToRecordOn(reason=reason):
                    return RecordResult(RecordOutcome.IGNORED, reason=reason)
                case CreateIncident(name=name):
                    body = INCIDENT.manifest(
                        name=name, namespace=intake.namespace, spec=intake.spec,
                        labels=intake.labels, annotations=intake.annotations,
                    )
                    await self._incidents.create_new(
                        INCIDENT.plural, intake.namespace, body, field_manager=FIELD_MANAGER, request_timeout=timeout
                    )
                    return RecordResult(RecordOutcome.CREATED, incident=name)
                case AppendSignal(incident=stored, signals=signals):
                    await self._incidents.patch_spec_if_unchanged(
                        INCIDENT.plural, intake.namespace, stored.name,
                        resource_version=stored.resource_version,
                        spec={"signals": [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in signals]},
                        field_manager=FIELD_MANAGER, request_timeout=timeout,
                    )
                    return RecordResult(RecordOutcome.UPDATED, incident=stored.name)
                case _:
                    assert_never(placement)
        except KubernetesApiError as exc:
            # 409: created or changed concurrently. 404 on a patch: deleted since the read.
            # Either way the read is stale; the next attempt decides again.
            if exc.status == _CONFLICT or (exc.status == 404 and isinstance(placement, AppendSignal)):
                raise _Retry from exc
            return self._refused_by_api(exc)

    @classmethod
    def _refused_by_api(cls, exc: KubernetesApiError) -> RecordResult:
        if exc.status in _REFUSED_BY_API:
            # The API server's message names the field (e.g. spec.summary) or the namespace.
            return RecordResult(RecordOutcome.REFUSED, reason=f"refused by the Kubernetes API: {exc}",
                                code=RefusalReason.REFUSED_BY_API)
        return cls._operator_failure(exc)

    @staticmethod
    def _operator_failure(exc: KubernetesApiError) -> RecordResult:
        log.error("intake_request_refused_by_kubernetes", error=str(exc), status=exc.status)
        return RecordResult(RecordOutcome.FAILED, reason=str(exc), retryable=False)


__all__ = ["FIELD_MANAGER", "AlertRecorder", "IncidentWriter", "RecordOutcome", "RecordResult", "RetryPolicy"]
