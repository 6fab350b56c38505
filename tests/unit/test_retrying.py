"""The backoff of our retry loops (flywheel.retrying) and the intake's retries built on it.

What an operator would notice if it were wrong: a database outage hammered without backoff or
waited out for minutes between tries, replicas retrying in lockstep, an Alertmanager webhook
held past its deadline, or an alert lost when the API server blinked once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from flywheel.api.enums import TargetKind
from flywheel.controllers.driver import backoff_delay
from flywheel.domain.alerts import AlertRefusal, AlertSubject, NamespaceScope, Workload
from flywheel.errors import ConflictError, KubernetesUnavailableError
from flywheel.intake import INTAKE_PATH, AlertRecorder, IntakeConfig, RetryPolicy, build_app
from flywheel.retrying import Backoff, exponential_delay
from flywheel.stores.history.outbox import DEFAULT_RETRY_INITIAL_SECONDS, DEFAULT_RETRY_MAX_SECONDS

pytestmark = pytest.mark.unit

TOKEN = "t" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_the_history_writers_delays_double_from_half_a_second_up_to_thirty() -> None:
    backoff = Backoff(DEFAULT_RETRY_INITIAL_SECONDS, DEFAULT_RETRY_MAX_SECONDS)
    assert [backoff.delay(attempt) for attempt in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_the_intakes_delays_double_from_a_tenth_up_to_one_second() -> None:
    backoff = RetryPolicy().backoff
    assert [backoff.delay(attempt) for attempt in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


@given(first=st.floats(0.001, 100), cap=st.floats(0.001, 1000), attempt=st.integers(1, 10_000))
def test_a_delay_never_exceeds_the_cap_and_never_shrinks_with_more_failures(
    first: float, cap: float, attempt: int
) -> None:
    delay = exponential_delay(first, attempt, cap)
    assert min(first, cap) <= delay <= cap
    assert exponential_delay(first, attempt + 1, cap) >= delay


@given(first=st.floats(0, 10), failures=st.integers(0, 100))
def test_the_driver_backs_off_with_the_same_formula(first: float, failures: int) -> None:
    assert backoff_delay(first, failures) == exponential_delay(first, failures, 300.0)


def test_the_jitter_scales_the_delay_by_a_factor_of_its_range() -> None:
    asked: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return high

    backoff = Backoff(0.5, 30.0, jitter=(0.8, 1.2), uniform=uniform)
    state = _State(attempt_number=3)
    assert backoff.wait()(state) == pytest.approx(2.0 * 1.2)  # type: ignore[arg-type]
    assert asked == [(0.8, 1.2)]


def test_the_deadline_stops_when_the_next_delay_would_not_fit() -> None:
    now = [100.0]
    stop = Backoff(0.1, 1.0).stop_at_deadline(deadline=100.5, clock=lambda: now[0])
    assert not stop(_State(attempt_number=1))  # type: ignore[arg-type]  # 0.5 s left > 0.1
    assert not stop(_State(attempt_number=3))  # type: ignore[arg-type]  # 0.5 s left > 0.4
    assert stop(_State(attempt_number=4))  # type: ignore[arg-type]  # 0.5 s left <= 0.8
    now[0] = 100.45
    assert stop(_State(attempt_number=1))  # type: ignore[arg-type]  # 0.05 s left <= 0.1


@pytest.mark.parametrize(("first", "cap", "jitter"), [(0, 1, (1, 1)), (2, 1, (1, 1)), (1, 2, (1.2, 0.8))])
def test_a_backoff_that_cannot_work_is_refused(first: float, cap: float, jitter: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(first, cap, jitter=jitter)


async def test_the_intake_retries_an_unavailable_store_until_it_answers() -> None:
    calls = Flaky(failures=3)
    policy = RetryPolicy(first_backoff_seconds=0.001, max_backoff_seconds=0.004)
    deadline = asyncio.get_running_loop().time() + 60
    assert await policy.until(deadline)(calls) == "answer"
    assert calls.count == 4


async def test_the_intake_gives_up_at_once_when_no_retry_fits_before_the_deadline() -> None:
    calls = Flaky(failures=100)
    deadline = asyncio.get_running_loop().time()  # already reached
    with pytest.raises(KubernetesUnavailableError):
        await RetryPolicy().until(deadline)(calls)
    assert calls.count == 1


class _State:
    """The field of tenacity's RetryCallState that our strategies read."""

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.count = 0

    async def __call__(self) -> str:
        self.count += 1
        if self.count <= self.failures:
            raise KubernetesUnavailableError("Kubernetes API unavailable")
        return "answer"


# ---------------------------------------------------------------- the receiver, end to end


class Workloads:
    """The workload lookup: unavailable ``failures`` times, then the Deployment."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def resolve(self, namespace: str, subject: AlertSubject) -> Workload | AlertRefusal:
        self.calls += 1
        if self.calls <= self.failures:
            raise KubernetesUnavailableError("get deployment: Kubernetes API unavailable")
        return Workload(TargetKind.DEPLOYMENT, "checkout")


class Incidents:
    """The Incident store: the list unavailable once, then ``conflicts`` creates lose a race."""

    def __init__(self, conflicts: int) -> None:
        self.conflicts = conflicts
        self.lists = 0
        self.creates = 0

    async def list_labelled(
        self, plural: str, namespace: str, label_selector: str, *, request_timeout: float | None = None
    ) -> list[dict[str, Any]]:
        self.lists += 1
        if self.lists == 1:
            raise KubernetesUnavailableError("list incidents: Kubernetes API unavailable")
        return []

    async def create_new(self, plural: str, namespace: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.creates += 1
        if self.creates <= self.conflicts:
            raise ConflictError("incidents already exists", status=409)
        return body

    async def patch_spec_if_unchanged(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("nothing to patch: no Incident is listed")


class Refusals:
    def alert_refused(self, reason: Any) -> None:
        raise AssertionError(f"the alert was refused: {reason}")


def alertmanager_payload() -> dict[str, Any]:
    return {
        "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing", "receiver": "flywheel",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am:9093",
        "alerts": [{
            "status": "firing", "fingerprint": "a1b2c3d4e5f60718", "startsAt": "2025-03-01T12:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph",
            "labels": {"alertname": "KubePodCrashLooping", "namespace": "shop", "deployment": "checkout"},
            "annotations": {},
        }],
    }


async def post(workloads: Workloads, incidents: Incidents, policy: RetryPolicy) -> tuple[int, dict[str, Any]]:
    config = IntakeConfig(token=SecretStr(TOKEN), max_body_bytes=1 << 20, scope=NamespaceScope(), max_json_depth=6)
    app = build_app(config, AlertRecorder(incidents, policy), workloads, Refusals())  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        response = await client.post(INTAKE_PATH, json=alertmanager_payload(), headers=AUTH)
        return response.status, await response.json()


FAST = {"first_backoff_seconds": 0.001, "max_backoff_seconds": 0.004}


async def test_an_alert_is_recorded_through_outages_and_a_lost_race() -> None:
    workloads, incidents = Workloads(failures=2), Incidents(conflicts=1)
    status, body = await post(workloads, incidents, RetryPolicy(budget_seconds=30, **FAST))
    assert (status, body["created"]) == (201, 1), body
    # The lookup tried three times; the list once unavailable, then read again after the 409.
    assert (workloads.calls, incidents.lists, incidents.creates) == (3, 3, 2)


async def test_an_api_server_that_stays_unavailable_is_answered_with_503_before_the_deadline() -> None:
    workloads, incidents = Workloads(failures=10**9), Incidents(conflicts=0)
    status, body = await post(workloads, incidents, RetryPolicy(budget_seconds=0.05, **FAST))
    assert status == 503, body
    assert body["failed"] == 1
    assert workloads.calls >= 1
    assert incidents.lists == 0


async def test_an_incident_that_keeps_changing_fails_the_alert_after_the_allowed_rereads() -> None:
    workloads, incidents = Workloads(failures=0), Incidents(conflicts=10**9)
    status, body = await post(workloads, incidents, RetryPolicy(budget_seconds=30, max_conflicts=3, **FAST))
    assert status == 503, body
    assert body["alerts"][0]["reason"] == "too many concurrent updates"
    assert incidents.creates == 4  # the first try and three re-reads


async def test_the_webhook_server_waits_for_its_first_certificate_and_a_bug_is_not_retried() -> None:
    from datetime import timedelta

    from flywheel.main import _first_certificate

    calls = Flaky(failures=2)

    async def reconcile() -> None:
        try:
            await calls()
        except KubernetesUnavailableError as exc:
            raise OSError("tls.crt: no such file") from exc

    await _first_certificate(reconcile, timedelta(0))
    assert calls.count == 3

    async def broken() -> None:
        raise KeyError("a bug, not a missing certificate")

    with pytest.raises(KeyError):
        await _first_certificate(broken, timedelta(0))
