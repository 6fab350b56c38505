"""Verifying the symptom, not only the rollout: the rules, pure (no clock, no I/O).

After the rollout completes, a Run stays Verifying for a verification window; at its end the
symptom must be gone:

- an Incident with alert signals: none of its alerts still fires. Prometheus' ``ALERTS``
  decides when it is configured and answered (a lost resolved notification cannot decide the
  outcome); otherwise the signals the intake recorded (Alertmanager's resolved notifications);
- an Incident without signals (filed with kubectl): the target's Pods have stayed Ready, with no
  container restart, for the whole window.

The window's default leaves room for how late Alertmanager reports a resolution: the rule's
evaluation interval, plus the route's ``group_interval`` (5 minutes by default) before the
resolved notification leaves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from flywheel.api.enums import SignalStatus
from flywheel.api.times import format_precise_time

DEFAULT_VERIFICATION_WINDOW_SECONDS = 600
# Labels Prometheus puts on an ALERTS series that are not the alert's own.
_ALERTS_OWN_LABELS = frozenset({"__name__", "alertstate"})


class Evidence(StrEnum):
    """What decided the verification (said by the journal's verify step)."""

    PROMETHEUS = "prometheus"
    SIGNALS = "alertmanager-signals"
    PODS = "pods"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class SignalFacts:
    """One alert signal of the Incident as the intake recorded it."""

    alert_name: str
    labels: Mapping[str, str]
    status: SignalStatus
    ends_at: datetime | None = None
    fingerprint: str | None = None
    starts_at: datetime | None = None

    @property
    def firing(self) -> bool:
        return self.status is SignalStatus.FIRING

    @property
    def episode(self) -> tuple[object, ...]:
        """One firing episode of one alert: the intake appends its resolution as another signal."""
        alert: object = self.fingerprint or (self.alert_name, tuple(sorted(self.labels.items())))
        return (alert, self.starts_at)


@dataclass(frozen=True, slots=True)
class PodFacts:
    """One Pod of the target, as its status says."""

    name: str
    ready: bool
    ready_since: datetime | None  # lastTransitionTime of the Ready condition
    restarts: int
    last_restart_at: datetime | None  # latest containerStatuses[].lastState.terminated.finishedAt
    terminating: bool = False


@dataclass(frozen=True, slots=True)
class SymptomVerdict:
    gone: bool
    evidence: Evidence
    message: str
    still_firing: tuple[str, ...] = field(default_factory=tuple)


def window_end(rollout_complete_at: datetime, window_seconds: int) -> datetime:
    return rollout_complete_at + timedelta(seconds=window_seconds)


def firing_signals(signals: Iterable[SignalFacts]) -> list[SignalFacts]:
    """The episodes still firing (no resolved signal of the same episode), one signal per alert.

    The intake records a resolution by appending a resolved signal of the same episode
    (fingerprint, startsAt) next to its firing one, never by rewriting the firing one.
    """
    listed = list(signals)
    resolved = {signal.episode for signal in listed if not signal.firing}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    firing: list[SignalFacts] = []
    for signal in listed:
        identity = (signal.alert_name, tuple(sorted(signal.labels.items())))
        if signal.firing and signal.episode not in resolved and identity not in seen:
            seen.add(identity)
            firing.append(signal)
    return firing


def all_resolved(signals: Sequence[SignalFacts]) -> bool:
    """An Incident with signals whose every signal resolved (False without signals)."""
    return bool(signals) and not firing_signals(signals)


def alerts_series_matches(series: Mapping[str, str], signal: SignalFacts) -> bool:
    """Whether a firing ``ALERTS`` series is the signal's alert.

    The series carries the alert's labels; Alertmanager's copy (the signal's) may carry more
    (Prometheus' external labels are added only when it sends), so every label of the series
    must be the signal's, not the other way round.
    """
    if series.get("alertname") != signal.alert_name:
        return False
    return all(
        signal.labels.get(name) == value for name, value in series.items() if name not in _ALERTS_OWN_LABELS
    )


def prometheus_query(signal: SignalFacts) -> str:
    """The PromQL selector of the signal's alert among the firing ones (matched exactly client-side)."""
    name = signal.alert_name.replace("\\", "\\\\").replace('"', '\\"')
    return f'ALERTS{{alertstate="firing",alertname="{name}"}}'


def signal_verdict(
    signals: Sequence[SignalFacts], prometheus_firing: Sequence[Mapping[str, str]] | None
) -> SymptomVerdict:
    """The verdict for an Incident with signals.

    ``prometheus_firing`` are the firing ``ALERTS`` series of the signals' alert names, or None
    when Prometheus is not configured or did not answer (the intake's signals decide then).
    """
    alerts = {(signal.alert_name, tuple(sorted(signal.labels.items()))): signal for signal in signals}
    if prometheus_firing is not None:
        still = [
            signal for signal in alerts.values()
            if any(alerts_series_matches(series, signal) for series in prometheus_firing)
        ]
        names = tuple(sorted({signal.alert_name for signal in still}))
        if still:
            return SymptomVerdict(
                False, Evidence.PROMETHEUS, f"Prometheus: {', '.join(names)} still firing", names
            )
        return SymptomVerdict(True, Evidence.PROMETHEUS, "Prometheus: none of the Incident's alerts fires")
    firing = firing_signals(signals)
    names = tuple(sorted({signal.alert_name for signal in firing}))
    if firing:
        return SymptomVerdict(
            False, Evidence.SIGNALS, f"Alertmanager: {', '.join(names)} not resolved", names
        )
    return SymptomVerdict(True, Evidence.SIGNALS, f"Alertmanager: all {len(alerts)} alert(s) resolved")


def pods_verdict(pods: Sequence[PodFacts], desired: int, window_start: datetime) -> SymptomVerdict:
    """The verdict for an Incident without signals: every Pod Ready throughout the window, no restart in it."""
    live = [pod for pod in pods if not pod.terminating]
    if desired == 0 and not live:
        return SymptomVerdict(True, Evidence.PODS, "no Pods desired: nothing to keep Ready")
    problems: list[str] = []
    for pod in live:
        if not pod.ready:
            problems.append(f"{pod.name} not Ready")
        elif pod.ready_since is not None and pod.ready_since > window_start:
            problems.append(f"{pod.name} Ready only since {format_precise_time(pod.ready_since)}")
        if pod.last_restart_at is not None and pod.last_restart_at > window_start:
            problems.append(f"{pod.name} restarted at {format_precise_time(pod.last_restart_at)}")
    if len(live) < desired:
        problems.append(f"{len(live)} of {desired} Pods present")
    if problems:
        return SymptomVerdict(False, Evidence.PODS, "Pods: " + "; ".join(problems[:5]), tuple(problems))
    return SymptomVerdict(
        True, Evidence.PODS, f"Pods: {len(live)} Ready throughout the window, no container restart"
    )


__all__ = [
    "DEFAULT_VERIFICATION_WINDOW_SECONDS",
    "Evidence",
    "PodFacts",
    "SignalFacts",
    "SymptomVerdict",
    "alerts_series_matches",
    "all_resolved",
    "firing_signals",
    "pods_verdict",
    "prometheus_query",
    "signal_verdict",
    "window_end",
]
