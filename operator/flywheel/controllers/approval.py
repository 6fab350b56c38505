"""The approval gate: the Approval a waiting Run asks for, the decision on it, and the token.

The Run controller stays the only writer of a Run's status; this gate tells it what the
Approval says (:meth:`ApprovalGate.review`) and checks the token right before the action
(:meth:`ApprovalGate.authorise`). The Approval's own status is written here, always before
the Run moves on: a pass killed in between finds the Approval decided and finishes the
move, instead of marking the Approval Invalid for a Run that is no longer waiting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from flywheel.api.approval import MAX_PREVIOUS_OUTCOMES
from flywheel.api.bodies import ApprovalBody, approval_body
from flywheel.api.common import Action, Condition, ObjectRef, new_condition, set_condition
from flywheel.api.enums import ApprovalPhase, ConditionStatus
from flywheel.api.incident import IncidentStatus
from flywheel.api.times import format_time, parse_optional_time
from flywheel.domain.approval import (
    APPROVE,
    CREATED_BY,
    DECIDED_BY,
    DECIDED_GROUPS,
    INCIDENT_CREATED_BY,
    ApprovalGrant,
    ApproverPolicy,
    Refusal,
    Requester,
    StampedDecision,
    TokenRefused,
    decision_refusal,
    issue_token,
    late_decision_refusal,
    new_grant,
    next_grant,
    stamp_decision,
    stamp_incident_authors,
    verify_decision_stamp,
    verify_incident_authors,
    verify_token,
)
from flywheel.domain.escalation import ActionStats
from flywheel.domain.legacy_actions import current_action_stats
from flywheel.domain.names import label_value
from flywheel.domain.notifications import Notification, NotificationKind, Notifier
from flywheel.domain.run_state import RunErrorCode
from flywheel.errors import RedisRefusedError, RedisUnavailableError
from flywheel.logs import get_logger
from flywheel.stores.history import AuditEvent, HistoryKind
from flywheel.stores.kube import API_VERSION

log = get_logger(__name__)

DECIDED = "Decided"  # the Approval's condition: True once Approved or Rejected
LABEL_RUN = "flywheel.dev/run"
APPROVALS = "approvals"  # the plural of the resource
# A spent token id is remembered at least this long after the token expired.
SPENT_TOKEN_MEMORY = timedelta(days=1)


class GateState(StrEnum):
    WAITING = "Waiting"
    APPROVED = "Approved"
    REJECTED = "Rejected"
    EXPIRED = "Expired"


@dataclass
class GateVerdict:
    """What the Approval means for its Run in this pass."""

    state: GateState
    approval_ref: ObjectRef | None
    message: str
    decider: str | None = None
    token_id: str | None = None  # the id of the token issued for the first attempt (kept by the ledger)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


@dataclass(frozen=True)
class GateRun:
    """The parts of a Run the gate needs (kept apart from the Run controller's own view)."""

    name: str
    namespace: str
    uid: str
    labels: Mapping[str, str]
    incident_name: str
    action: Action
    risk_level: str
    approval_ref: ObjectRef | None
    approval_token_id: str | None
    tenant: str
    # The Run's own deadline for a decision; the Approval's expiresAt is never later.
    deadline: datetime | None = None


class FlywheelObjects(Protocol):
    """Flywheel's custom resources (``flywheel.stores.kube.FlywheelResources``)."""

    async def create_or_find(
        self, plural: str, namespace: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]: ...
    async def find(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def write_status(
        self, plural: str, body: Mapping[str, Any], status: Mapping[str, Any]
    ) -> dict[str, Any]: ...


class IncidentReader(Protocol):
    async def get(self, namespace: str, name: str) -> dict[str, Any] | None: ...


class SigningKey(Protocol):
    async def key(self) -> bytes: ...


class SpentTokens(Protocol):
    """Issued tokens by id, and spent ids (``flywheel.stores.approvals.TokenLedger``)."""

    async def spend(self, token_id: str, run_uid: str, keep_for: timedelta) -> bool: ...
    async def keep(self, token_id: str, token: str, keep_for: timedelta) -> None: ...
    async def fetch(self, token_id: str) -> str | None: ...


class ActionHistory(Protocol):
    async def action_stats(self, tenant: str, key: str) -> dict[str, ActionStats]: ...


class AuditSink(Protocol):
    def submit(self, kind: HistoryKind, payload: AuditEvent) -> None: ...


def action_json(action: Action | Mapping[str, Any]) -> dict[str, Any]:
    """An action in its canonical JSON form, whether read from a Run or from an Approval."""
    model = action if isinstance(action, Action) else Action.model_validate(action)
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _controlled_by(body: Mapping[str, Any], uid: str) -> bool:
    references = (body.get("metadata") or {}).get("ownerReferences") or []
    return any(reference.get("uid") == uid and reference.get("controller") for reference in references)


@dataclass(frozen=True)
class _Approval:
    """An Approval as the gate reads it."""

    name: str
    namespace: str
    uid: str
    run_name: str
    run_uid: str | None
    phase: ApprovalPhase | None
    decision: str | None
    reason: str | None
    expires_at: datetime
    action: Mapping[str, Any]
    annotations: Mapping[str, str]
    status: Mapping[str, Any]
    body: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: ApprovalBody) -> _Approval:
        meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
        phase = status.get("phase")
        expires_at = parse_optional_time(spec.get("expiresAt"))
        assert expires_at is not None  # required by the CRD schema
        run_ref = spec.get("runRef") or {}
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            run_name=str(run_ref.get("name") or ""),
            run_uid=run_ref.get("uid"),
            phase=ApprovalPhase(phase) if phase else None,
            decision=spec.get("decision"),
            reason=spec.get("reason"),
            expires_at=expires_at,
            action=spec.get("action") or {},
            annotations=dict(meta.get("annotations") or {}),
            status=dict(status),
            body=body,
        )

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(name=self.name, uid=self.uid)

    def decider(self) -> Requester | None:
        username = self.annotations.get(DECIDED_BY)
        if not username:
            return None
        try:
            groups = tuple(json.loads(self.annotations.get(DECIDED_GROUPS) or "[]"))
        except ValueError:
            groups = ()
        return Requester(username=username, groups=groups)


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    """The settings the gate reads (built by ``flywheel.wiring.approval_settings``)."""

    approvers: ApproverPolicy
    decisions_stamped: bool
    """Admission webhooks are on: the API server's identity of a decider can be stamped.
    Without them every decision is refused."""
    token_ttl: timedelta
    approval_timeout: timedelta


class ApprovalGate:
    def __init__(
        self,
        settings: ApprovalSettings,
        resources: FlywheelObjects,
        incidents: IncidentReader,
        signing_key: SigningKey,
        spent_tokens: SpentTokens,
        action_history: ActionHistory,
        audit: AuditSink | None,
        notifier: Notifier | None = None,
    ) -> None:
        self._settings = settings
        self._resources = resources
        self._incidents = incidents
        self._signing_key = signing_key
        self._spent = spent_tokens
        self._history = action_history
        self._audit = audit
        self._policy = settings.approvers
        self._notifier = notifier
        # The user Flywheel authenticates as (set at start-up with the webhooks): never an approver.
        self.operator_identity: str | None = None

    @property
    def signing_key(self) -> SigningKey:
        """The signing key's store, shared with the Run binder (its seals derive their own keys)."""
        return self._signing_key

    # -- the waiting Run ------------------------------------------------------------------

    async def review(self, run: GateRun, indexed: Mapping[str, Any] | None, now: datetime) -> GateVerdict:
        """Make sure the Run's Approval exists and say what it decides (or that it is still open)."""
        verdict_events: list[tuple[str, str, str]] = []
        body = indexed
        if body is None or (run.approval_ref is not None and body["metadata"].get("uid") != run.approval_ref.uid):
            body = await self._resources.find(APPROVALS, run.namespace, run.name)
        if body is None:
            proposal = await self._proposal(run, now)
            body, created = await self._resources.create_or_find(APPROVALS, run.namespace, proposal)
            if created:
                approval = _Approval.from_body(approval_body(body))
                body = await self._write(approval, ApprovalPhase.PENDING, "waiting for a decision", now)
                message = (
                    f"Approval {approval.name} asks to approve {run.action.type.value} "
                    f"{run.action.target.kind.value}/{run.action.target.name} (risk {run.risk_level}) "
                    f"before {format_time(approval.expires_at)}"
                )
                verdict_events.append(("Normal", "ApprovalRequested", message))
                self._record(approval, "approval.requested", message, now, outcome=ApprovalPhase.PENDING.value)
                self._announce(run, approval, message, now)
        approval = _Approval.from_body(approval_body(body))
        if not _controlled_by(body, run.uid) or approval.run_uid != run.uid:
            # Not one Flywheel made for this Run (the admission webhook lets only Flywheel
            # create Approvals; without it, this keeps a planted one from being adopted).
            message = (
                f"an Approval named {approval.name} exists but was not created by Flywheel for this Run; "
                "delete it and a new one is created"
            )
            return GateVerdict(GateState.WAITING, None, message, events=verdict_events)
        verdict = await self._decide(run, approval, now)
        verdict.events[:0] = verdict_events
        return verdict

    async def _decide(self, run: GateRun, approval: _Approval, now: datetime) -> GateVerdict:
        """What the evidence says: ``spec.decision`` with the seal our webhook wrote, the policy, the deadline.

        The Approval's status is only what this gate wrote from that evidence: a status
        written by anyone else is ignored, reported and overwritten, never believed.
        """
        if approval.decision is None:
            if now >= approval.expires_at:
                return await self._expired(approval, f"no decision before {format_time(approval.expires_at)}", now)
            if approval.phase in (ApprovalPhase.APPROVED, ApprovalPhase.REJECTED, ApprovalPhase.EXPIRED):
                message = (
                    f"status.phase {approval.phase.value} was not written by Flywheel: spec.decision is not set, "
                    "so nothing was decided; ignored, the Run keeps waiting for a decision"
                )
                return await self._refused(approval, message, now, actor=None)
            if approval.phase is ApprovalPhase.INVALID:
                message = (
                    f"Approval {approval.name} is Invalid ({approval.status.get('message')}); the Run waits for a "
                    f"valid decision until {format_time(approval.expires_at)}"
                )
            else:
                message = f"waiting for a decision on Approval {approval.name} until {format_time(approval.expires_at)}"
            return GateVerdict(GateState.WAITING, approval.ref, message)
        evidence = await self._evidence(run, approval)
        if isinstance(evidence, Refusal):
            if evidence.rule == "approval-expired":
                return await self._expired(approval, str(evidence), now)
            # No actor: the identity on a refused decision may be the forgery itself.
            verdict = await self._refused(approval, f"decision refused: {evidence}", now, actor=None)
            if now >= approval.expires_at:
                return await self._expired(approval, f"no valid decision before {format_time(approval.expires_at)}", now)
            return verdict
        return await self._decided(run, approval, evidence, now)

    async def _evidence(self, run: GateRun, approval: _Approval) -> StampedDecision | Refusal:
        """The decision, verified: sealed by our webhook for this Approval, in time, by an allowed second person."""
        if not self._settings.decisions_stamped:
            return Refusal(
                "webhooks-off",
                "FLYWHEEL_WEBHOOK_MODE is off: no identity can be stamped by the API server, so approvals are refused",
            )
        key = await self._signing_key.key()
        stamped = verify_decision_stamp(approval.body, key)
        if isinstance(stamped, Refusal):
            return stamped
        late = late_decision_refusal(stamped.decided_at, approval.expires_at)
        if late is not None:
            return late
        authors = await self.incident_authors(run.namespace, run.incident_name, key)
        refusal = decision_refusal(
            stamped.decision,
            stamped.decider,
            self._policy,
            None if isinstance(authors, Refusal) else authors,
            self.operator_identity,
        )
        if refusal is not None and refusal.rule == "four-eyes" and isinstance(authors, Refusal):
            return authors
        return refusal or stamped

    async def incident_authors(self, namespace: str, incident_name: str, key: bytes) -> tuple[str, ...] | Refusal:
        """Who created or changed the Incident's spec, as our webhook sealed it (a Refusal when unknown)."""
        incident = await self._incidents.get(namespace, incident_name)
        if incident is None:
            return Refusal("four-eyes", f"Incident {incident_name} not found: its authors cannot be verified")
        authors = verify_incident_authors(incident, key)
        if isinstance(authors, Refusal):
            return authors
        creator = (incident.get("metadata") or {}).get("annotations", {}).get(CREATED_BY)
        return (*authors, creator) if creator and creator not in authors else authors

    async def _decided(
        self, run: GateRun, approval: _Approval, stamped: StampedDecision, now: datetime
    ) -> GateVerdict:
        decider = stamped.decider
        approved = stamped.decision == APPROVE
        phase = ApprovalPhase.APPROVED if approved else ApprovalPhase.REJECTED
        word = "approved" if approved else "rejected"
        message = self._decided_message(word, decider.username, approval.reason)
        verdict = GateVerdict(
            GateState.APPROVED if approved else GateState.REJECTED, approval.ref, message, decider=decider.username
        )
        if approved:
            # Kept before the Approval says Approved: when Redis cannot keep it, nothing is half
            # done (no Approved phase, audit record or Event without a token) and the next pass
            # repeats the whole decision.
            verdict.token_id = await self._token(run, approval, decider.username, now)
        if (approval.phase, approval.status.get("decidedBy"), approval.status.get("message")) != (
            phase, decider.username, message
        ):
            await self._write(approval, phase, message, now, decider=decider, decided_at=stamped.decided_at)
            self._record(approval, "approval.decided", message, now, outcome=phase.value, actor=decider.username)
            verdict.events.append(("Normal", "Approved" if approved else "Rejected", f"Approval {approval.name}: {message}"))
        return verdict

    async def _refused(self, approval: _Approval, message: str, now: datetime, actor: str | None) -> GateVerdict:
        """The Approval is Invalid for ``message`` (written and reported once); the Run keeps waiting."""
        events: list[tuple[str, str, str]] = []
        if (approval.phase, approval.status.get("message")) != (ApprovalPhase.INVALID, message):
            await self._write(approval, ApprovalPhase.INVALID, message, now)
            self._record(approval, "approval.invalid", message, now, outcome=ApprovalPhase.INVALID.value, actor=actor)
            events.append(("Warning", "ApprovalRefused", f"Approval {approval.name}: {message}"))
        return GateVerdict(
            GateState.WAITING, approval.ref, f"Approval {approval.name} is Invalid: {message}", events=events
        )

    async def _expired(self, approval: _Approval, why: str, now: datetime) -> GateVerdict:
        """The Approval's deadline passed: Expired (unless already Invalid), and the Run times out."""
        message = f"Approval {approval.name} expired: {why}"
        if approval.phase is not ApprovalPhase.INVALID and (
            approval.phase, approval.status.get("message")
        ) != (ApprovalPhase.EXPIRED, why):
            await self._write(approval, ApprovalPhase.EXPIRED, why, now)
        self._record(approval, "approval.expired", message, now, outcome=ApprovalPhase.EXPIRED.value)
        # Nobody decided in time: the disposition the seeds call timeout_ignored, on record once per Approval.
        self._record(approval, "disposition.timeout_ignored", f"{message}: nobody decided in time", now,
                     outcome="timeout_ignored")
        return GateVerdict(
            GateState.EXPIRED, approval.ref, message, events=[("Warning", "ApprovalExpired", message)]
        )

    @staticmethod
    def _decided_message(word: str, decider: str, reason: str | None) -> str:
        return f"{word} by {decider}" + (f": {reason}" if reason else "")

    async def _token(self, run: GateRun, approval: _Approval, decider: str, now: datetime) -> str:
        """Issue the token of the first attempt and keep it; its id, for the Run's status."""
        grant = new_grant(
            run_uid=run.uid,
            approval_uid=approval.uid,
            approver=decider,
            # The action the approver saw, not the Run's current one: an edit in between is caught.
            action=action_json(approval.action),
            now=now,
            ttl=self._settings.token_ttl,
        )
        return await self._keep(grant, now)

    async def _keep(self, grant: ApprovalGrant, now: datetime) -> str:
        token = issue_token(grant, await self._signing_key.key())
        await self._spent.keep(grant.token_id, token, grant.expires_at - now + SPENT_TOKEN_MEMORY)
        return grant.token_id

    async def _grant(self, run: GateRun, attempt: int, now: datetime) -> ApprovalGrant:
        """The verified grant the Run's status refers to, for ``attempt``; :class:`TokenRefused` if none."""
        token_id = run.approval_token_id
        token = await self._spent.fetch(token_id) if token_id else None
        if token is None:
            raise TokenRefused(
                RunErrorCode.APPROVAL_TOKEN_INVALID,
                "the Run requires approval but no approval token was issued for it by Flywheel"
                + (f" under id {token_id}" if token_id else "")
                + f" (attempt {attempt})",
            )
        return verify_token(
            token, await self._signing_key.key(), run_uid=run.uid, action=action_json(run.action), now=now,
            attempt=attempt,
        )

    # -- admission: the webhooks run in this process and seal with the same key -----------

    async def stamp_decision(
        self, old: Mapping[str, Any] | None, body: Mapping[str, Any], requester: Requester, now: datetime
    ) -> dict[str, str]:
        """The annotations the mutating webhook writes on an Approval this request decides."""
        return stamp_decision(old, body, requester, now, await self._signing_key.key())

    async def stamp_incident_authors(
        self, operation: str, old: Mapping[str, Any] | None, body: Mapping[str, Any], requester: Requester
    ) -> dict[str, str]:
        """The annotations the mutating webhook writes on an Incident created or changed by ``requester``."""
        return stamp_incident_authors(operation, old, body, requester, await self._signing_key.key())

    async def authors_behind(self, approval: Mapping[str, Any]) -> tuple[str, ...] | None:
        """The verified authors of the Incident whose Run the Approval is for; None when unknown.

        For the validating webhook's early answer; the gate checks again before it acts.
        """
        namespace = str((approval.get("metadata") or {}).get("namespace") or "")
        run_ref = (approval.get("spec") or {}).get("runRef") or {}
        run = await self._resources.find("runs", namespace, str(run_ref.get("name") or ""))
        if run is None or run["metadata"].get("uid") != run_ref.get("uid"):
            return None
        incident_name = str(((run.get("spec") or {}).get("incidentRef") or {}).get("name") or "")
        authors = await self.incident_authors(namespace, incident_name, await self._signing_key.key())
        return None if isinstance(authors, Refusal) else authors

    # -- the executor ---------------------------------------------------------------------

    async def authorise(self, run: GateRun, attempt: int, now: datetime) -> None:
        """Raise :class:`TokenRefused` unless the token the Run refers to allows ``attempt`` of its
        current action now; spends it for that attempt.

        Spending is idempotent for the same Run and attempt (a pass retried after a crash); the
        token of one attempt never lets another act, nor another Run.
        """
        try:
            grant = await self._grant(run, attempt, now)
            keep_for = grant.expires_at - now + SPENT_TOKEN_MEMORY
            if not await self._spent.spend(grant.token_id, f"{run.uid}:{attempt}", keep_for):
                raise TokenRefused(
                    RunErrorCode.APPROVAL_REPLAYED, "the approval token was already spent by another Run or attempt"
                )
        except TokenRefused as refused:
            self._token_refused(run, refused, now)
            raise

    async def renew(self, run: GateRun, attempt: int, now: datetime) -> str:
        """The id of a new token for ``attempt + 1``, issued from the one ``attempt`` spent.

        Called by the executor itself when it decides to retry; the new token keeps the
        approval's expiry. :class:`TokenRefused` when the current one is not this Run's own.
        """
        try:
            grant = await self._grant(run, attempt, now)
            return await self._keep(next_grant(grant), now)
        except TokenRefused as refused:
            self._token_refused(run, refused, now)
            raise

    def _token_refused(self, run: GateRun, refused: TokenRefused, now: datetime) -> None:
        self._audit_event(
            AuditEvent(
                event_id=f"{run.uid}:approval-token-refused",
                kind="approval.token-refused",
                occurred_at=now,
                summary=str(refused),
                namespace=run.namespace,
                run_uid=run.uid,
                outcome=refused.code.value,
            )
        )

    async def withdraw(self, run: GateRun, why: str, now: datetime) -> None:
        """The Run ended without a decision: its open Approval becomes Invalid."""
        if run.approval_ref is None:
            return
        body = await self._resources.find(APPROVALS, run.namespace, run.approval_ref.name)
        if body is None or body["metadata"].get("uid") != run.approval_ref.uid:
            return
        approval = _Approval.from_body(approval_body(body))
        if approval.phase in (None, ApprovalPhase.PENDING):
            message = f"the Run ended before a decision: {why}"
            await self._write(approval, ApprovalPhase.INVALID, message, now)
            self._record(approval, "approval.invalid", message, now, outcome=ApprovalPhase.INVALID.value)

    async def check_target(self, body: Mapping[str, Any], run: Mapping[str, Any] | None, now: datetime) -> str | None:
        """A decided Approval whose Run cannot take the decision becomes Invalid; the reason, or None.

        The waiting Run itself takes decisions (:meth:`review`); this covers the rest: the Run
        is gone (the API's 404), or it is not waiting for this Approval (the API's 409).
        """
        approval = _Approval.from_body(approval_body(body))
        if approval.decision is None or approval.phase not in (None, ApprovalPhase.PENDING):
            return None
        run_name = approval.run_name
        if run is None or run["metadata"].get("uid") != approval.run_uid:
            message = f"Run {run_name} not found (uid {approval.run_uid})"
        else:
            state = (run.get("status") or {}).get("state") or "Pending"
            waits_for = ((run.get("status") or {}).get("approvalRef") or {}).get("uid")
            if state == "WaitingApproval" and waits_for in (None, approval.uid):
                return None
            if state == "WaitingApproval":
                message = f"Run {run_name} waits for another Approval (uid {waits_for})"
            else:
                message = f"Run {run_name} is {state}, not waiting for approval"
        await self._write(approval, ApprovalPhase.INVALID, message, now)
        decider = approval.decider()
        self._record(approval, "approval.invalid", message, now, outcome=ApprovalPhase.INVALID.value,
                     actor=decider.username if decider else None)
        return message

    # -- helpers --------------------------------------------------------------------------

    def _announce(self, run: GateRun, approval: _Approval, message: str, now: datetime) -> None:
        """Approval requested, with the command that approves and the deadline (never waits for delivery)."""
        if self._notifier is None:
            return
        command = f"kubectl flywheel approve {approval.name} -n {approval.namespace} --reason '<why>'"
        self._notifier.submit(Notification(
            kind=NotificationKind.APPROVAL_REQUESTED.value,
            reason="ApprovalRequested",
            title=f"Flywheel: Approval {approval.namespace}/{approval.name} waits for a decision",
            message=f"{message}. Approve: {command}",
            scope=approval.namespace,
            occurred_at=now,
            details={
                "namespace": approval.namespace, "approval": approval.name, "run": run.name, "runUid": run.uid,
                "incident": run.incident_name, "action": run.action.type.value,
                "target": f"{run.action.target.kind.value}/{run.action.target.name}", "riskLevel": run.risk_level,
                "expiresAt": format_time(approval.expires_at), "approveCommand": command,
                "rejectCommand": f"kubectl flywheel reject {approval.name} -n {approval.namespace} --reason '<why>'",
            },
            dedup_key=f"{NotificationKind.APPROVAL_REQUESTED.value}/{approval.uid}",
        ))

    async def _proposal(self, run: GateRun, now: datetime) -> dict[str, Any]:
        incident = await self._incidents.get(run.namespace, run.incident_name) or {}
        status = IncidentStatus.model_validate(incident.get("status") or {})
        annotations = (incident.get("metadata") or {}).get("annotations") or {}
        spec: dict[str, Any] = {
            "runRef": {"name": run.name, "uid": run.uid},
            "action": action_json(run.action),
            "riskLevel": run.risk_level,
            "expiresAt": format_time(self._expiry(run, now)),
        }
        if status.decision is not None and status.decision.reasoning:
            spec["reasoning"] = status.decision.reasoning
        anomaly = status.anomaly
        if anomaly is not None:
            if anomaly.escalation_level is not None:
                spec["escalationLevel"] = anomaly.escalation_level.value
            spec["anomaly"] = {"key": anomaly.key, "count24h": anomaly.count_24h, "count7d": anomaly.count_7d}
            spec["previousOutcomes"] = await self._previous_outcomes(run.tenant, anomaly.key)
        metadata: dict[str, Any] = {
            "name": run.name,
            "namespace": run.namespace,
            "labels": {
                **{k: v for k, v in run.labels.items() if k.startswith("flywheel.dev/")},
                LABEL_RUN: label_value(run.name),
            },
            "ownerReferences": [
                {"apiVersion": API_VERSION, "kind": "Run", "name": run.name, "uid": run.uid, "controller": True}
            ],
        }
        if annotations.get(CREATED_BY):
            metadata["annotations"] = {INCIDENT_CREATED_BY: annotations[CREATED_BY]}
        return {"apiVersion": API_VERSION, "kind": "Approval", "metadata": metadata, "spec": spec}

    def _expiry(self, run: GateRun, now: datetime) -> datetime:
        """The Approval's expiresAt: the Run's own deadline (an Approval made again cannot extend it)."""
        fresh = now + self._settings.approval_timeout
        return min(fresh, run.deadline) if run.deadline is not None else fresh

    async def _previous_outcomes(self, tenant: str, key: str) -> list[dict[str, Any]]:
        try:
            stats = await self._history.action_stats(tenant, key)
        except (RedisUnavailableError, RedisRefusedError) as exc:
            # The proposal is still useful without them; the approver sees the counts missing.
            log.warning("approval_previous_outcomes_unavailable", anomaly_key=key, error=str(exc))
            return []
        # Older systems' action names (restart_pod) as today's; the rest left out: the enum refuses them.
        return [
            {"action": action.value, "attempts": outcome.attempts, "successes": outcome.successes}
            for action, outcome in sorted(current_action_stats(stats).items())
            if outcome.attempts > 0
        ][:MAX_PREVIOUS_OUTCOMES]

    async def _write(
        self,
        approval: _Approval,
        phase: ApprovalPhase,
        message: str,
        now: datetime,
        decider: Requester | None = None,
        decided_at: datetime | None = None,
    ) -> dict[str, Any]:
        conditions = [Condition.model_validate(c) for c in approval.status.get("conditions") or []]
        decided = phase in (ApprovalPhase.APPROVED, ApprovalPhase.REJECTED)
        conditions = set_condition(
            conditions,
            new_condition(
                DECIDED,
                ConditionStatus.TRUE if decided else ConditionStatus.FALSE,
                phase.value,
                message[:1024],
                now=now,
            ),
        )
        status: dict[str, Any] = {
            "phase": phase.value,
            "message": message[:4096],
            "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions],
        }
        if decider is not None:
            status.update(
                decidedBy=decider.username, decidedGroups=list(decider.groups)[:64], decidedAt=format_time(decided_at or now)
            )
        else:
            # A decider written by anyone else does not stay on record next to our verdict.
            status.update(decidedBy=None, decidedGroups=None, decidedAt=None)
        log.info("approval_status", approval=approval.name, namespace=approval.namespace, run=approval.run_name,
                 phase=phase.value,
                 message=message)
        # Computed from the Approval as read: refused (409) if it changed since, never put back over it.
        return await self._resources.write_status(APPROVALS, approval.body, status)

    def _record(
        self,
        approval: _Approval,
        kind: str,
        summary: str,
        now: datetime,
        *,
        outcome: str,
        actor: str | None = None,
    ) -> None:
        self._audit_event(
            AuditEvent(
                event_id=f"{approval.uid}:{kind}",
                kind=kind,
                occurred_at=now,
                summary=summary,
                payload={"approval": approval.name, "run": approval.run_name, "decision": approval.decision,
                         "reason": approval.reason},
                namespace=approval.namespace,
                run_uid=approval.run_uid,
                actor=actor,
                outcome=outcome,
            )
        )

    def _audit_event(self, event: AuditEvent) -> None:
        # The outbox stores it later if the database is down; a decision never waits for it.
        if self._audit is not None:
            self._audit.submit(HistoryKind.AUDIT_EVENT, event)


__all__ = ["DECIDED", "ApprovalGate", "GateRun", "GateState", "GateVerdict", "action_json"]
