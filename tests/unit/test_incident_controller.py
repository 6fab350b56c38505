"""Pure parts of the Incident reconcile: who is primary among same-key Incidents, stable ids.

Scenario matrix for deduplication: no peers; an older active peer; a younger active
peer (we are primary); a claimed younger peer wins over us (it already has a Run);
resolved and duplicate peers never count; simultaneous creation tie-broken by uid.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.api.enums import IncidentPhase
from flywheel.api.incident import IncidentSpec, IncidentStatus
from flywheel.controllers.incident import IncidentObject, PeerIncident, find_primary, run_name, trace_id

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_incident(uid: str = "uid-b", created_at: datetime = T0) -> IncidentObject:
    return IncidentObject(
        name="me", namespace="shop", uid=uid, generation=1, created_at=created_at,
        spec=IncidentSpec.model_validate({"service": "checkout", "targetRef": {"kind": "Deployment", "name": "c"}}),
        status=IncidentStatus(),
    )


def peer(name: str, uid: str, created_at: datetime, phase: IncidentPhase | None = None, claimed: bool = False) -> PeerIncident:
    return PeerIncident(name=name, uid=uid, created_at=created_at, phase=phase, claimed=claimed)


def test_alone_it_is_primary() -> None:
    me = make_incident()
    assert find_primary(me, [peer("me", me.uid, T0)]) is None


def test_an_older_active_incident_is_primary() -> None:
    older = peer("older", "uid-a", T0 - timedelta(minutes=1), IncidentPhase.MITIGATING, claimed=True)
    assert find_primary(make_incident(), [older]) == older


def test_a_younger_unclaimed_incident_does_not_take_over() -> None:
    younger = peer("younger", "uid-c", T0 + timedelta(seconds=1))
    assert find_primary(make_incident(), [younger]) is None


def test_a_claimed_incident_wins_even_if_younger() -> None:
    younger = peer("younger", "uid-c", T0 + timedelta(seconds=1), IncidentPhase.MITIGATING, claimed=True)
    assert find_primary(make_incident(), [younger]) == younger


@pytest.mark.parametrize("phase", [IncidentPhase.RESOLVED, IncidentPhase.CLOSED, IncidentPhase.DUPLICATE])
def test_inactive_incidents_never_count(phase: IncidentPhase) -> None:
    older = peer("older", "uid-a", T0 - timedelta(hours=1), phase, claimed=True)
    assert find_primary(make_incident(), [older]) is None


def test_simultaneous_incidents_agree_on_one_primary_by_uid() -> None:
    a, b = make_incident("uid-a"), make_incident("uid-b")
    peers = [peer("a", "uid-a", T0), peer("b", "uid-b", T0)]
    assert find_primary(a, peers) is None
    assert find_primary(b, peers) == peers[0]


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
