"""The symptom rules of a verification window, pure.

Labels as kube-prometheus produces them: KubePodCrashLooping (kubernetes-mixin) over
kube-state-metrics series; Alertmanager's copy also carries Prometheus' external labels
(``prometheus``, ``prometheus_replica``), the local ALERTS series does not.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.api.enums import SignalStatus
from flywheel.domain.symptom import (
    Evidence,
    PodFacts,
    SignalFacts,
    alerts_series_matches,
    all_resolved,
    pods_verdict,
    prometheus_query,
    signal_verdict,
    window_end,
)
from flywheel.stores.pod_health import pod_facts

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
ALERT_LABELS = {
    "alertname": "KubePodCrashLooping",
    "container": "app",
    "job": "kube-state-metrics",
    "namespace": "shop",
    "pod": "checkout-7d9f8b6c5-x2x9q",
    "reason": "CrashLoopBackOff",
    "severity": "warning",
}
EXTERNAL = {"prometheus": "monitoring/k8s", "prometheus_replica": "prometheus-k8s-0"}


def signal(status: SignalStatus = SignalStatus.FIRING, **labels: str) -> SignalFacts:
    return SignalFacts("KubePodCrashLooping", {**ALERT_LABELS, **EXTERNAL, **labels}, status)


def series(**labels: str) -> dict[str, str]:
    return {"__name__": "ALERTS", "alertstate": "firing", **ALERT_LABELS, **labels}


def test_alertmanager_signals_decide_without_prometheus() -> None:
    firing = signal_verdict([signal()], None)
    assert (firing.gone, firing.evidence, firing.still_firing) == (False, Evidence.SIGNALS, ("KubePodCrashLooping",))
    resolved = signal_verdict([signal(SignalStatus.RESOLVED)], None)
    assert (resolved.gone, resolved.evidence) == (True, Evidence.SIGNALS)


def test_prometheus_decides_when_it_answers_so_a_lost_resolved_notification_cannot() -> None:
    lost = signal_verdict([signal()], [])
    assert (lost.gone, lost.evidence) == (True, Evidence.PROMETHEUS)
    still = signal_verdict([signal(SignalStatus.RESOLVED)], [series()])
    assert (still.gone, still.evidence) == (False, Evidence.PROMETHEUS)
    other_pod = signal_verdict([signal()], [series(pod="checkout-7d9f8b6c5-zzzzz")])
    assert other_pod.gone, "another pod's alert is not this Incident's symptom"


def test_every_signal_must_resolve_and_a_later_episode_counts() -> None:
    signals = [signal(SignalStatus.RESOLVED), signal(pod="checkout-7d9f8b6c5-abcde")]
    assert not all_resolved(signals)
    assert not signal_verdict(signals, None).gone
    assert not all_resolved([]), "without signals nothing resolved"


def test_a_resolution_appended_by_the_intake_resolves_its_episode_only() -> None:
    # As the intake records it: the firing signal stays, a resolved one of the episode is appended.
    def recorded(status: SignalStatus, starts: int, fingerprint: str = "9f2c1e0b7a6d5c4b") -> SignalFacts:
        return SignalFacts("KubePodCrashLooping", {**ALERT_LABELS, **EXTERNAL}, status,
                           fingerprint=fingerprint, starts_at=T0 + timedelta(minutes=starts))

    first = [recorded(SignalStatus.FIRING, 0), recorded(SignalStatus.RESOLVED, 0)]
    assert all_resolved(first) and signal_verdict(first, None).gone
    again = [*first, recorded(SignalStatus.FIRING, 10)]
    assert not all_resolved(again), "a later episode of the same alert fires again"
    other = [*first, recorded(SignalStatus.FIRING, 0, fingerprint="0a1b2c3d4e5f6a7b")]
    assert not all_resolved(other), "another alert's episode is not resolved by this one"


def test_external_labels_on_the_signal_do_not_hide_the_series() -> None:
    assert alerts_series_matches(series(), signal())
    assert not alerts_series_matches(series(severity="critical"), signal())
    assert not alerts_series_matches({**series(), "alertname": "KubePodNotReady"}, signal())


@given(st.dictionaries(st.sampled_from(sorted(ALERT_LABELS)), st.text(min_size=1, max_size=8), max_size=3))
def test_a_series_matches_exactly_when_its_labels_are_the_signals(changed: dict[str, str]) -> None:
    changed.pop("alertname", None)
    candidate = series(**changed)
    expected = all(ALERT_LABELS[name] == value for name, value in changed.items())
    assert alerts_series_matches(candidate, signal()) is expected


def test_the_query_escapes_the_alert_name() -> None:
    assert prometheus_query(SignalFacts('a"b\\c', {}, SignalStatus.FIRING)) == (
        'ALERTS{alertstate="firing",alertname="a\\"b\\\\c"}'
    )


def pod(name: str = "checkout-1", *, ready: bool = True, since: timedelta = timedelta(seconds=-5),
        restart_at: timedelta | None = None, terminating: bool = False) -> PodFacts:
    return PodFacts(name, ready, T0 + since, 0, T0 + restart_at if restart_at is not None else None, terminating)


def test_pods_ready_throughout_the_window_without_restart_are_healthy() -> None:
    verdict = pods_verdict([pod("a"), pod("b"), pod("old", ready=False, terminating=True)], 2, T0)
    assert (verdict.gone, verdict.evidence) == (True, Evidence.PODS)


@pytest.mark.parametrize(
    ("pods", "problem"),
    [
        ([pod(ready=False)], "not Ready"),
        ([pod(since=timedelta(seconds=30))], "Ready only since"),
        ([pod(restart_at=timedelta(seconds=10))], "restarted"),
        ([], "0 of 1 Pods present"),
    ],
)
def test_a_pod_not_ready_late_restarted_or_missing_is_the_symptom(pods: list[PodFacts], problem: str) -> None:
    verdict = pods_verdict(pods, 1, T0)
    assert not verdict.gone and problem in verdict.message


def test_nothing_desired_is_nothing_to_keep_ready() -> None:
    assert pods_verdict([], 0, T0).gone


def test_pod_facts_from_a_pod_body() -> None:
    body = {
        "metadata": {"name": "checkout-1"},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-01T11:59:00Z"}],
            "containerStatuses": [{"name": "app", "restartCount": 2, "lastState": {
                "terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-01T11:58:00Z"}}}],
        },
    }
    facts = pod_facts(body)
    assert (facts.ready, facts.restarts, facts.terminating) == (True, 2, False)
    assert facts.ready_since == T0 - timedelta(minutes=1) and facts.last_restart_at == T0 - timedelta(minutes=2)


def test_the_window_ends_its_length_after_the_rollout() -> None:
    assert window_end(T0, 600) == T0 + timedelta(minutes=10)
