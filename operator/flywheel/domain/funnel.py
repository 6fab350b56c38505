"""The remediation funnel of one period and the stall rules that watch it.

Pure: the counts come from the history database and the watched resources; this module only
says what they mean. The funnel of a period (default 10 minutes, at least 5) is::

    incidents opened → runs started → actions executed → verification passed / failed
                     → incidents resolved

Stage definitions (what the stores count, all within the period unless said otherwise):

- ``opened``: Incidents created (duplicates included: the intake volume);
- ``runs_started``: Runs created in Auto mode (Flywheel took the Incident on);
- ``executed``: Auto Runs that started executing their action (``status.startedAt``);
- ``verification_passed``: Auto Runs that reached Succeeded;
- ``verification_failed``: Auto Runs that started and then ended Failed or TimedOut, by
  failure class (``status.errorCode``);
- ``resolved``: Incidents resolved (``status.resolvedAt``), automatically or by a person;
- ``open_waiting``: *currently* active Incidents, not duplicates, that have no Run.

Shadow Runs only dry-run: they never verify nor resolve anything, so they are left out of the
stages after ``opened`` (counting them would raise false SUBMIT/PASS/RESOLVE stalls).

A *source* is an Incident's ``spec.source`` (who reported it). A source "only opens" when none
of the Incidents it opened in the period got a Run or was folded into an Incident that has one
(Duplicate). Configured internal sources (synthetic probes) and Incidents without a source are
left out of source statistics, so a probe that opens Incidents nobody should act on does not
make the funnel look cold.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Final

from flywheel.errors import InvalidInputError

DEFAULT_PERIOD: Final = timedelta(minutes=10)
MINIMUM_PERIOD: Final = timedelta(minutes=5)
# A rule notifies at most once per this long per scope (Redis SET NX EX).
STALL_NOTIFICATION_INTERVAL: Final = timedelta(minutes=10)

MAX_OPEN_WAITING_SAMPLES: Final = 5
MAX_FAILURE_CLASSES: Final = 5
MAX_EXAMPLES_PER_FAILURE_CLASS: Final = 3
MAX_OPEN_ONLY_SOURCES_SHOWN: Final = 3
UNKNOWN_FAILURE_CLASS: Final = "UNKNOWN"

# Thresholds of the stall rules (SPEC §6).
CLAIM_STALL_MIN_OPENED: Final = 3
COLD_STANDBY_MIN_OPEN_ONLY_SOURCES: Final = 3
COLD_STANDBY_MIN_OPENED: Final = 10


class StallRule(StrEnum):
    """Where the funnel stopped turning. Values are metric label values and event reasons."""

    CLAIM_STALL = "CLAIM_STALL"
    COLD_STANDBY = "COLD_STANDBY"
    SUBMIT_STALL = "SUBMIT_STALL"
    PASS_STALL = "PASS_STALL"
    RESOLVE_STALL = "RESOLVE_STALL"

    @property
    def event_reason(self) -> str:
        """CamelCase, as Kubernetes Event reasons are: ``CLAIM_STALL`` → ``FunnelClaimStall``."""
        return "Funnel" + "".join(part.capitalize() for part in self.value.split("_"))


def funnel_period(minutes: int | None = None) -> timedelta:
    """The funnel period for ``minutes`` (``None``: the default 10 minutes).

    Shorter than 5 minutes is refused: a period that short sees too few Incidents for the
    stall rules' thresholds to mean anything, and every quiet minute would look like a stall.
    """
    if minutes is None:
        return DEFAULT_PERIOD
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise InvalidInputError("funnel_period_minutes", f"must be an integer, got {minutes!r}")
    period = timedelta(minutes=minutes)
    if period < MINIMUM_PERIOD:
        raise InvalidInputError(
            "funnel_period_minutes", f"must be at least {int(MINIMUM_PERIOD.total_seconds() // 60)}, got {minutes}"
        )
    return period


@dataclass(frozen=True, slots=True)
class ObjectSample:
    """A resource named in a funnel message and used as the subject of its Warning Event."""

    kind: str  # Incident | Run
    namespace: str
    name: str
    uid: str | None = None

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class FailureClass:
    """How many Runs failed with one error code in the period, with up to 3 of them."""

    code: str
    count: int
    examples: tuple[ObjectSample, ...] = ()


@dataclass(frozen=True, slots=True)
class SourceActivity:
    """What one reporter did in the period: Incidents opened, and how many of them progressed."""

    source: str | None
    opened: int
    progressed: int  # got a Run, or were folded into an Incident that has one (Duplicate)


@dataclass(frozen=True, slots=True)
class SourceStatistics:
    """Reporters of the period, internal sources excluded."""

    reporting: int = 0
    progressing: int = 0
    open_only: int = 0
    # The busiest open-only sources (at most 3), busiest first.
    top_open_only: tuple[SourceActivity, ...] = ()


@dataclass(frozen=True, slots=True)
class FunnelCounts:
    """One period of the funnel (see the module docstring for what each stage counts)."""

    period: timedelta
    opened: int = 0
    runs_started: int = 0
    executed: int = 0
    verification_passed: int = 0
    verification_failed: int = 0
    resolved: int = 0
    open_waiting: int = 0
    open_waiting_samples: tuple[ObjectSample, ...] = ()
    # Runs that exist but have not started executing (Pending, WaitingApproval), oldest first.
    waiting_run_samples: tuple[ObjectSample, ...] = ()
    # Runs applying or verifying their action (Running, Verifying), oldest first.
    executing_run_samples: tuple[ObjectSample, ...] = ()
    # Active Incidents whose Run succeeded: verified, yet not resolved.
    unresolved_samples: tuple[ObjectSample, ...] = ()
    failure_classes: tuple[FailureClass, ...] = ()
    approvals_rejected: int = 0
    approvals_invalid: int = 0
    sources: SourceStatistics = field(default_factory=SourceStatistics)

    def __post_init__(self) -> None:
        for name in (
            "opened",
            "runs_started",
            "executed",
            "verification_passed",
            "verification_failed",
            "resolved",
            "open_waiting",
            "approvals_rejected",
            "approvals_invalid",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInputError(name, f"must be an integer >= 0, got {value!r}")
        for name in ("open_waiting_samples", "waiting_run_samples", "executing_run_samples", "unresolved_samples"):
            samples = getattr(self, name)
            if len(samples) > MAX_OPEN_WAITING_SAMPLES:
                raise InvalidInputError(name, f"at most {MAX_OPEN_WAITING_SAMPLES}, got {len(samples)}")
        if len(self.failure_classes) > MAX_FAILURE_CLASSES:
            raise InvalidInputError(
                "failure_classes", f"at most {MAX_FAILURE_CLASSES}, got {len(self.failure_classes)}"
            )

    @property
    def period_minutes(self) -> int:
        return int(self.period.total_seconds() // 60)


def normalize_failure_class(code: str | None) -> str:
    """The label of a failure class: upper-cased, ``UNKNOWN`` when the Run recorded none."""
    text = (code or "").strip().upper()
    return text or UNKNOWN_FAILURE_CLASS


def rank_failure_classes(classes: Iterable[FailureClass]) -> tuple[FailureClass, ...]:
    """The top 5 failure classes, most frequent first (ties by code), at most 3 examples each.

    Classes that normalise to the same label (``e-verify-timeout`` and ``E-VERIFY-TIMEOUT``,
    or a missing code and ``UNKNOWN``) are merged.
    """
    merged: dict[str, tuple[int, list[ObjectSample]]] = {}
    for item in classes:
        if item.count < 0:
            raise InvalidInputError("failure_classes", f"count must be >= 0, got {item.count} for {item.code!r}")
        code = normalize_failure_class(item.code)
        count, examples = merged.get(code, (0, []))
        for example in item.examples:
            if len(examples) < MAX_EXAMPLES_PER_FAILURE_CLASS and example not in examples:
                examples.append(example)
        merged[code] = (count + item.count, examples)
    ranked = sorted(merged.items(), key=lambda entry: (-entry[1][0], entry[0]))
    return tuple(
        FailureClass(code=code, count=count, examples=tuple(examples))
        for code, (count, examples) in ranked[:MAX_FAILURE_CLASSES]
        if count > 0
    )


def is_internal_source(source: str | None, internal_sources: Collection[str]) -> bool:
    """Whether ``source`` is left out of source statistics (configured probes, or no source at all)."""
    if source is None or not source.strip():
        return True
    configured = {name.strip().lower() for name in internal_sources}
    return source.strip().lower() in configured


def source_statistics(activity: Iterable[SourceActivity], internal_sources: Collection[str] = ()) -> SourceStatistics:
    """Reporting, progressing and open-only sources of the period, internal sources excluded.

    Rows for the same source (differing only in case or surrounding blanks) are merged.
    """
    per_source: dict[str, tuple[str, int, int]] = {}
    for row in activity:
        if row.opened < 0 or row.progressed < 0:
            raise InvalidInputError("source_activity", f"counts must be >= 0, got {row!r}")
        if is_internal_source(row.source, internal_sources):
            continue
        assert row.source is not None  # is_internal_source() is True for None
        identity = row.source.strip().lower()
        shown, opened, progressed = per_source.get(identity, (row.source.strip(), 0, 0))
        per_source[identity] = (shown, opened + row.opened, progressed + row.progressed)
    reporting = [SourceActivity(shown, opened, progressed) for shown, opened, progressed in per_source.values()
                 if opened > 0]
    open_only = sorted(
        (item for item in reporting if item.progressed == 0),
        key=lambda item: (-item.opened, item.source or ""),
    )
    return SourceStatistics(
        reporting=len(reporting),
        progressing=sum(1 for item in reporting if item.progressed > 0),
        open_only=len(open_only),
        top_open_only=tuple(open_only[:MAX_OPEN_ONLY_SOURCES_SHOWN]),
    )


@dataclass(frozen=True, slots=True)
class StallAlert:
    """A stall rule that fired: what to tell people, and which resources to point at."""

    rule: StallRule
    message: str
    subjects: tuple[ObjectSample, ...] = ()


def evaluate_stalls(funnel: FunnelCounts) -> tuple[StallAlert, ...]:
    """The stall rules that fire for this funnel, in funnel order.

    - CLAIM_STALL: opened ≥ 3, open waiting > 0, no run started;
    - COLD_STANDBY: ≥ 3 sources only open, opened ≥ 10, open waiting > 0;
    - SUBMIT_STALL: runs started > 0, no action executed;
    - PASS_STALL: executed > 0, no verification passed;
    - RESOLVE_STALL: verification passed > 0, nothing resolved.
    """
    alerts: list[StallAlert] = []
    if funnel.opened >= CLAIM_STALL_MIN_OPENED and funnel.open_waiting > 0 and funnel.runs_started == 0:
        alerts.append(StallAlert(StallRule.CLAIM_STALL, _claim_stall_message(funnel), funnel.open_waiting_samples))
    if (
        funnel.sources.open_only >= COLD_STANDBY_MIN_OPEN_ONLY_SOURCES
        and funnel.opened >= COLD_STANDBY_MIN_OPENED
        and funnel.open_waiting > 0
    ):
        alerts.append(
            StallAlert(StallRule.COLD_STANDBY, _cold_standby_message(funnel), funnel.open_waiting_samples)
        )
    if funnel.runs_started > 0 and funnel.executed == 0:
        alerts.append(StallAlert(StallRule.SUBMIT_STALL, _submit_stall_message(funnel), funnel.waiting_run_samples))
    if funnel.executed > 0 and funnel.verification_passed == 0:
        # The failed Runs if any, else the Runs still applying or verifying their action.
        examples = tuple(example for item in funnel.failure_classes for example in item.examples)
        subjects = examples[:MAX_EXAMPLES_PER_FAILURE_CLASS] or funnel.executing_run_samples
        alerts.append(StallAlert(StallRule.PASS_STALL, _pass_stall_message(funnel), subjects))
    if funnel.verification_passed > 0 and funnel.resolved == 0:
        alerts.append(
            StallAlert(StallRule.RESOLVE_STALL, _resolve_stall_message(funnel), funnel.unresolved_samples)
        )
    return tuple(alerts)


def _samples(samples: Iterable[ObjectSample]) -> str:
    return ", ".join(str(sample) for sample in samples)


def _open_only_sources(funnel: FunnelCounts) -> str:
    return ", ".join(f"{item.source} ({item.opened})" for item in funnel.sources.top_open_only)


def _claim_stall_message(funnel: FunnelCounts) -> str:
    parts = [
        (
            f"{funnel.opened} Incidents opened in the last {funnel.period_minutes} min and "
            f"{funnel.open_waiting} wait without a Run, but no Run started."
        ),
    ]
    if funnel.open_waiting_samples:
        parts.append(f"Waiting: {_samples(funnel.open_waiting_samples)}.")
    if funnel.sources.top_open_only:
        parts.append(f"Sources whose Incidents got no Run: {_open_only_sources(funnel)}.")
    parts.append("Check the Incidents' Decided and RemediationStarted conditions and the operator log.")
    return " ".join(parts)


def _cold_standby_message(funnel: FunnelCounts) -> str:
    sources = funnel.sources
    parts = [
        (
            f"{sources.reporting} sources opened {funnel.opened} Incidents in the last {funnel.period_minutes} min; "
            f"{sources.progressing} saw a Run start, {sources.open_only} only opened Incidents, "
            f"and {funnel.open_waiting} Incidents wait without a Run."
        ),
    ]
    if sources.top_open_only:
        parts.append(f"Busiest open-only sources: {_open_only_sources(funnel)}.")
    if funnel.open_waiting_samples:
        parts.append(f"Waiting: {_samples(funnel.open_waiting_samples)}.")
    parts.append("Check remediation.mode (Off decides but never acts) and whether targetRef names a real workload.")
    return " ".join(parts)


def _submit_stall_message(funnel: FunnelCounts) -> str:
    rejected = funnel.approvals_rejected + funnel.approvals_invalid
    parts = [
        f"{funnel.runs_started} Runs started in the last {funnel.period_minutes} min but none executed its action.",
    ]
    if funnel.waiting_run_samples:
        parts.append(f"Runs not executing: {_samples(funnel.waiting_run_samples)}.")
    if rejected:
        parts.append(f"Approvals rejected: {funnel.approvals_rejected}, invalid: {funnel.approvals_invalid}.")
    parts.append(
        "Runs may be waiting for approval, throttled by the concurrency limits or held by the circuit breaker: "
        "see `kubectl get fwrun` and the Runs' conditions."
    )
    return " ".join(parts)


def _pass_stall_message(funnel: FunnelCounts) -> str:
    parts = [
        (
            f"{funnel.executed} Runs executed their action in the last {funnel.period_minutes} min but none "
            f"passed verification ({funnel.verification_failed} failed)."
        ),
    ]
    if funnel.failure_classes:
        classes = ", ".join(f"{item.code} ({item.count})" for item in funnel.failure_classes)
        parts.append(f"Failure classes: {classes}.")
        examples = [example for item in funnel.failure_classes for example in item.examples]
        if examples:
            parts.append(f"Failed Runs: {_samples(examples[:MAX_EXAMPLES_PER_FAILURE_CLASS])}.")
    else:
        parts.append("No failure class recorded yet (Runs may still be verifying).")
        if funnel.executing_run_samples:
            parts.append(f"Executing: {_samples(funnel.executing_run_samples)}.")
    parts.append("Check the targets' rollouts and the Runs' journals (`flywheel timeline RUN`).")
    return " ".join(parts)


def _resolve_stall_message(funnel: FunnelCounts) -> str:
    parts = [
        (
            f"{funnel.verification_passed} Runs passed verification in the last {funnel.period_minutes} min "
            "but no Incident was resolved."
        ),
    ]
    if funnel.unresolved_samples:
        parts.append(f"Verified but still open: {_samples(funnel.unresolved_samples)}.")
    parts.append("Check the Incidents' Resolved condition and the operator log.")
    return " ".join(parts)


__all__ = [
    "DEFAULT_PERIOD",
    "MAX_EXAMPLES_PER_FAILURE_CLASS",
    "MAX_FAILURE_CLASSES",
    "MAX_OPEN_WAITING_SAMPLES",
    "MINIMUM_PERIOD",
    "STALL_NOTIFICATION_INTERVAL",
    "UNKNOWN_FAILURE_CLASS",
    "FailureClass",
    "FunnelCounts",
    "ObjectSample",
    "SourceActivity",
    "SourceStatistics",
    "StallAlert",
    "StallRule",
    "evaluate_stalls",
    "funnel_period",
    "is_internal_source",
    "normalize_failure_class",
    "rank_failure_classes",
    "source_statistics",
]
