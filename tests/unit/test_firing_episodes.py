"""Repeat firings count: one occurrence per firing episode, never two for one episode.

Scenario matrix:
- ids: the Incident counts under its uid (as before this change), each further distinct
  episode ``(fingerprint, startsAt)`` under one stable ``ep-…`` id; equal instants in other
  time zones are one episode; a naive ``startsAt`` is refused naming the field;
- properties over arbitrary signal lists (Hypothesis): re-sends, duplicates, the resolved
  signal of an episode and any order give the same occurrences; one more distinct episode
  adds exactly one occurrence;
- the reconcile (IncidentReconciler over an in-memory store): a pass with no spec change
  records nothing; an appended episode counts one more and re-evaluates the escalation
  (REPEAT at 3, ESCALATE at 5: a Warning on the decided Incident saying the next Run
  requires approval, once); a re-sent episode or a retried pass counts nothing and posts no
  Event; a Resolved Incident takes no new occurrence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.api.enums import EscalationLevel, IncidentPhase, SignalStatus
from flywheel.api.incident import IncidentSpec, IncidentStatus, Signal
from flywheel.api.names import ANOMALY_EVENT_REASON
from flywheel.controllers.incident import (
    ESCALATED_EVENT_REASON,
    IncidentPolicy,
    IncidentReconciler,
    IncidentStores,
)
from flywheel.domain.escalation import (
    EPISODE_ID_PREFIX,
    AnomalySnapshot,
    EscalationThresholds,
    Occurrence,
    episode_id,
    escalation_level,
    incident_occurrences,
)
from flywheel.domain.incident import IncidentObject
from flywheel.domain.rules import default_catalogue
from flywheel.errors import InvalidInputError
from flywheel.settings import FlywheelSettings
from flywheel.stores.anomaly_redis import RecordedOccurrences

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
UID = "0c6f5a38-7d0e-4f4e-9d6b-2f1f3c9a1b01"
FINGERPRINT = "5c7e9b1a2d3f4e60"


def occurrence_ids(occurrences: Sequence[Occurrence]) -> set[str]:
    return {occurrence.id for occurrence in occurrences}


# --------------------------------------------------------------------------- ids


def test_the_incident_counts_under_its_uid_and_each_further_episode_once() -> None:
    episodes = [(FINGERPRINT, T0), (FINGERPRINT, T0 + timedelta(minutes=7)), (FINGERPRINT, T0 + timedelta(minutes=19))]
    occurrences = incident_occurrences(UID, T0 + timedelta(seconds=2), episodes)
    assert [occurrence.id for occurrence in occurrences] == [
        UID, episode_id(FINGERPRINT, episodes[1][1]), episode_id(FINGERPRINT, episodes[2][1]),
    ]
    assert occurrences[0].at == T0 + timedelta(seconds=2), "the Incident itself counts at its creation, as before"
    assert [occurrence.at for occurrence in occurrences[1:]] == [episodes[1][1], episodes[2][1]]
    assert incident_occurrences(UID, T0, []) == (Occurrence(UID, T0),), "an Incident without signals counts once"


def test_an_episode_id_names_the_fingerprint_and_the_instant_not_its_spelling() -> None:
    paris = timezone(timedelta(hours=1))
    assert episode_id(FINGERPRINT, T0) == episode_id(FINGERPRINT, T0.astimezone(paris))
    assert episode_id(FINGERPRINT, T0) != episode_id(FINGERPRINT, T0 + timedelta(microseconds=1))
    assert episode_id(FINGERPRINT, T0) != episode_id("ffffffffffffffff", T0)
    assert episode_id(None, T0) != episode_id(FINGERPRINT, T0)
    assert episode_id(FINGERPRINT, T0).startswith(EPISODE_ID_PREFIX)
    with pytest.raises(InvalidInputError) as raised:
        episode_id(FINGERPRINT, T0.replace(tzinfo=None))
    assert raised.value.field == "starts_at"


fingerprints = st.sampled_from([FINGERPRINT, "a1b2c3d4e5f60718", None])
instants = st.integers(min_value=0, max_value=48 * 3600).map(lambda seconds: T0 + timedelta(seconds=seconds))
zones = st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))])
episodes = st.tuples(fingerprints, instants)


@given(st.lists(episodes, max_size=30), st.data())
def test_re_sends_duplicates_resolutions_and_order_never_change_the_occurrences(
    distinct: list[tuple[str | None, datetime]], data: st.DataObject
) -> None:
    # What the intake may hold for these episodes: each once or several times (firing, resolved,
    # a notification spelled in another zone), in any order.
    held = []
    for fingerprint, starts_at in distinct:
        for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
            held.append((fingerprint, starts_at.astimezone(data.draw(zones))))
    shuffled = data.draw(st.permutations(held))
    baseline = incident_occurrences(UID, T0, distinct)
    assert incident_occurrences(UID, T0, shuffled) == baseline
    assert len(baseline) == max(1, len(set(distinct)))
    assert len(occurrence_ids(baseline)) == len(baseline), "no two occurrences share an id"


@given(st.lists(episodes, min_size=1, max_size=30), episodes)
def test_one_more_distinct_episode_is_exactly_one_more_occurrence(
    recorded: list[tuple[str | None, datetime]], new: tuple[str | None, datetime]
) -> None:
    before = occurrence_ids(incident_occurrences(UID, T0, recorded))
    after = occurrence_ids(incident_occurrences(UID, T0, [*recorded, new]))
    if new in set(recorded):
        assert after == before
    else:
        # Counting the union of what every pass saw: the new episode adds one id, whichever
        # episode ends up being the Incident's opening one.
        assert len(before | after) == len(before) + 1


# --------------------------------------------------------------------------- the reconcile


@dataclass
class InMemoryAnomalies:
    """The anomaly store's recording contract: each id counted once, a snapshot of the 24 h count."""

    thresholds: EscalationThresholds = field(default_factory=EscalationThresholds)
    timeline: dict[str, datetime] = field(default_factory=dict)
    calls: int = 0

    async def record_occurrences(
        self, tenant: str, key: str, signature: Mapping[str, str], occurrences: Sequence[Occurrence],
        now: datetime | None = None,
    ) -> RecordedOccurrences:
        self.calls += 1
        counted = 0
        for occurrence in occurrences:
            if occurrence.id not in self.timeline:
                self.timeline[occurrence.id] = occurrence.at
                counted += 1
        assert now is not None
        count_24h = sum(1 for at in self.timeline.values() if at >= now - timedelta(hours=24))
        snapshot = AnomalySnapshot(
            key=key, count_1h=count_24h, count_24h=count_24h, count_7d=count_24h, count_30d=count_24h,
            first_seen=min(self.timeline.values()), last_seen=max(self.timeline.values()),
            escalation_level=escalation_level(count_24h, self.thresholds), auto_repair_count=0,
            permanent_fix_applied=False, action_stats={},
        )
        return RecordedOccurrences(snapshot, counted=counted, already_counted=len(occurrences) - counted, too_old=0)



def signal(starts_at: datetime, status: SignalStatus = SignalStatus.FIRING) -> Signal:
    return Signal(alert_name="KubePodCrashLooping", starts_at=starts_at, fingerprint=FINGERPRINT, status=status,
                  labels={"namespace": "shop", "pod": "checkout-7d4b9c-x2x7q", "container": "app"})


class Flapping:
    """An intake Incident that is being remediated (its Run exists) while its alert flaps."""

    def __init__(self) -> None:
        self.anomalies = InMemoryAnomalies()
        settings = FlywheelSettings()
        self.reconciler = IncidentReconciler(
            IncidentPolicy(
                tenant=None, max_automatic_risk=settings.max_automatic_risk,
                advisor_timeout_seconds=settings.advisor_timeout_seconds,
                run_timeout_seconds=settings.run_timeout_seconds, run_max_attempts=settings.run_max_attempts,
            ),
            # A Mitigating Incident whose Run exists creates nothing and claims nothing.
            IncidentStores(
                anomalies=self.anomalies, resources=cast(Any, None), claims=cast(Any, None),
                catalogue=default_catalogue(),
            ),
        )
        self.signals = [signal(T0)]
        self.generation = 1
        self.status = IncidentStatus.model_validate({
            "phase": "Mitigating", "runRef": {"name": "am-x-1", "uid": "r-1"},
            "decision": {"id": "DEC-0123456789ab", "state": "Ready", "source": "rules",
                         "action": {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "checkout"}},
                         "riskLevel": "medium", "confidence": 0.75, "reasoning": "rules"},
        })

    def incident(self) -> IncidentObject:
        spec = IncidentSpec.model_validate({
            "alertName": "KubePodCrashLooping", "service": "checkout", "errorType": "CrashLoopBackOff",
            "source": "alertmanager", "targetRef": {"kind": "Deployment", "name": "checkout"},
            "signals": [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in self.signals],
        })
        return IncidentObject(name="am-kubepodcrashlooping-5c7e9b1a2d3f4e60", namespace="shop", uid=UID,
                              generation=self.generation, created_at=T0, spec=spec, status=self.status)

    def append(self, new: Signal) -> None:
        """What the intake's preconditioned spec patch does: one more signal, one more generation."""
        self.signals.append(new)
        self.generation += 1

    async def reconcile(self) -> list[tuple[str, str, str]]:
        outcome = await self.reconciler.reconcile(self.incident(), [], now=T0 + timedelta(hours=1))
        self.status = outcome.status
        return [(event.type, event.reason, event.message) for event in outcome.events_to_post()]

    @property
    def count_24h(self) -> int:
        assert self.status.anomaly is not None
        return self.status.anomaly.count_24h

    @property
    def level(self) -> EscalationLevel | None:
        assert self.status.anomaly is not None
        return self.status.anomaly.escalation_level


async def test_each_firing_episode_counts_once_and_escalates_the_open_incident() -> None:
    flapping = Flapping()
    await flapping.reconcile()
    assert (flapping.count_24h, flapping.level) == (1, None)
    assert await flapping.reconcile() == [] and flapping.anomalies.calls == 1, \
        "a pass without a spec change (a restart's listing) asks Redis nothing"

    levels = []
    warnings = []
    for episode in range(1, 5):
        flapping.append(signal(T0 + timedelta(minutes=10 * episode)))
        events = await flapping.reconcile()
        levels.append((flapping.count_24h, flapping.level))
        warnings += [event for event in events if event[0] == "Warning"]
        assert [event[1] for event in events if event[0] == "Normal"] == [ANOMALY_EVENT_REASON]
    assert levels == [
        (2, None), (3, EscalationLevel.REPEAT), (4, EscalationLevel.REPEAT), (5, EscalationLevel.ESCALATE),
    ]
    assert [(kind, reason) for kind, reason, _ in warnings] == [("Warning", ESCALATED_EVENT_REASON)]
    assert "the next Run for this anomaly requires approval" in warnings[0][2]
    assert flapping.status.phase is IncidentPhase.MITIGATING, "the Run in flight is left alone"


async def test_re_sent_and_resolved_notifications_of_an_episode_count_nothing() -> None:
    flapping = Flapping()
    await flapping.reconcile()
    second = T0 + timedelta(minutes=5)
    flapping.append(signal(second))
    await flapping.reconcile()
    assert flapping.count_24h == 2

    # The resolution of the second episode, and a copy of the first written by hand: spec
    # changes, but no new episode.
    flapping.append(signal(second, SignalStatus.RESOLVED))
    assert await flapping.reconcile() == []
    flapping.append(signal(T0))
    assert await flapping.reconcile() == []
    assert flapping.count_24h == 2
    # A retried pass (the status write was lost): recorded again, counted never.
    flapping.status = flapping.status.model_copy(update={"observed_generation": 1})
    assert await flapping.reconcile() == []
    assert (flapping.count_24h, len(flapping.anomalies.timeline)) == (2, 2)


async def test_a_resolved_incident_takes_no_new_occurrence() -> None:
    flapping = Flapping()
    await flapping.reconcile()
    flapping.status = flapping.status.model_copy(update={"phase": IncidentPhase.RESOLVED})
    flapping.append(signal(T0 + timedelta(minutes=30)))
    await flapping.reconcile()
    assert flapping.count_24h == 1 and flapping.anomalies.calls == 1
