"""Reconciling one Incident: record the anomaly, deduplicate, decide, start a Run.

Level-triggered: every step first looks at what the status already says, so the
reconcile can run any number of times (Kopf retries, operator restarts) and each
side effect happens once — recording is idempotent per occurrence in Redis (the Incident
uid, and one id per further firing episode appended to it), the
Run has a deterministic name, and dispositions carry their own idempotency ids.

(Over 500 lines: the outcome with the Event merging, the store Protocols and the reconcile
steps are still one module; they split like ``controllers/run/`` when the next Incident
feature lands. The parsed Incident and its index view are ``flywheel.domain.incident``.)
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from flywheel.api.common import Action, ObjectRef, find_condition, new_condition, set_condition
from flywheel.api.enums import (
    ActionType,
    ConditionStatus,
    DecisionState,
    Disposition,
    EscalationLevel,
    IncidentPhase,
    RiskLevel,
)
from flywheel.api.incident import AnomalyStatus, Decision, IncidentStatus
from flywheel.api.names import (
    ACTIVE_PHASES,
    ANOMALY_EVENT_REASON,
    ANOMALY_RECORDED,
    APPROVAL_REASONS,
    DECIDED,
    DECISION_EVENT_REASON,
    DEDUPLICATED,
    EVENT_MESSAGE_LIMIT,
    FINAL_PHASES,
    LABEL_ANOMALY_KEY,
    LABEL_INCIDENT,
    REMEDIATION_STARTED,
    RESOLVED,
    RUN_CREATED_EVENT_REASON,
    Event,
)
from flywheel.controllers.run_binding import RunBinder
from flywheel.domain.actions import ACTIONS_BY_KIND, IncidentTarget
from flywheel.domain.advisor import AdvisorResult, IncidentFacts, advisors_to_consult, build_messages
from flywheel.domain.decision import (
    NEEDS_PERMANENT_FIX_WARNING,
    DecisionInput,
    DecisionOutcome,
    decide,
    decision_id,
)
from flywheel.domain.decision_state import check_decision_transition
from flywheel.domain.escalation import (
    ActionStats,
    AnomalySnapshot,
    Occurrence,
    escalation_rose,
    incident_occurrences,
)
from flywheel.domain.funnel import ObjectSample
from flywheel.domain.incident import IncidentObject, IncidentView
from flywheel.domain.ladder import LadderExhausted, LadderPolicy, next_rung, rung_requires_approval
from flywheel.domain.names import label_value, suffixed_name
from flywheel.domain.notifications import Notification, NotificationKind, Notifier
from flywheel.domain.rules import CatalogueSource
from flywheel.errors import KubernetesApiError, NotFoundError, RedisUnavailableError, StoreUnavailableError
from flywheel.logs import get_logger
from flywheel.stores.advisor_client import AdvisorEndpoint
from flywheel.stores.anomaly_redis import RecordedOccurrences
from flywheel.stores.claims import Holder, HolderIsActive
from flywheel.stores.kube import API_VERSION

log = get_logger(__name__)

# A Warning when a firing episode appended to a decided Incident raises the anomaly's level to
# one that changes what the next decision for it may do (SPEC §2 escalation policy).
ESCALATED_EVENT_REASON = "AnomalyEscalated"
ESCALATION_CONSEQUENCES: dict[EscalationLevel | None, str] = {
    EscalationLevel.ESCALATE: "the next Run for this anomaly requires approval",
    EscalationLevel.PERMANENT_FIX: (
        "the next decision for this anomaly takes no automatic action and requires approval "
        "unless a permanent fix is declared"
    ),
}

# The first decision of an Incident; later decisions (after a failed Run) count up.
FIRST_DECISION = 1
# The Warning Event of an Incident whose remediation ladder is exhausted.
LADDER_EXHAUSTED_EVENT_REASON = "LadderExhausted"
# The reason of Resolved=False the Run controller writes when a Run ended without remediating.
NOT_REMEDIATED_REASON = "NotRemediated"


@dataclass
class IncidentOutcome:
    """What one reconcile wants written: the new status and the Events to post."""

    status: IncidentStatus
    original: IncidentStatus | None = None
    events: list[Event] = field(default_factory=list)
    # Outcomes per action, when this pass's recording read them (the decision needs no second read).
    action_stats: dict[str, ActionStats] | None = None

    def status_patch(self) -> dict[str, Any]:
        """Only the top-level status fields this reconcile changed.

        The Run controller writes phase/decision/disposition when it resolves the Incident;
        re-sending fields we did not touch could put back an older value.
        """
        new = self.status.model_dump(by_alias=True, mode="json", exclude_none=False)
        if self.original is None:
            return new
        old = self.original.model_dump(by_alias=True, mode="json", exclude_none=False)
        return {key: value for key, value in new.items() if old.get(key) != value}

    def events_to_post(self) -> list[Event]:
        """The Events to post: the pass's routine Normal Events ride on its main one.

        Every Event is an API write, and in an alert storm writes are what the API server runs
        out of. The anomaly counts (also in ``status.anomaly``) and the Run's creation (also in
        ``status.runRef``) read as well in the DecisionReady Event of the same pass, or the counts
        at the head of the pass's next Normal Event (Duplicate, Resolved…). Warnings are never
        merged; the messages keep the order in which things happened.
        """
        decision = next((e for e in self.events if e.type == "Normal" and e.reason == DECISION_EVENT_REASON), None)
        riders = ANOMALY_EVENT_REASON, RUN_CREATED_EVENT_REASON
        if decision is not None:
            merged = [e for e in self.events if e.type == "Normal" and (e is decision or e.reason in riders)]
            message = "; ".join(e.message for e in merged)[:EVENT_MESSAGE_LIMIT]
            riding = {id(e) for e in merged if e is not decision}
            return [
                Event(e.type, e.reason, message) if e is decision else e for e in self.events if id(e) not in riding
            ]
        posted: list[Event] = []
        pending_counts: Event | None = None
        for event in self.events:
            if event.type == "Normal" and event.reason == ANOMALY_EVENT_REASON:
                pending_counts = event
                continue
            if pending_counts is not None and event.type == "Normal":
                message = f"{pending_counts.message}; {event.message}"  # in the order it happened
                event = Event(event.type, event.reason, message[:EVENT_MESSAGE_LIMIT])
                pending_counts = None
            posted.append(event)
        if pending_counts is not None:
            posted.append(pending_counts)  # nothing else to say this pass: the counts on their own
        return posted


def trace_id(incident_uid: str, sequence: int) -> str:
    """A W3C trace id (32 hex) that stays the same when the reconcile is retried."""
    return hashlib.sha256(f"{incident_uid}:{sequence}:trace".encode()).hexdigest()[:32]


def run_name(incident_name: str, sequence: int) -> str:
    return suffixed_name(incident_name, f"-{sequence}")



# --------------------------------------------------------------------------- seams


class AnomalyCounts(Protocol):
    """Recurrence counts and outcomes per anomaly (``flywheel.stores.anomaly_redis.AnomalyStore``)."""

    async def record_occurrences(
        self,
        tenant: str,
        key: str,
        signature: Mapping[str, str],
        occurrences: Sequence[Occurrence],
        now: datetime | None = None,
    ) -> RecordedOccurrences: ...

    async def mark_permanent_fix(
        self, tenant: str, key: str, description: str = "", at: datetime | None = None
    ) -> None: ...

    async def record_disposition(
        self, tenant: str, key: str, disposition: str, disposition_id: str, at: datetime | None = None
    ) -> bool: ...

    async def action_stats(self, tenant: str, key: str) -> dict[str, ActionStats]: ...


class FlywheelObjects(Protocol):
    """Reading and creating Flywheel's objects (``flywheel.stores.kube.FlywheelResources``)."""

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]: ...

    async def create_or_get(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...


class AnomalyClaimer(Protocol):
    """Who remediates an anomaly (``flywheel.stores.claims.AnomalyClaims``)."""

    async def claim(
        self, namespace: str, anomaly_key: str, claimant: Holder, is_active: HolderIsActive
    ) -> Holder | None: ...


class DecisionProgress(Protocol):
    """Writes the decision while the advisors are asked (state Analyzing), before the pass ends."""

    async def analyzing(self, namespace: str, name: str, decision: Decision, condition: dict[str, Any]) -> None: ...


class AdvisorAsker(Protocol):
    """Asking the model advisors (``flywheel.stores.advisor_client.AdvisorClient``)."""

    async def ask_all(
        self,
        advisors: Sequence[AdvisorEndpoint],
        messages: Sequence[dict[str, str]],
        *,
        expected_target: IncidentTarget,
        deadline: float,
        allowed_actions: Collection[ActionType] | None = None,
    ) -> list[AdvisorResult]: ...


@dataclass(frozen=True)
class AdvisorPanel:
    """The configured advisors and the client that asks them."""

    client: AdvisorAsker
    endpoints: list[AdvisorEndpoint]


@dataclass(frozen=True)
class IncidentPolicy:
    """The settings an Incident pass reads (``flywheel.wiring`` takes them from the configuration)."""

    tenant: str | None
    max_automatic_risk: RiskLevel
    advisor_timeout_seconds: float
    run_timeout_seconds: int
    run_max_attempts: int
    ladder: LadderPolicy = field(default_factory=LadderPolicy)
    # Written on each Run; a catalogue rule's own window wins (None: the Run controller's default).
    verification_window_seconds: int | None = None
    # Degraded anomaly counts (Redis down): approval before any automatic action.
    degraded_requires_approval: bool = True


@dataclass(frozen=True)
class IncidentStores:
    """What the Incident controller acts through, built once per operator."""

    anomalies: AnomalyCounts
    resources: FlywheelObjects
    claims: AnomalyClaimer
    catalogue: CatalogueSource
    advisors: AdvisorPanel | None = None
    # Decision ready, ladder exhausted: handed over without waiting (delivery is elsewhere).
    notifier: Notifier | None = None
    progress: DecisionProgress | None = None
    # Seals each Run to its decision (only the operator's own Runs act); None in unit tests.
    binder: RunBinder | None = None


# --------------------------------------------------------------------------- controller


class IncidentReconciler:
    def __init__(self, policy: IncidentPolicy, stores: IncidentStores) -> None:
        self._policy = policy
        self._stores = stores

    def tenant(self, namespace: str) -> str:
        return self._policy.tenant or namespace

    async def reconcile(
        self, incident: IncidentObject, peers: Iterable[IncidentView], now: datetime | None = None
    ) -> IncidentOutcome:
        now = now or datetime.now(UTC)
        status = incident.status.model_copy(deep=True)
        outcome = IncidentOutcome(status=status, original=incident.status)
        status.observed_generation = incident.generation

        if status.phase in FINAL_PHASES:
            # Resolved while Redis was down: count what could not be counted, once, now.
            if status.anomaly is not None and status.anomaly.degraded:
                await self._record_anomaly(incident, outcome, now)
                await self._apply_permanent_fix(incident, outcome, now)
                if status.disposition == Disposition.MANUAL_RESOLVED:
                    await self._count_manual_resolution(incident, outcome)
            return outcome

        await self._record_anomaly(incident, outcome, now)
        await self._apply_permanent_fix(incident, outcome, now)

        if incident.spec.resolution is not None:
            await self._resolve_manually(incident, outcome, now)
            return outcome
        if status.phase in (IncidentPhase.DUPLICATE, IncidentPhase.NOT_REMEDIATED):
            return outcome  # a Duplicate never starts a Run; NotRemediated waits for a person
        if status.run_ref is not None:
            if ladder_due(status):
                await self._climb_ladder(incident, outcome, now)
            return outcome

        primary = None if status.decision is not None else await self._claim(incident, peers)
        if primary is not None:
            status.phase = IncidentPhase.DUPLICATE
            status.duplicate_of = primary.name
            self._condition(outcome, incident, DEDUPLICATED, ConditionStatus.TRUE, "ActiveIncidentExists",
                            f"same anomaly as the active Incident {primary.name}; no second Run", now)
            outcome.events.append(Event("Normal", "Duplicate", f"duplicate of {primary.name} (anomaly {incident.anomaly_key})"))
            return outcome

        await self._decide_and_start(incident, outcome, now)
        return outcome

    # -- steps ------------------------------------------------------------------------

    async def _claim(self, incident: IncidentObject, peers: Iterable[IncidentView]) -> Holder | None:
        """The active Incident that already owns this anomaly's remediation, or None if we do now."""
        known = {peer.uid: peer for peer in peers}
        # An active twin already won the claim (an Incident only turns active after winning
        # it): the Lease would only say so again, at the price of two API calls in a storm.
        holding = next((peer for peer in known.values() if peer.uid != incident.uid and peer.active
                        and peer.phase is not None), None)
        if holding is not None:
            return Holder(holding.name, holding.uid)

        async def is_active(holder: Holder) -> bool:
            peer = known.get(holder.uid)
            if peer is not None:
                return peer.active
            # Not in Kopf's cache yet (a twin created the same instant): ask the API server.
            try:
                body = await self._stores.resources.get("incidents", incident.namespace, holder.name)
            except NotFoundError:
                return False
            return body["metadata"]["uid"] == holder.uid and (body.get("status") or {}).get("phase") in ACTIVE_PHASES

        return await self._stores.claims.claim(
            incident.namespace, incident.anomaly_key, Holder(incident.name, incident.uid), is_active
        )

    async def _record_anomaly(self, incident: IncidentObject, outcome: IncidentOutcome, now: datetime) -> None:
        """Count the Incident and each firing episode appended to it (idempotent per occurrence id).

        Recorded again whenever the spec changed since the last pass (the intake appends a new
        episode as a signal, which bumps the generation): what was counted before is not
        counted twice, a new episode is one more occurrence and re-evaluates the escalation.
        """
        status = outcome.status
        key = incident.anomaly_key
        previous = status.anomaly
        recorded_before = previous is not None and previous.key == key and not previous.degraded
        if recorded_before and incident.status.observed_generation == incident.generation:
            return
        signature = {
            "alert_name": incident.spec.alert_name or "",
            "service": incident.spec.service,
            "namespace": incident.namespace,
            "error_type": incident.spec.error_type or "",
        }
        occurrences = incident_occurrences(
            incident.uid, incident.created_at,
            ((signal.fingerprint, signal.starts_at) for signal in incident.spec.signals),
        )
        try:
            recorded = await self._stores.anomalies.record_occurrences(
                self.tenant(incident.namespace), key, signature, occurrences, now=now
            )
        except RedisUnavailableError as exc:
            log.warning("anomaly_not_recorded", reason="redis_unavailable", incident=incident.name, error=str(exc))
            status.anomaly = AnomalyStatus(
                key=key,
                degraded=True,
                **({} if previous is None or previous.key != key else previous.model_dump(exclude={"key", "degraded"})),
            )
            self._condition(outcome, incident, ANOMALY_RECORDED, ConditionStatus.FALSE, "RedisUnavailable",
                            f"recurrence counts will be recorded when Redis is back: {exc}", now)
            if previous is None or not previous.degraded:
                outcome.events.append(Event("Warning", "RedisUnavailable", "anomaly counts degraded; recording later"))
            return
        snapshot = recorded.snapshot
        status.anomaly = _anomaly_status(snapshot)
        outcome.action_stats = snapshot.action_stats
        level = snapshot.escalation_level.value if snapshot.escalation_level else "none"
        self._condition(outcome, incident, ANOMALY_RECORDED, ConditionStatus.TRUE, "Recorded",
                        f"anomaly {key}: {snapshot.count_24h} in 24h, escalation {level}", now)
        if recorded_before and not recorded.counted:
            return  # a spec change that brought no new episode: nothing new to say
        outcome.events.append(Event(
            "Normal", ANOMALY_EVENT_REASON,
            f"anomaly {key} seen {snapshot.count_1h}x/1h {snapshot.count_24h}x/24h "
            f"{snapshot.count_7d}x/7d {snapshot.count_30d}x/30d; escalation {level}",
        ))
        before = previous.escalation_level if previous is not None and previous.key == key else None
        if status.decision is not None and escalation_rose(before, snapshot.escalation_level):
            consequence = ESCALATION_CONSEQUENCES.get(snapshot.escalation_level)
            if consequence is not None:
                outcome.events.append(Event(
                    "Warning", ESCALATED_EVENT_REASON,
                    f"anomaly {key} reached {level} ({snapshot.count_24h}x in 24h) after this Incident was "
                    f"decided: {consequence}",
                ))

    async def _apply_permanent_fix(self, incident: IncidentObject, outcome: IncidentOutcome, now: datetime) -> None:
        anomaly = outcome.status.anomaly
        if incident.spec.permanent_fix is None or anomaly is None:
            return
        # Kept with the flag on every pass: the anomaly status is rebuilt from Redis each time.
        anomaly.permanent_fix_description = incident.spec.permanent_fix.description
        if anomaly.permanent_fix_applied:
            return
        try:
            await self._stores.anomalies.mark_permanent_fix(
                self.tenant(incident.namespace), anomaly.key, incident.spec.permanent_fix.description, now
            )
        except RedisUnavailableError:
            anomaly.degraded = True  # the degraded timer comes back for it
            return
        anomaly.permanent_fix_applied = True
        outcome.events.append(Event("Normal", "PermanentFixRecorded",
                                    f"permanent fix on record for anomaly {anomaly.key} (kept 90 days)"))

    async def _count_manual_resolution(self, incident: IncidentObject, outcome: IncidentOutcome) -> None:
        """Count the manual_resolved disposition (idempotent per Incident); degraded if Redis is down."""
        try:
            await self._stores.anomalies.record_disposition(
                self.tenant(incident.namespace), incident.anomaly_key, Disposition.MANUAL_RESOLVED.value,
                f"{incident.uid}:{Disposition.MANUAL_RESOLVED.value}",
            )
        except RedisUnavailableError:
            # The Incident is resolved all the same; the degraded timer counts it once Redis is back.
            if outcome.status.anomaly is not None:
                outcome.status.anomaly.degraded = True

    async def _resolve_manually(self, incident: IncidentObject, outcome: IncidentOutcome, now: datetime) -> None:
        status = outcome.status
        await self._count_manual_resolution(incident, outcome)
        status.phase = IncidentPhase.RESOLVED
        status.disposition = Disposition.MANUAL_RESOLVED
        status.resolved_at = status.resolved_at or now
        if status.decision is not None and check_decision_transition(
            status.decision.state, DecisionState.COMPLETED
        ).allowed:
            status.decision.state = DecisionState.COMPLETED
        resolution = incident.spec.resolution
        assert resolution is not None
        cause = f"; root cause: {resolution.root_cause}" if resolution.root_cause else ""
        self._condition(outcome, incident, RESOLVED, ConditionStatus.TRUE, "ManuallyResolved",
                        f"resolved by a person{cause}", now)
        outcome.events.append(Event("Normal", "Resolved", f"resolved manually{cause}"))

    async def _climb_ladder(self, incident: IncidentObject, outcome: IncidentOutcome, now: datetime) -> None:
        """The decision's Run failed or timed out: decide again, or say the ladder is exhausted."""
        status = outcome.status
        assert status.decision is not None
        rung = next_rung(status.decision.sequence or FIRST_DECISION, self._policy.ladder)
        if isinstance(rung, LadderExhausted):
            status.phase = IncidentPhase.NOT_REMEDIATED
            self._condition(outcome, incident, REMEDIATION_STARTED, ConditionStatus.FALSE,
                            LADDER_EXHAUSTED_EVENT_REASON, rung.message, now)
            outcome.events.append(Event("Warning", LADDER_EXHAUSTED_EVENT_REASON, rung.message))
            self._notify(incident, NotificationKind.LADDER_EXHAUSTED, LADDER_EXHAUSTED_EVENT_REASON,
                         f"Incident {incident.namespace}/{incident.name} not remediated", rung.message, now,
                         {"decisions": rung.decisions}, f"{NotificationKind.LADDER_EXHAUSTED.value}/{incident.uid}")
            return
        await self._decide_and_start(incident, outcome, now, sequence=rung.sequence,
                                     ladder_approval=rung.requires_approval)

    def _notify(self, incident: IncidentObject, kind: NotificationKind, reason: str, title: str, message: str,
                now: datetime, details: Mapping[str, Any], dedup_key: str) -> None:
        if self._stores.notifier is None:
            return
        self._stores.notifier.submit(Notification(
            kind=kind.value, reason=reason, title=title, message=message, scope=incident.namespace,
            occurred_at=now, subjects=(ObjectSample("Incident", incident.namespace, incident.name, incident.uid),),
            details=dict(details), dedup_key=dedup_key,
        ))

    async def _analyzing(self, incident: IncidentObject, outcome: IncidentOutcome, sequence: int, now: datetime) -> None:
        """Say Analyzing (written at once) while the advisors are asked; a failed write does not stop deciding."""
        progress = self._stores.progress
        if progress is None or self._stores.advisors is None:
            return
        if not advisors_to_consult(incident.spec.severity, self._stores.advisors.endpoints):
            return
        current = outcome.status.decision
        if current is not None and current.sequence == sequence and current.state is not DecisionState.INIT:
            return
        decision = Decision(id=decision_id(incident.uid, sequence), state=DecisionState.ANALYZING, sequence=sequence)
        condition = new_condition(DECIDED, ConditionStatus.UNKNOWN, "Analyzing", "asking the advisors", now=now,
                                  observed_generation=incident.generation)
        try:
            await progress.analyzing(incident.namespace, incident.name, decision,
                                     condition.model_dump(mode="json", by_alias=True, exclude_none=True))
        except (StoreUnavailableError, KubernetesApiError) as exc:
            log.warning("decision_analyzing_not_written", incident=incident.name, error=str(exc))

    async def _decide_and_start(
        self, incident: IncidentObject, outcome: IncidentOutcome, now: datetime,
        *, sequence: int = FIRST_DECISION, ladder_approval: bool = False,
    ) -> None:
        status = outcome.status
        await self._analyzing(incident, outcome, sequence, now)
        decision = await self._decide(incident, status.anomaly, outcome.action_stats)
        if rung_requires_approval(sequence, decision.requires_approval, self._policy.ladder) != decision.requires_approval:
            decision = dataclasses.replace(
                decision, requires_approval=True,
                approval_reasons=(*decision.approval_reasons, f"decision {sequence} of the Incident's ladder"),
            )
        status.decision = Decision(
            id=decision_id(incident.uid, sequence),
            state=DecisionState.READY,
            sequence=sequence,
            source=decision.source,
            action=Action.model_validate(decision.action.to_run_action()),
            risk_level=decision.risk,
            confidence=round(decision.confidence, 4),
            reasoning=decision.reasoning[:4096],
            matched_rule=decision.matched_rule,
            error=decision.error[:4096] if decision.error else None,
        )
        self._condition(outcome, incident, DECIDED, ConditionStatus.TRUE, "DecisionReady",
                        f"{decision.action.describe()} ({decision.source.value}, risk {decision.risk.value})", now)
        outcome.events.append(Event("Normal", DECISION_EVENT_REASON, f"{status.decision.id}: {decision.action.describe()}; {decision.reasoning}"[:1024]))
        self._notify(
            incident, NotificationKind.DECISION_READY, DECISION_EVENT_REASON,
            f"Decision {sequence} for Incident {incident.namespace}/{incident.name}",
            f"{decision.action.describe()} (risk {decision.risk.value}"
            f"{', requires approval' if decision.requires_approval else ''}): {decision.reasoning}"[:1024],
            now,
            {"decision": status.decision.id, "sequence": sequence, "action": decision.action.describe(),
             "requiresApproval": decision.requires_approval, "run": run_name(incident.name, sequence)},
            f"{NotificationKind.DECISION_READY.value}/{status.decision.id}",
        )
        for warning in decision.warnings:
            reason = "NeedsPermanentFix" if warning == NEEDS_PERMANENT_FIX_WARNING else "DecisionWarning"
            outcome.events.append(Event("Warning", reason, warning))

        if decision.run_mode is None:
            status.phase = IncidentPhase.INVESTIGATING
            self._condition(outcome, incident, REMEDIATION_STARTED, ConditionStatus.FALSE, "RemediationOff",
                            "remediation.mode is Off: Flywheel decides but does not act", now)
            return

        manifest = self._run_manifest(incident, decision, sequence)
        if self._stores.binder is not None:
            run = await self._stores.binder.create_bound(manifest, status.decision.id)
        else:
            run = await self._stores.resources.create_or_get("runs", incident.namespace, manifest)
        status.run_ref = ObjectRef(name=run["metadata"]["name"], uid=run["metadata"]["uid"])
        status.phase = IncidentPhase.MITIGATING
        waiting = " (waits for approval)" if decision.requires_approval else ""
        self._condition(outcome, incident, REMEDIATION_STARTED, ConditionStatus.TRUE, "RunCreated",
                        f"Run {run['metadata']['name']} created{waiting}", now)
        outcome.events.append(Event("Normal", RUN_CREATED_EVENT_REASON, f"Run {run['metadata']['name']} created{waiting}"))

    async def _decide(
        self, incident: IncidentObject, anomaly: AnomalyStatus | None, recorded_stats: dict[str, ActionStats] | None
    ) -> DecisionOutcome:
        stores, policy = self._stores, self._policy
        # One version for the whole decision, even if the catalogue is reloaded while advisors answer.
        catalogue = stores.catalogue.current()
        stats: dict[str, ActionStats] = {}
        if anomaly is not None and not anomaly.degraded:
            stats = recorded_stats if recorded_stats is not None else await self._action_stats(incident, anomaly.key)
        escalation = anomaly.escalation_level if anomaly is not None and not anomaly.degraded else None
        advisor_results: tuple[Any, ...] = ()
        consulted: list[Any] = []
        if stores.advisors is not None:
            consulted = advisors_to_consult(incident.spec.severity, stores.advisors.endpoints)
            facts = IncidentFacts(
                target=incident.target, severity=incident.spec.severity, alert_names=incident.alert_names,
                service=incident.spec.service, error_type=incident.spec.error_type, summary=incident.spec.summary,
                escalation_level=escalation, action_stats=stats, alerts=incident.alerts,
            )
            messages = build_messages(facts, catalogue)
            advisor_results = tuple(
                await stores.advisors.client.ask_all(
                    consulted,
                    messages,
                    expected_target=incident.target,
                    deadline=policy.advisor_timeout_seconds,
                    allowed_actions=catalogue.action_types & ACTIONS_BY_KIND[incident.target.kind],
                )
            )
        return decide(
            DecisionInput(
                alert_names=incident.alert_names,
                severity=incident.spec.severity,
                target=incident.target,
                remediation_mode=incident.spec.remediation.mode,
                escalation_level=escalation,
                permanent_fix_declared=incident.spec.permanent_fix is not None
                or bool(anomaly is not None and anomaly.permanent_fix_applied),
                action_stats=stats,
                advisor_results=advisor_results,
                advisors_asked=len(consulted) if consulted else None,
                alerts=incident.alerts,
                counts_degraded=anomaly is not None and anomaly.degraded,
                degraded_requires_approval=policy.degraded_requires_approval,
            ),
            catalogue,
            max_automatic_risk=policy.max_automatic_risk,
        )

    async def _action_stats(self, incident: IncidentObject, key: str) -> dict[str, ActionStats]:
        try:
            return await self._stores.anomalies.action_stats(self.tenant(incident.namespace), key)
        except RedisUnavailableError:
            return {}

    def _run_manifest(self, incident: IncidentObject, decision: DecisionOutcome, sequence: int) -> dict[str, Any]:
        policy = self._policy
        assert decision.run_mode is not None
        return {
            "apiVersion": API_VERSION,
            "kind": "Run",
            "metadata": {
                "name": run_name(incident.name, sequence),
                "namespace": incident.namespace,
                "labels": {LABEL_INCIDENT: label_value(incident.name), LABEL_ANOMALY_KEY: incident.anomaly_key},
                "annotations": {APPROVAL_REASONS: "; ".join(decision.approval_reasons)[:1024]}
                if decision.approval_reasons else {},
                "ownerReferences": [{
                    "apiVersion": API_VERSION, "kind": "Incident", "name": incident.name, "uid": incident.uid,
                    "controller": True, "blockOwnerDeletion": True,
                }],
            },
            "spec": {
                **self._window(decision),
                "incidentRef": {"name": incident.name, "uid": incident.uid},
                "action": decision.action.to_run_action(),
                "riskLevel": decision.risk.value,
                "requiresApproval": decision.requires_approval,
                "mode": decision.run_mode.value,
                "timeoutSeconds": policy.run_timeout_seconds,
                "maxAttempts": policy.run_max_attempts,
                "traceId": trace_id(incident.uid, sequence),
                "trigger": {"type": "Incident", "ref": incident.name},
            },
        }

    def _window(self, decision: DecisionOutcome) -> dict[str, int]:
        """spec.verificationWindowSeconds: the matched rule's own window, else the configured one."""
        rule = next((r for r in self._stores.catalogue.current().rules if r.name == decision.matched_rule), None)
        window = rule.verification_window_seconds if rule is not None else None
        window = window if window is not None else self._policy.verification_window_seconds
        return {} if window is None else {"verificationWindowSeconds": window}

    @staticmethod
    def _condition(outcome: IncidentOutcome, incident: IncidentObject, condition_type: str,
                   status: ConditionStatus, reason: str, message: str, now: datetime) -> None:
        outcome.status.conditions = set_condition(
            outcome.status.conditions,
            new_condition(condition_type, status, reason, message, now=now, observed_generation=incident.generation),
        )


def ladder_due(status: IncidentStatus) -> bool:
    """Its decision completed because the Run failed or timed out (SPEC §2: it gets a new decision)."""
    if status.phase is not IncidentPhase.MITIGATING or status.decision is None or status.run_ref is None:
        return False
    if status.decision.state is not DecisionState.COMPLETED:
        return False
    resolved = find_condition(status.conditions, RESOLVED)
    return resolved is not None and resolved.status is ConditionStatus.FALSE and resolved.reason == NOT_REMEDIATED_REASON


def _anomaly_status(snapshot: AnomalySnapshot) -> AnomalyStatus:
    return AnomalyStatus(
        key=snapshot.key,
        count_1h=snapshot.count_1h,
        count_24h=snapshot.count_24h,
        count_7d=snapshot.count_7d,
        count_30d=snapshot.count_30d,
        first_seen=snapshot.first_seen,
        last_seen=snapshot.last_seen,
        escalation_level=snapshot.escalation_level,
        auto_repair_count=snapshot.auto_repair_count,
        permanent_fix_applied=snapshot.permanent_fix_applied,
        degraded=False,
    )

