"""The decision: which action to take for an Incident, and whether a person must approve it.

Policy (SPEC §2), applied by :func:`decide` in this order:

1. **Rules first.** The rule catalogue always yields a decision; advisors can only
   replace it with a validated catalogue action on the Incident's own workload.
2. **Advisors.** P0/P1 with several advisors: they vote; a strict majority wins
   with the agreeing share as confidence; ties, timeouts and refusals fall back to
   the rules. Otherwise the first usable proposal, in advisor order, is used. Why
   no advisor was used is kept in ``error``.
3. **History.** An action that succeeded less than 20% of the time over at least
   two attempts for this anomaly is skipped for the next candidate (next matching
   rule in catalogue order, then the catch-all). If none is left, a person decides.
   A rule whose action the target's kind does not support (Scale on a DaemonSet) is no
   candidate at all; when no matching rule's action applies, a RolloutRestart (which
   applies to every kind) is proposed for a person to decide.
4. **Approval.** Required for escalated anomalies, for PERMANENT_FIX (where a
   missing permanent fix also blocks any automatic action), for
   ``remediation.mode: RequireApproval``, and for actions riskier than the
   automatic limit (default: medium; a rollback is critical).

Pure: no clock, no I/O. The handler gathers the inputs, the stores persist the result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flywheel.api.enums import (
    ActionType,
    DecisionSource,
    EscalationLevel,
    RemediationMode,
    RiskLevel,
    RunMode,
    Severity,
)
from flywheel.domain.actions import IncidentTarget, ProposedAction, inapplicable_reason
from flywheel.domain.advisor import AdvisorResult, ConsensusResult, consensus, uses_consensus
from flywheel.domain.escalation import ActionStats, should_skip_action
from flywheel.domain.legacy_actions import current_action_stats
from flywheel.domain.rules import AlertFacts, RuleCatalogue, RuleHit, risk_rank
from flywheel.errors import InvalidInputError

DECISION_ID_PREFIX = "DEC-"
NEEDS_PERMANENT_FIX_WARNING = "needs a permanent fix"
DEGRADED_APPROVAL_REASON = (
    "the anomaly's recurrence counts are degraded (Redis unavailable), so ESCALATE or PERMANENT_FIX "
    "cannot be ruled out"
)
DEFAULT_MAX_AUTOMATIC_RISK = RiskLevel.MEDIUM
MAX_TEXT_CHARS = 2048
"""Bound on ``reasoning`` and ``error``: they land in status fields the CRD limits to 4096."""

SkipPredicate = Callable[[ActionStats], bool]


def decision_id(incident_uid: str, sequence: int) -> str:
    """``DEC-`` + 12 hex characters, derived from the Incident and the decision's ordinal.

    Deterministic on purpose: a handler retried after a crash recomputes the same id
    instead of minting a second decision for the same step.
    """
    if not isinstance(incident_uid, str) or not incident_uid.strip():
        raise InvalidInputError("incident_uid", "must be a non-empty string")
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
        raise InvalidInputError("sequence", f"must be an integer >= 0, got {sequence!r}")
    digest = hashlib.sha256(f"{incident_uid}/{sequence}".encode()).hexdigest()
    return f"{DECISION_ID_PREFIX}{digest[:12]}"


@dataclass(frozen=True, slots=True)
class DecisionInput:
    """Everything :func:`decide` needs to know about one Incident.

    ``action_stats`` maps an action type (its wire name, e.g. ``"Scale"``) to the
    recorded outcomes of that action for this anomaly. ``advisor_results`` holds one
    entry per advisor that was asked, in the order they were configured;
    ``advisors_asked`` defaults to their number.
    """

    alert_names: tuple[str, ...]
    severity: Severity
    target: IncidentTarget
    remediation_mode: RemediationMode = RemediationMode.AUTO
    escalation_level: EscalationLevel | None = None
    permanent_fix_declared: bool = False
    action_stats: Mapping[str, ActionStats] = field(default_factory=dict)
    advisor_results: tuple[AdvisorResult, ...] = ()
    advisors_asked: int | None = None
    alerts: tuple[AlertFacts, ...] = ()
    """The Incident's alerts with their labels, for the catalogue's selector rules."""
    counts_degraded: bool = False
    """The anomaly's recurrence counts could not be read (Redis down): its level is unknown."""
    degraded_requires_approval: bool = True
    """Fail closed on degraded counts: ESCALATE or PERMANENT_FIX cannot be ruled out."""

    def __post_init__(self) -> None:
        if isinstance(self.alert_names, str):
            raise InvalidInputError("alert_names", "must be a sequence of names, not one string")
        if self.advisors_asked is not None and self.advisors_asked < len(self.advisor_results):
            raise InvalidInputError(
                "advisors_asked",
                f"{self.advisors_asked} is fewer than the {len(self.advisor_results)} results",
            )

    @property
    def advisor_count(self) -> int:
        return self.advisors_asked if self.advisors_asked is not None else len(self.advisor_results)

    def stats_for(self, action_type: ActionType) -> ActionStats | None:
        return current_action_stats(self.action_stats).get(action_type)


@dataclass(frozen=True, slots=True)
class DecisionOutcome:
    """The decision for one Incident, ready to be written to ``status.decision`` and a Run.

    ``action`` is always set, even when no automatic action is allowed: it is what an
    approver is asked about. ``run_mode`` is ``None`` when ``remediation.mode`` is
    ``Off`` (no Run is created).
    """

    action: ProposedAction
    risk: RiskLevel
    confidence: float
    source: DecisionSource
    reasoning: str
    matched_rule: str | None
    requires_approval: bool
    approval_reasons: tuple[str, ...]
    error: str | None
    warnings: tuple[str, ...]
    run_mode: RunMode | None
    skipped_actions: tuple[ActionType, ...] = ()
    consensus_score: float | None = None

    @property
    def automatic_action_allowed(self) -> bool:
        """Whether a Run may apply the action without a person approving it first."""
        return self.run_mode is not None and not self.requires_approval

    def status_fields(self) -> dict[str, Any]:
        """The ``status.decision`` fields this outcome determines (camelCase wire names).

        ``id`` and ``state`` are the caller's: they depend on the decision's lifecycle.
        """
        return {
            "source": self.source.value,
            "action": self.action.to_run_action(),
            "riskLevel": self.risk.value,
            "confidence": round(self.confidence, 4),
            "reasoning": self.reasoning,
            "matchedRule": self.matched_rule,
            "error": self.error,
        }


# --- helpers --------------------------------------------------------------------------


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def _history_phrase(action_type: ActionType, stats: ActionStats) -> str:
    return f"{action_type.value} {stats.successes}/{stats.attempts} succeeded"


@dataclass(slots=True)
class _History:
    """Applies the skip predicate and remembers what it saw, for the reasoning."""

    stats: Mapping[str, ActionStats]
    skip: SkipPredicate
    skipped: list[ActionType] = field(default_factory=list)

    def allows(self, action_type: ActionType) -> bool:
        recorded = self.stats.get(action_type.value)
        if recorded is None or not self.skip(recorded):
            return True
        if action_type not in self.skipped:
            self.skipped.append(action_type)
        return False

    def summary(self) -> str:
        if not self.stats:
            return "No repair history for this anomaly."
        parts = []
        for action_type in ActionType:
            recorded = self.stats.get(action_type.value)
            if recorded is not None:
                verdict = " (skipped: kept failing)" if action_type in self.skipped else ""
                parts.append(_history_phrase(action_type, recorded) + verdict)
        return "History for this anomaly: " + ("; ".join(parts) if parts else "none recorded") + "."


@dataclass(frozen=True, slots=True)
class _AdvisorChoice:
    action: ProposedAction
    source: DecisionSource
    confidence: float
    explanation: str
    consensus_score: float | None = None


def _refusal(result: AdvisorResult, decision_input: DecisionInput, catalogue: RuleCatalogue) -> str | None:
    """Why a (parsed) proposal still cannot be used for this Incident, if it cannot."""
    advice = result.advice
    if advice is None:
        return result.error
    if advice.target != decision_input.target:
        return f"proposed {advice.target}, not the Incident's own target {decision_input.target}"
    action = advice.action
    if (action.target_kind, action.target_name) != (decision_input.target.kind, decision_input.target.name):
        workload = f"{action.target_kind.value}/{action.target_name}"
        return f"proposed an action on {workload}, not on the Incident's target"
    if action.type not in catalogue.action_types:
        return f"proposed {action.type.value}, which the rule catalogue does not offer"
    return inapplicable_reason(action.type, action.target_kind)


def _screen(
    results: Sequence[AdvisorResult], decision_input: DecisionInput, catalogue: RuleCatalogue
) -> list[AdvisorResult]:
    screened = []
    for result in results:
        refusal = _refusal(result, decision_input, catalogue)
        if result.ok and refusal is not None:
            screened.append(result.failed_with(f"refused: {refusal}"))
        else:
            screened.append(result)
    return screened


def _failures(results: Sequence[AdvisorResult]) -> list[str]:
    return [f"{result.advisor}: {result.error}" for result in results if result.error is not None]


def _consensus_choice(
    results: Sequence[AdvisorResult], total: int, history: _History
) -> tuple[_AdvisorChoice | None, str | None]:
    vote: ConsensusResult = consensus(results, total)
    failures = "; ".join(_failures(results))
    if vote.winner is None:
        error = f"advisors reached no consensus ({vote.reason})"
        return None, f"{error}; {failures}" if failures else error
    if not history.allows(vote.winner.type):
        return None, (
            f"advisors agreed on {vote.winner.describe()} ({vote.reason}), but that action "
            "kept failing for this anomaly"
        )
    dissent = "; ".join(f"{advisor} proposed {action.describe()}" for advisor, action in vote.dissenting)
    explanation = (
        f"Consensus of advisors {', '.join(vote.agreeing)} ({vote.reason}, score {vote.score:.2f}) "
        f"on {vote.winner.describe()}."
    )
    if dissent:
        explanation += f" Dissent: {dissent}."
    if failures:
        explanation += f" Without a usable answer: {failures}."
    return (
        _AdvisorChoice(
            action=vote.winner,
            source=DecisionSource.CONSENSUS,
            confidence=vote.score,
            explanation=explanation,
            consensus_score=vote.score,
        ),
        None,
    )


def _single_choice(
    results: Sequence[AdvisorResult], history: _History
) -> tuple[_AdvisorChoice | None, str | None]:
    problems: list[str] = []
    for result in results:
        advice = result.advice
        if advice is None:
            problems.append(f"{result.advisor}: {result.error}")
            continue
        if not history.allows(advice.action.type):
            problems.append(
                f"{result.advisor}: proposed {advice.action.describe()}, which kept failing for this anomaly"
            )
            continue
        explanation = (
            f"Advisor {result.advisor} proposed {advice.action.describe()} "
            f"(confidence {advice.confidence:.2f})"
        )
        explanation += f": {advice.reasoning.rstrip('.')}." if advice.reasoning else "."
        if problems:
            explanation += f" Not used: {'; '.join(problems)}."
        return (
            _AdvisorChoice(
                action=advice.action,
                source=DecisionSource.ADVISOR,
                confidence=advice.confidence,
                explanation=explanation,
            ),
            None,
        )
    return None, "; ".join(problems)


def _rule_phrase(hit: RuleHit, target: IncidentTarget) -> str:
    action = hit.rule.action.bind(target.kind, target.name)
    return (
        f"{hit.explain()}: {action.describe()} "
        f"(risk {hit.rule.risk.value}, confidence {hit.rule.confidence:.2f})"
    )


def _run_mode(mode: RemediationMode) -> RunMode | None:
    if mode is RemediationMode.OFF:
        return None
    if mode is RemediationMode.SHADOW:
        return RunMode.SHADOW
    return RunMode.AUTO


# --- the decision ---------------------------------------------------------------------


def decide(
    decision_input: DecisionInput,
    catalogue: RuleCatalogue,
    *,
    skip: SkipPredicate = should_skip_action,
    max_automatic_risk: RiskLevel = DEFAULT_MAX_AUTOMATIC_RISK,
) -> DecisionOutcome:
    """Choose the action for an Incident and say whether it needs approval (see module docs).

    ``skip`` decides from an action's history whether to pass over it; the default
    is the 20%-over-two-attempts policy. Actions riskier than ``max_automatic_risk``
    always require approval.
    """
    target = decision_input.target
    # History the older system wrote (restart_pod) counts for today's action (RolloutRestart).
    history = _History(
        stats={action.value: stats for action, stats in current_action_stats(decision_input.action_stats).items()},
        skip=skip,
    )
    match = catalogue.match(decision_input.alert_names, decision_input.alerts)

    # A rule whose action the target's kind does not support (Scale on a DaemonSet) is no
    # candidate: it would make a Run the API server refuses and nobody could execute.
    candidates = [hit for hit in match.hits if inapplicable_reason(hit.rule.action.type, target.kind) is None]
    inapplicable = [hit for hit in match.hits if hit not in candidates]

    # Rules first: the first candidate whose action has not kept failing.
    rule_choice: RuleHit | None = None
    passed_over: list[RuleHit] = []
    for hit in candidates:
        if history.allows(hit.rule.action.type):
            rule_choice = hit
            break
        passed_over.append(hit)

    # Advisors may replace the rule's choice, never the policy that follows.
    advisor_choice: _AdvisorChoice | None = None
    advisor_error: str | None = None
    if decision_input.advisor_results:
        screened = _screen(decision_input.advisor_results, decision_input, catalogue)
        if uses_consensus(decision_input.severity, decision_input.advisor_count):
            advisor_choice, advisor_error = _consensus_choice(screened, decision_input.advisor_count, history)
        else:
            advisor_choice, advisor_error = _single_choice(screened, history)
    elif decision_input.advisor_count:
        advisor_error = f"none of the {decision_input.advisor_count} advisors answered"

    sentences: list[str] = []
    approval_reasons: list[str] = []
    warnings: list[str] = []

    matched_rule: str | None
    consensus_score: float | None = None
    if advisor_choice is not None:
        action = advisor_choice.action
        risk = catalogue.risk_for(action.type)
        confidence = advisor_choice.confidence
        source = advisor_choice.source
        matched_rule = None
        consensus_score = advisor_choice.consensus_score
        sentences.append(advisor_choice.explanation)
        if rule_choice is not None:
            sentences.append(f"The rules would have chosen {_rule_phrase(rule_choice, target)}.")
    elif rule_choice is not None:
        action = rule_choice.rule.action.bind(target.kind, target.name)
        risk = rule_choice.rule.risk
        confidence = rule_choice.rule.confidence
        source = DecisionSource.RULES
        matched_rule = rule_choice.rule.name
        sentences.append(f"Rules chose {_rule_phrase(rule_choice, target)}.")
        if passed_over:
            names = ", ".join(f"{hit.rule.name} ({hit.rule.action.type.value})" for hit in passed_over)
            sentences.append(f"Passed over {names}: the action kept failing.")
        if advisor_error:
            sentences.append(f"Advisors not used: {advisor_error}.")
    elif candidates:
        # Every candidate kept failing: offer the best-matching rule to a person.
        primary = candidates[0]
        action = primary.rule.action.bind(target.kind, target.name)
        risk = primary.rule.risk
        confidence = primary.rule.confidence
        source = DecisionSource.RULES
        matched_rule = primary.rule.name
        sentences.append(
            f"Rules matched {primary.explain()}, but every candidate action kept failing for this "
            f"anomaly; proposing {action.describe()} for a person to decide."
        )
        approval_reasons.append("every candidate action kept failing for this anomaly")
    else:
        # No matching rule offers an action this kind of workload supports (a catalogue whose
        # catch-all scales, for a DaemonSet): a restart applies to every kind; a person decides.
        primary = match.first
        action = ProposedAction(ActionType.ROLLOUT_RESTART, target.kind, target.name)
        risk = (
            catalogue.risk_for(ActionType.ROLLOUT_RESTART)
            if ActionType.ROLLOUT_RESTART in catalogue.action_types
            else primary.rule.risk
        )
        confidence = primary.rule.confidence
        source = DecisionSource.RULES
        matched_rule = primary.rule.name
        sentences.append(
            f"Rules matched {primary.explain()}, but no matching rule's action applies to "
            f"{target.kind.value}/{target.name}; proposing {action.describe()} for a person to decide."
        )
        approval_reasons.append(f"no matching rule offers an action a {target.kind.value} supports")
    if inapplicable and advisor_choice is None:
        names = ", ".join(f"{hit.rule.name} ({hit.rule.action.type.value})" for hit in inapplicable)
        sentences.append(
            f"Not applicable to {target.kind.value}/{target.name}: {names} "
            f"({inapplicable_reason(inapplicable[0].rule.action.type, target.kind)})."
        )

    sentences.append(history.summary())

    level = decision_input.escalation_level
    if level is EscalationLevel.REPEAT:
        sentences.append("The anomaly is recurring (REPEAT).")
    elif level is EscalationLevel.ESCALATE:
        sentences.append("The anomaly is escalated (ESCALATE).")
        approval_reasons.append("the anomaly is escalated (ESCALATE)")
    elif level is EscalationLevel.PERMANENT_FIX:
        if decision_input.permanent_fix_declared:
            sentences.append("The anomaly reached PERMANENT_FIX although a permanent fix is declared.")
            approval_reasons.append(
                "the anomaly keeps recurring (PERMANENT_FIX) despite the declared permanent fix"
            )
        else:
            sentences.append(
                "The anomaly reached PERMANENT_FIX and no permanent fix is declared: no automatic action."
            )
            approval_reasons.append("the anomaly needs a permanent fix (PERMANENT_FIX); no automatic action")
            warnings.append(NEEDS_PERMANENT_FIX_WARNING)

    if decision_input.counts_degraded and decision_input.degraded_requires_approval:
        approval_reasons.append(DEGRADED_APPROVAL_REASON)
    if decision_input.remediation_mode is RemediationMode.REQUIRE_APPROVAL:
        approval_reasons.append("remediation.mode is RequireApproval")
    if risk_rank(risk) > risk_rank(max_automatic_risk):
        approval_reasons.append(
            f"risk {risk.value} is above the automatic limit ({max_automatic_risk.value})"
        )

    run_mode = _run_mode(decision_input.remediation_mode)
    if run_mode is None:
        warnings.append("remediation.mode is Off: no Run is created")
    if approval_reasons:
        sentences.append("Approval required: " + "; ".join(approval_reasons) + ".")

    return DecisionOutcome(
        action=action,
        risk=risk,
        confidence=confidence,
        source=source,
        reasoning=_bounded(" ".join(sentence for sentence in sentences if sentence)),
        matched_rule=matched_rule,
        requires_approval=bool(approval_reasons),
        approval_reasons=tuple(approval_reasons),
        error=_bounded(advisor_error) if advisor_choice is None and advisor_error else None,
        warnings=tuple(warnings),
        run_mode=run_mode,
        skipped_actions=tuple(history.skipped),
        consensus_score=consensus_score,
    )
