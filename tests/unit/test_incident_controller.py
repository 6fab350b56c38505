"""Pure parts of the Incident reconcile: ids that stay the same when a handler is retried.

(Who is primary among same-key Incidents is decided by an atomic Lease claim; the e2e
tests cover it, including a burst of simultaneous Incidents.)"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.controllers.incident import run_name, trace_id

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@given(st.text(min_size=1, max_size=60), st.integers(min_value=1, max_value=10_000))
def test_trace_id_is_w3c_shaped_and_stable(uid: str, sequence: int) -> None:
    first = trace_id(uid, sequence)
    assert first == trace_id(uid, sequence)
    assert len(first) == 32 and all(c in "0123456789abcdef" for c in first)
    assert first != "0" * 32  # W3C forbids the all-zero trace id


@given(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,251}[a-z0-9])?", fullmatch=True), st.integers(1, 999))
def test_run_names_fit_kubernetes_limits(incident_name: str, sequence: int) -> None:
    name = run_name(incident_name, sequence)
    assert len(name) <= 253
    assert name.endswith(f"-{sequence}")


def test_the_anomaly_counts_ride_on_the_next_normal_event_and_never_on_a_warning() -> None:
    from flywheel.api.incident import IncidentStatus
    from flywheel.controllers.incident import ANOMALY_EVENT_REASON, Event, IncidentOutcome

    counts = Event("Normal", ANOMALY_EVENT_REASON, "anomaly k seen 2x/1h")
    warning = Event("Warning", "AdvisorUnavailable", "advisor timed out")
    ready = Event("Normal", "DecisionReady", "RolloutRestart chosen")
    outcome = IncidentOutcome(status=IncidentStatus(), events=[counts, warning, ready])
    posted = outcome.events_to_post()
    assert [(event.type, event.reason) for event in posted] == [
        ("Warning", "AdvisorUnavailable"),
        ("Normal", "DecisionReady"),
    ]
    assert posted[1].message == "anomaly k seen 2x/1h; RolloutRestart chosen"
    alone = IncidentOutcome(status=IncidentStatus(), events=[counts]).events_to_post()
    assert alone == [counts], "with nothing else to say the counts still get their Event"
    duplicate = Event("Normal", "Duplicate", "duplicate of oom-1")
    assert [(e.reason, e.message) for e in IncidentOutcome(IncidentStatus(), events=[counts, duplicate]).events_to_post()] == [
        ("Duplicate", "anomaly k seen 2x/1h; duplicate of oom-1"),
    ]


def test_a_decision_and_the_run_it_starts_are_one_event() -> None:
    from flywheel.api.incident import IncidentStatus
    from flywheel.controllers.incident import (
        ANOMALY_EVENT_REASON,
        DECISION_EVENT_REASON,
        RUN_CREATED_EVENT_REASON,
        Event,
        IncidentOutcome,
    )

    events = [
        Event("Normal", ANOMALY_EVENT_REASON, "anomaly k seen 3x/1h"),
        Event("Normal", DECISION_EVENT_REASON, "DEC-1: restart checkout"),
        Event("Warning", "NeedsPermanentFix", "needs a permanent fix"),
        Event("Normal", RUN_CREATED_EVENT_REASON, "Run oom-1 created (waits for approval)"),
    ]
    posted = IncidentOutcome(status=IncidentStatus(), events=events).events_to_post()
    assert [(event.type, event.reason) for event in posted] == [
        ("Normal", DECISION_EVENT_REASON),
        ("Warning", "NeedsPermanentFix"),
    ]
    assert posted[0].message == "anomaly k seen 3x/1h; DEC-1: restart checkout; Run oom-1 created (waits for approval)"
    long = [Event("Normal", DECISION_EVENT_REASON, "x" * 900), Event("Normal", RUN_CREATED_EVENT_REASON, "y" * 900)]
    assert len(IncidentOutcome(IncidentStatus(), events=long).events_to_post()[0].message) == 1024
