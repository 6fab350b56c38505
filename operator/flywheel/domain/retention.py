"""When a finished Incident may leave the cluster (``FLYWHEEL_FINISHED_TTL_SECONDS``). Pure, no I/O.

Like a Job's ``ttlSecondsAfterFinished``: a Resolved or Closed Incident is deleted once its TTL
has passed since it finished, counted from its ``Resolved`` condition's ``lastTransitionTime``
(else ``status.resolvedAt``). Never an active one (Investigating, Mitigating), never one with a
Run still running. A Duplicate follows its primary (``status.duplicateOf``): it goes once the
primary is past its own TTL, or gone (deleted by it, or by hand: a Duplicate never moves again),
and stays while the primary is active or young, or when it names no primary; and — for the intake's
``am-<slug>-<fingerprint>[-N]`` chains — never one whose alert may still be re-sent: an episode
(fingerprint, startsAt) recorded firing without its resolved notification. Deleting that one
would let Alertmanager's next re-send of the same episode open a fresh Incident for an alert
that was already handled. Whether the history holds the objects is the controller's question
to the history store, asked after these rules pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from flywheel.api.enums import IncidentPhase
from flywheel.api.times import read_time
from flywheel.domain.alerts import LABEL_FINGERPRINT
from flywheel.domain.run_state import TERMINAL_STATES

FINISHED_PHASES: Final = frozenset({IncidentPhase.RESOLVED, IncidentPhase.CLOSED})
RESOLVED_CONDITION: Final = "Resolved"
SIGNAL_FIRING: Final = "firing"
SIGNAL_RESOLVED: Final = "resolved"


class Hold(StrEnum):
    """Why an Incident stays (for logs and tests)."""

    ACTIVE = "active"  # not Resolved or Closed
    NO_FINISH_TIME = "no_finish_time"  # finished, but nothing says when
    TTL_NOT_PASSED = "ttl_not_passed"
    RUN_NOT_FINISHED = "run_not_finished"
    ALERT_STILL_FIRING = "alert_still_firing"
    PRIMARY_NOT_EXPIRED = "primary_not_expired"  # a Duplicate whose primary stays
    NO_PRIMARY = "no_primary"  # a Duplicate that does not say of which Incident


def finished_at(incident: Mapping[str, Any]) -> datetime | None:
    """When a Resolved or Closed Incident finished; None while it is active or nothing says when."""
    status = incident.get("status") or {}
    if status.get("phase") not in FINISHED_PHASES:
        return None
    for condition in status.get("conditions") or []:
        resolved = condition.get("type") == RESOLVED_CONDITION and condition.get("status") == "True"
        if resolved and (moment := read_time(condition.get("lastTransitionTime"))) is not None:
            return moment
    return read_time(status.get("resolvedAt"))


def alert_may_be_resent(incident: Mapping[str, Any]) -> bool:
    """Whether an Incident of the intake holds a firing episode whose resolution never arrived."""
    labels = (incident.get("metadata") or {}).get("labels") or {}
    if LABEL_FINGERPRINT not in labels:
        return False
    firing: set[tuple[Any, datetime | None]] = set()
    resolved: set[tuple[Any, datetime | None]] = set()
    for signal in (incident.get("spec") or {}).get("signals") or []:
        episode = (signal.get("fingerprint"), read_time(signal.get("startsAt")))
        (resolved if signal.get("status") == SIGNAL_RESOLVED else firing).add(episode)
    return bool(firing - resolved)


def _run_finished(run: Mapping[str, Any]) -> bool:
    # RunState is a StrEnum: the status' plain string is found in the set of members.
    return (run.get("status") or {}).get("state") in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class Verdict:
    """Delete (``hold`` is None) or keep, and why."""

    hold: Hold | None
    finished_at: datetime | None = None

    @property
    def expired(self) -> bool:
        return self.hold is None


def primary_of(incident: Mapping[str, Any]) -> str | None:
    """The name of the Incident a Duplicate duplicates; None for any other Incident."""
    status = incident.get("status") or {}
    if status.get("phase") != IncidentPhase.DUPLICATE:
        return None
    return str(status.get("duplicateOf") or "") or None


def judge(
    incident: Mapping[str, Any],
    runs: Iterable[Mapping[str, Any]],
    *,
    ttl: timedelta,
    now: datetime,
    primary: Mapping[str, Any] | None = None,
) -> Verdict:
    """Whether ``incident`` (with the Runs it owns) is past its TTL and may be deleted.

    ``primary``: for a Duplicate, the Incident it names as it was read (None: it is gone).
    """
    phase = (incident.get("status") or {}).get("phase")
    if phase == IncidentPhase.DUPLICATE:
        return _judge_duplicate(incident, primary, ttl=ttl, now=now)
    if phase not in FINISHED_PHASES:
        return Verdict(Hold.ACTIVE)
    finished = finished_at(incident)
    if finished is None:
        return Verdict(Hold.NO_FINISH_TIME)
    if now < finished + ttl:
        return Verdict(Hold.TTL_NOT_PASSED, finished)
    if not all(_run_finished(run) for run in runs):
        return Verdict(Hold.RUN_NOT_FINISHED, finished)
    if alert_may_be_resent(incident):
        return Verdict(Hold.ALERT_STILL_FIRING, finished)
    return Verdict(None, finished)


def _judge_duplicate(
    incident: Mapping[str, Any], primary: Mapping[str, Any] | None, *, ttl: timedelta, now: datetime
) -> Verdict:
    if primary_of(incident) is None:
        return Verdict(Hold.NO_PRIMARY)
    finished = None
    if primary is not None:
        finished = finished_at(primary)
        if finished is None or now < finished + ttl:
            return Verdict(Hold.PRIMARY_NOT_EXPIRED, finished)
    if alert_may_be_resent(incident):
        return Verdict(Hold.ALERT_STILL_FIRING, finished)
    return Verdict(None, finished)


def owned_by(body: Mapping[str, Any], owner_uids: Iterable[str]) -> bool:
    """Whether one of ``body``'s ownerReferences names one of ``owner_uids``."""
    wanted = set(owner_uids)
    references = (body.get("metadata") or {}).get("ownerReferences") or []
    return any(reference.get("uid") in wanted for reference in references)


__all__ = [
    "FINISHED_PHASES", "Hold", "Verdict", "alert_may_be_resent", "finished_at", "judge", "owned_by", "primary_of",
]
