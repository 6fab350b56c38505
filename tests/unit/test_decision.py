"""decide(): rules first, validated advisors, history-aware skipping and the approval policy."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.api.enums import (
    ActionType,
    DecisionSource,
    EscalationLevel,
    RemediationMode,
    RiskLevel,
    RunMode,
    Severity,
    TargetKind,
)
from flywheel.api.incident import Decision
from flywheel.domain.actions import ActionTemplate, IncidentTarget, ProposedAction, effective_replicas
from flywheel.domain.advisor import AdvisorResult, ProposedAdvice
from flywheel.domain.decision import (
    NEEDS_PERMANENT_FIX_WARNING,
    DecisionInput,
    DecisionOutcome,
    decide,
    decision_id,
)
from flywheel.domain.escalation import ActionStats
from flywheel.domain.rules import default_catalogue, load_catalogue
from flywheel.errors import InvalidInputError

pytestmark = pytest.mark.unit

TARGET = IncidentTarget(namespace="shop", kind=TargetKind.DEPLOYMENT, name="checkout")
OTHER_TARGET = IncidentTarget(namespace="shop", kind=TargetKind.DEPLOYMENT, name="payments")


def make_input(*alert_names: str, **overrides: object) -> DecisionInput:
    values: dict[str, object] = {"alert_names": alert_names, "severity": Severity.P2, "target": TARGET}
    values.update(overrides)
    return DecisionInput(**values)  # type: ignore[arg-type]


def proposal(
    advisor: str,
    action_type: ActionType,
    *,
    replicas: int | None = None,
    confidence: float = 0.9,
    target: IncidentTarget = TARGET,
) -> AdvisorResult:
    action = ProposedAction(action_type, target.kind, target.name, replicas=replicas)
    advice = ProposedAdvice(action=action, target=target, confidence=confidence, reasoning="looks like load")
    return AdvisorResult(advisor=advisor, advice=advice, latency_seconds=0.2)


def timeout(advisor: str) -> AdvisorResult:
    return AdvisorResult(advisor=advisor, error="timed out after 30s", timed_out=True, latency_seconds=30.0)


def run(decision_input: DecisionInput) -> DecisionOutcome:
    return decide(decision_input, default_catalogue())


# --- the action catalogue ------------------------------------------------------------


@pytest.mark.parametrize(
    ("action_type", "replicas", "to_revision", "field"),
    [
        (ActionType.SCALE, None, None, "action.params.replicas"),
        (ActionType.SCALE, 0, None, "action.params.replicas"),
        (ActionType.SCALE, True, None, "action.params.replicas"),
        (ActionType.SCALE, 2, 1, "action.params.toRevision"),
        (ActionType.ROLLOUT_UNDO, None, 0, "action.params.toRevision"),
        (ActionType.ROLLOUT_UNDO, 2, None, "action.params.replicas"),
        (ActionType.ROLLOUT_RESTART, 1, None, "action.params.replicas"),
        (ActionType.ROLLOUT_RESTART, None, 3, "action.params.toRevision"),
    ],
)
def test_actions_only_take_their_own_parameters(
    action_type: ActionType, replicas: int | None, to_revision: int | None, field: str
) -> None:
    with pytest.raises(InvalidInputError) as refused:
        ProposedAction(
            action_type, TargetKind.DEPLOYMENT, "checkout", replicas=replicas, to_revision=to_revision
        )
    assert refused.value.field == field


@pytest.mark.parametrize("name", ["", "Checkout", "check_out", "-checkout", "a" * 254, "web;rm"])
def test_actions_need_a_valid_workload_name(name: str) -> None:
    with pytest.raises(InvalidInputError, match=r"action\.target\.name"):
        ProposedAction(ActionType.ROLLOUT_RESTART, TargetKind.DEPLOYMENT, name)


def test_action_wire_format_and_description() -> None:
    undo = ProposedAction(ActionType.ROLLOUT_UNDO, TargetKind.STATEFULSET, "db", to_revision=4)
    assert undo.to_run_action() == {
        "type": "RolloutUndo",
        "target": {"kind": "StatefulSet", "name": "db"},
        "params": {"toRevision": 4},
    }
    assert (
        "params"
        not in ProposedAction(ActionType.ROLLOUT_RESTART, TargetKind.DEPLOYMENT, "web").to_run_action()
    )
    assert undo.describe() == "roll StatefulSet/db back to revision 4"
    assert ActionTemplate(ActionType.SCALE, replicas=3).bind(TargetKind.DEPLOYMENT, "web").params == {
        "replicas": 3
    }
    assert ProposedAction(ActionType.ROLLOUT_RESTART, TargetKind.DEPLOYMENT, "web").params == {}


@pytest.mark.parametrize(
    ("requested", "current", "maximum", "expected"),
    [
        (3, 1, 10, 3),  # scale up
        (3, 5, 10, 5),  # never lowers the current count
        (3, 3, 10, 3),
        (20, 2, 10, 10),  # never exceeds the maximum
        (3, 12, 10, 12),  # already above the maximum: leave it alone rather than scale down
        (1, 0, 10, 1),  # scaled to zero: bring one back
    ],
)
def test_effective_replicas(requested: int, current: int, maximum: int, expected: int) -> None:
    assert effective_replicas(requested, current, maximum) == expected


@pytest.mark.parametrize(
    ("requested", "current", "maximum"), [(0, 1, 10), (2, -1, 10), (2, 1, 0), (True, 1, 10)]
)
def test_effective_replicas_refuses_nonsense(requested: int, current: int, maximum: int) -> None:
    with pytest.raises(InvalidInputError):
        effective_replicas(requested, current, maximum)


def test_incident_target_is_validated() -> None:
    with pytest.raises(InvalidInputError, match=r"metadata\.namespace"):
        IncidentTarget(namespace="", kind=TargetKind.DEPLOYMENT, name="web")
    with pytest.raises(InvalidInputError, match=r"spec\.targetRef\.kind"):
        IncidentTarget(namespace="shop", kind="Pod", name="web")  # type: ignore[arg-type]
    assert str(TARGET) == "Deployment/checkout in namespace shop"


# --- decision ids ---------------------------------------------------------------------


def test_decision_id_is_deterministic_per_incident_and_sequence() -> None:
    first = decision_id("0f1e2d3c-uid", 0)
    assert re.fullmatch(r"DEC-[0-9a-f]{12}", first)
    assert decision_id("0f1e2d3c-uid", 0) == first
    assert decision_id("0f1e2d3c-uid", 1) != first
    assert decision_id("another-uid", 0) != first


@pytest.mark.parametrize(("uid", "sequence"), [("", 0), ("  ", 0), ("uid", -1), ("uid", True)])
def test_decision_id_refuses_bad_input(uid: str, sequence: int) -> None:
    with pytest.raises(InvalidInputError):
        decision_id(uid, sequence)


# --- rules ----------------------------------------------------------------------------


def test_rules_decide_when_there_is_no_advisor() -> None:
    outcome = run(make_input("KubePodCrashLooping"))
    assert outcome.action == ProposedAction(ActionType.ROLLOUT_RESTART, TargetKind.DEPLOYMENT, "checkout")
    assert outcome.source is DecisionSource.RULES
    assert outcome.matched_rule == "pod_crash"
    assert (outcome.risk, outcome.confidence) == (RiskLevel.MEDIUM, 0.75)
    assert not outcome.requires_approval and outcome.approval_reasons == ()
    assert outcome.error is None and outcome.warnings == ()
    assert outcome.run_mode is RunMode.AUTO and outcome.automatic_action_allowed
    assert "pod_crash" in outcome.reasoning and "'crash'" in outcome.reasoning
    assert "No repair history" in outcome.reasoning


def test_scale_rule_carries_its_replica_count() -> None:
    outcome = run(make_input("CheckoutLatencyP99"))
    assert outcome.action.type is ActionType.SCALE and outcome.action.replicas == 3
    assert outcome.matched_rule == "high_latency"
    assert outcome.status_fields() == {
        "source": "rules",
        "action": {
            "type": "Scale",
            "target": {"kind": "Deployment", "name": "checkout"},
            "params": {"replicas": 3},
        },
        "riskLevel": "low",
        "confidence": 0.75,
        "reasoning": outcome.reasoning,
        "matchedRule": "high_latency",
        "error": None,
    }


def test_status_fields_fit_the_incident_status_model() -> None:
    outcome = run(make_input("Checkout5xxRate", advisor_results=(timeout("a"),)))
    decision = Decision.model_validate(
        {"id": decision_id("uid-1", 0), "state": "Ready", **outcome.status_fields()}
    )
    assert decision.action is not None and decision.action.type is ActionType.ROLLOUT_UNDO
    assert decision.matched_rule == "high_error_rate" and decision.error == "a: timed out after 30s"


def test_reasoning_and_error_stay_within_the_status_limits() -> None:
    chatty = tuple(AdvisorResult(advisor=f"advisor-{n}", error="refused: " + "x" * 400) for n in range(20))
    outcome = run(make_input("Boom", severity=Severity.P0, advisor_results=chatty))
    assert outcome.error is not None and len(outcome.error) <= 2048
    assert len(outcome.reasoning) <= 2048


def test_no_alert_name_uses_the_default_rule() -> None:
    outcome = run(make_input())
    assert outcome.matched_rule == "default"
    assert outcome.action.type is ActionType.ROLLOUT_RESTART


# --- escalation and approval policy ---------------------------------------------------


@pytest.mark.parametrize(
    ("level", "fix_declared", "needs_approval", "warned"),
    [
        (None, False, False, False),
        (EscalationLevel.REPEAT, False, False, False),
        (EscalationLevel.ESCALATE, False, True, False),
        (EscalationLevel.ESCALATE, True, True, False),
        (EscalationLevel.PERMANENT_FIX, False, True, True),
        (EscalationLevel.PERMANENT_FIX, True, True, False),
    ],
)
def test_escalation_boundaries(
    level: EscalationLevel | None, fix_declared: bool, needs_approval: bool, warned: bool
) -> None:
    # A low-risk rule, so that only the escalation level can ask for approval.
    outcome = run(make_input("CheckoutSlow", escalation_level=level, permanent_fix_declared=fix_declared))
    assert outcome.requires_approval is needs_approval
    assert (NEEDS_PERMANENT_FIX_WARNING in outcome.warnings) is warned
    assert outcome.action.type is ActionType.SCALE  # the approver still sees what would be done
    if level is not None:
        assert level.value in outcome.reasoning


def test_permanent_fix_without_a_fix_blocks_automatic_action() -> None:
    outcome = run(make_input("CheckoutSlow", escalation_level=EscalationLevel.PERMANENT_FIX))
    assert not outcome.automatic_action_allowed
    assert any("permanent fix" in reason for reason in outcome.approval_reasons)
    assert outcome.warnings == ("needs a permanent fix",)


@pytest.mark.parametrize(
    ("mode", "run_mode", "needs_approval"),
    [
        (RemediationMode.AUTO, RunMode.AUTO, False),
        (RemediationMode.REQUIRE_APPROVAL, RunMode.AUTO, True),
        (RemediationMode.SHADOW, RunMode.SHADOW, False),
        (RemediationMode.OFF, None, False),
    ],
)
def test_remediation_mode(mode: RemediationMode, run_mode: RunMode | None, needs_approval: bool) -> None:
    outcome = run(make_input("CheckoutSlow", remediation_mode=mode))
    assert outcome.run_mode is run_mode
    assert outcome.requires_approval is needs_approval
    if mode is RemediationMode.REQUIRE_APPROVAL:
        assert outcome.approval_reasons == ("remediation.mode is RequireApproval",)
    if mode is RemediationMode.OFF:
        assert not outcome.automatic_action_allowed
        assert any("Off" in warning for warning in outcome.warnings)


def test_actions_riskier_than_the_limit_need_approval() -> None:
    outcome = run(make_input("Checkout5xxRate"))
    assert (outcome.action.type, outcome.risk) == (ActionType.ROLLOUT_UNDO, RiskLevel.CRITICAL)
    assert outcome.requires_approval
    assert outcome.approval_reasons == ("risk critical is above the automatic limit (medium)",)
    relaxed = decide(
        make_input("Checkout5xxRate"), default_catalogue(), max_automatic_risk=RiskLevel.CRITICAL
    )
    assert not relaxed.requires_approval


# --- history-aware choice -------------------------------------------------------------


def test_the_older_systems_history_counts_for_todays_action() -> None:
    """Seed 001's ``restart_pod`` outcomes are RolloutRestart's: added to them, and skipped on them."""
    stats = {"restart_pod": ActionStats(attempts=4, successes=0), "RolloutRestart": ActionStats(attempts=2, successes=1)}
    outcome = run(make_input("PodOOMKilledSlow", action_stats=stats))
    assert outcome.skipped_actions == (ActionType.ROLLOUT_RESTART,)
    assert "RolloutRestart 1/6 succeeded (skipped" in outcome.reasoning
    unknown = run(make_input("PodOOMKilledSlow", action_stats={"reboot_node": ActionStats(attempts=9, successes=0)}))
    assert unknown.matched_rule == "pod_crash", "a name with no meaning today is left out"


@pytest.mark.parametrize(
    ("attempts", "successes", "skipped"),
    [
        (0, 0, False),
        (1, 0, False),  # one failure is not evidence enough
        (2, 0, True),
        (5, 1, False),  # exactly 20% is not below 20%
        (10, 1, True),
        (3, 3, False),
    ],
)
def test_skip_policy_boundaries(attempts: int, successes: int, skipped: bool) -> None:
    stats = {ActionType.ROLLOUT_RESTART.value: ActionStats(attempts=attempts, successes=successes)}
    outcome = run(make_input("PodOOMKilledSlow", action_stats=stats))
    if skipped:
        assert outcome.matched_rule == "high_latency"
        assert outcome.action.type is ActionType.SCALE
        assert outcome.skipped_actions == (ActionType.ROLLOUT_RESTART,)
        assert f"RolloutRestart {successes}/{attempts} succeeded (skipped" in outcome.reasoning
        assert "Passed over pod_crash" in outcome.reasoning
    else:
        assert outcome.matched_rule == "pod_crash"
        assert outcome.skipped_actions == ()
    assert not outcome.requires_approval


def test_skipping_walks_the_matching_rules_in_catalogue_order() -> None:
    stats = {"RolloutRestart": ActionStats(4, 0), "Scale": ActionStats(3, 0)}
    outcome = run(make_input("PodCrashSlowError", action_stats=stats))
    assert outcome.matched_rule == "high_error_rate"
    assert outcome.skipped_actions == (ActionType.ROLLOUT_RESTART, ActionType.SCALE)


def test_nothing_left_requires_approval_and_offers_the_best_match() -> None:
    # pod_crash and the default rule both restart; restarts keep failing.
    outcome = run(make_input("KubePodCrashLooping", action_stats={"RolloutRestart": ActionStats(6, 1)}))
    assert outcome.requires_approval
    assert outcome.approval_reasons == ("every candidate action kept failing for this anomaly",)
    assert outcome.matched_rule == "pod_crash"
    assert outcome.action.type is ActionType.ROLLOUT_RESTART


def test_the_skip_predicate_is_pluggable() -> None:
    never_skip = decide(
        make_input("PodOOMKilled", action_stats={"RolloutRestart": ActionStats(9, 0)}),
        default_catalogue(),
        skip=lambda stats: False,
    )
    assert never_skip.matched_rule == "pod_crash"


# --- advisors -------------------------------------------------------------------------


def test_a_single_valid_advisor_replaces_the_rule() -> None:
    outcome = run(
        make_input("KubePodCrashLooping", advisor_results=(proposal("vllm-a", ActionType.SCALE, replicas=4),))
    )
    assert outcome.source is DecisionSource.ADVISOR
    assert outcome.action == ProposedAction(ActionType.SCALE, TargetKind.DEPLOYMENT, "checkout", replicas=4)
    assert outcome.confidence == 0.9
    assert outcome.risk is RiskLevel.MEDIUM  # the highest risk the catalogue gives Scale
    assert outcome.matched_rule is None and outcome.error is None
    assert "vllm-a" in outcome.reasoning and "pod_crash" in outcome.reasoning


def test_an_advisor_timeout_falls_back_to_the_rules_and_keeps_the_reason() -> None:
    outcome = run(make_input("KubePodCrashLooping", advisor_results=(timeout("vllm-a"),)))
    assert outcome.source is DecisionSource.RULES
    assert outcome.matched_rule == "pod_crash"
    assert outcome.error == "vllm-a: timed out after 30s"
    assert "vllm-a" in outcome.reasoning


def test_advisors_asked_without_any_result_are_reported() -> None:
    outcome = run(make_input("KubePodCrashLooping", advisors_asked=2))
    assert outcome.source is DecisionSource.RULES
    assert outcome.error == "none of the 2 advisors answered"


def test_a_proposal_for_another_workload_is_refused() -> None:
    outcome = run(
        make_input(
            "KubePodCrashLooping",
            advisor_results=(proposal("a", ActionType.SCALE, replicas=3, target=OTHER_TARGET),),
        )
    )
    assert outcome.source is DecisionSource.RULES
    assert outcome.action.target_name == "checkout"
    assert outcome.error is not None and "refused" in outcome.error and "payments" in outcome.error


def test_a_proposal_outside_the_catalogue_is_refused() -> None:
    restart_only = load_catalogue(
        "- name: fallback\n  keywords: []\n  action: {type: RolloutRestart}\n  risk: medium\n"
    )
    outcome = decide(
        make_input("Anything", advisor_results=(proposal("a", ActionType.ROLLOUT_UNDO),)), restart_only
    )
    assert outcome.source is DecisionSource.RULES
    assert outcome.error is not None and "does not offer" in outcome.error


def test_a_proposal_that_kept_failing_is_not_used() -> None:
    outcome = run(
        make_input(
            "KubePodCrashLooping",
            action_stats={"Scale": ActionStats(2, 0)},
            advisor_results=(proposal("a", ActionType.SCALE, replicas=3),),
        )
    )
    assert outcome.source is DecisionSource.RULES
    assert outcome.error is not None and "kept failing" in outcome.error


def test_below_p1_the_first_usable_advisor_is_used_without_a_vote() -> None:
    outcome = run(
        make_input(
            "KubePodCrashLooping",
            severity=Severity.P2,
            advisor_results=(
                timeout("a"),
                proposal("b", ActionType.SCALE, replicas=2),
                proposal("c", ActionType.ROLLOUT_UNDO),
            ),
        )
    )
    assert outcome.source is DecisionSource.ADVISOR
    assert outcome.action.replicas == 2
    assert "a: timed out" in outcome.reasoning


def test_p0_consensus_three_against_one() -> None:
    results = (
        proposal("a", ActionType.SCALE, replicas=3),
        proposal("b", ActionType.SCALE, replicas=3, confidence=0.6),
        proposal("c", ActionType.ROLLOUT_RESTART),
        proposal("d", ActionType.SCALE, replicas=3),
    )
    outcome = run(make_input("KubePodCrashLooping", severity=Severity.P0, advisor_results=results))
    assert outcome.source is DecisionSource.CONSENSUS
    assert outcome.confidence == 0.75 and outcome.consensus_score == 0.75
    assert outcome.action.type is ActionType.SCALE and outcome.action.replicas == 3
    assert outcome.error is None
    assert "a, b, d" in outcome.reasoning and "c proposed restart" in outcome.reasoning


def test_p1_tie_falls_back_to_the_rules() -> None:
    results = (proposal("a", ActionType.SCALE, replicas=3), proposal("b", ActionType.ROLLOUT_UNDO))
    outcome = run(make_input("KubePodCrashLooping", severity=Severity.P1, advisor_results=results))
    assert outcome.source is DecisionSource.RULES
    assert outcome.matched_rule == "pod_crash"
    assert outcome.error is not None and "tie" in outcome.error
    assert outcome.consensus_score is None


def test_p0_all_timeouts_fall_back_to_the_rules_and_keep_the_errors() -> None:
    results = (timeout("a"), timeout("b"), timeout("c"))
    outcome = run(make_input("KubePodCrashLooping", severity=Severity.P0, advisor_results=results))
    assert outcome.source is DecisionSource.RULES
    assert outcome.error is not None
    assert "no consensus" in outcome.error
    for advisor in "abc":
        assert f"{advisor}: timed out after 30s" in outcome.error


def test_timeouts_count_against_the_majority() -> None:
    results = (
        proposal("a", ActionType.SCALE, replicas=3),
        proposal("b", ActionType.SCALE, replicas=3),
        timeout("c"),
        timeout("d"),
    )
    outcome = run(make_input("KubePodCrashLooping", severity=Severity.P0, advisor_results=results))
    assert outcome.source is DecisionSource.RULES
    assert outcome.error is not None and "no strict majority" in outcome.error


def test_advisors_without_a_result_still_count_in_the_vote() -> None:
    results = (proposal("a", ActionType.SCALE, replicas=3), proposal("b", ActionType.SCALE, replicas=3))
    outcome = run(make_input("Boom", severity=Severity.P0, advisor_results=results, advisors_asked=3))
    assert outcome.source is DecisionSource.CONSENSUS
    assert outcome.confidence == pytest.approx(2 / 3)


def test_escalation_still_applies_to_an_advisor_choice() -> None:
    outcome = run(
        make_input(
            "KubePodCrashLooping",
            escalation_level=EscalationLevel.ESCALATE,
            advisor_results=(proposal("a", ActionType.SCALE, replicas=3),),
        )
    )
    assert outcome.source is DecisionSource.ADVISOR
    assert outcome.requires_approval


def test_input_validation() -> None:
    with pytest.raises(InvalidInputError, match="alert_names"):
        DecisionInput(alert_names="KubePodCrashLooping", severity=Severity.P2, target=TARGET)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="advisors_asked"):
        make_input("x", advisor_results=(timeout("a"), timeout("b")), advisors_asked=1)


# --- DaemonSets: no Scale ---------------------------------------------------------------

DAEMONSET = IncidentTarget(namespace="shop", kind=TargetKind.DAEMONSET, name="log-agent")


def test_a_scale_action_on_a_daemonset_is_refused_naming_the_type() -> None:
    with pytest.raises(InvalidInputError) as refused:
        ProposedAction(ActionType.SCALE, TargetKind.DAEMONSET, "log-agent", replicas=2)
    assert refused.value.field == "action.type"
    assert "Scale does not apply to a DaemonSet" in refused.value.reason
    ProposedAction(ActionType.ROLLOUT_RESTART, TargetKind.DAEMONSET, "log-agent")
    ProposedAction(ActionType.ROLLOUT_UNDO, TargetKind.DAEMONSET, "log-agent", to_revision=1)


def test_a_rule_that_scales_is_no_candidate_for_a_daemonset() -> None:
    # high_latency (Scale) matches first; for a Deployment it wins, for a DaemonSet the next rule does.
    assert run(make_input("HighLatencyErrors")).action.type is ActionType.SCALE
    outcome = run(make_input("HighLatencyErrors", target=DAEMONSET))
    assert outcome.matched_rule == "high_error_rate"
    assert outcome.action == ProposedAction(ActionType.ROLLOUT_UNDO, TargetKind.DAEMONSET, "log-agent")
    assert "Not applicable to DaemonSet/log-agent: high_latency (Scale)" in outcome.reasoning


def test_a_daemonset_whose_only_matching_rules_scale_gets_a_restart_for_a_person_to_decide() -> None:
    catalogue = load_catalogue(
        """
- name: slow
  keywords: [latency]
  action: {type: Scale, params: {replicas: 3}}
  risk: low
- name: default
  action: {type: Scale, params: {replicas: 2}}
  risk: low
"""
    )
    outcome = decide(make_input("HighLatency", target=DAEMONSET), catalogue)
    assert outcome.action == ProposedAction(ActionType.ROLLOUT_RESTART, TargetKind.DAEMONSET, "log-agent")
    assert outcome.requires_approval
    assert outcome.approval_reasons == ("no matching rule offers an action a DaemonSet supports",)
    assert outcome.run_mode is RunMode.AUTO
    # What the Incident's status and the Run carry is valid for the API schema.
    Decision.model_validate({"id": decision_id("uid-1", 0), "state": "Ready", **outcome.status_fields()})


def test_an_advisor_proposing_to_scale_a_daemonset_is_not_used() -> None:
    advice = ProposedAdvice(
        action=ProposedAction(ActionType.ROLLOUT_RESTART, TargetKind.DAEMONSET, "log-agent"),
        target=DAEMONSET, confidence=0.9, reasoning="restart it",
    )
    result = AdvisorResult(advisor="a", advice=advice, latency_seconds=0.1)
    outcome = run(make_input("KubePodCrashLooping", target=DAEMONSET, advisor_results=(result,)))
    assert outcome.source is DecisionSource.ADVISOR
    assert outcome.action.type is ActionType.ROLLOUT_RESTART


_KEYWORDS = ("crash", "latency", "error", "cpu")
_ACTION_DOCUMENTS = {
    ActionType.ROLLOUT_RESTART: "{type: RolloutRestart}",
    ActionType.SCALE: "{type: Scale, params: {replicas: 2}}",
    ActionType.ROLLOUT_UNDO: "{type: RolloutUndo}",
}


@st.composite
def catalogues(draw: st.DrawFn) -> str:
    rules = []
    for index, keyword in enumerate(draw(st.lists(st.sampled_from(_KEYWORDS), unique=True, max_size=4))):
        action = _ACTION_DOCUMENTS[draw(st.sampled_from(list(ActionType)))]
        rules.append(f"- name: r{index}\n  keywords: [{keyword}]\n  action: {action}\n  risk: low\n")
    fallback = _ACTION_DOCUMENTS[draw(st.sampled_from(list(ActionType)))]
    rules.append(f"- name: fallback\n  action: {fallback}\n  risk: medium\n")
    return "".join(rules)


@given(
    catalogue=catalogues(),
    alert_names=st.lists(st.sampled_from([f"Kube{keyword.title()}Alert" for keyword in _KEYWORDS]), max_size=3),
    failing=st.sets(st.sampled_from(list(ActionType))),
)
def test_no_catalogue_ever_scales_a_daemonset(
    catalogue: str, alert_names: list[str], failing: set[ActionType]
) -> None:
    stats = {action.value: ActionStats(5, 0) for action in failing}
    outcome = decide(make_input(*alert_names, target=DAEMONSET, action_stats=stats), load_catalogue(catalogue))
    assert outcome.action.type is not ActionType.SCALE
    assert outcome.action.target_kind is TargetKind.DAEMONSET
    Decision.model_validate({"id": decision_id("uid-1", 0), "state": "Ready", **outcome.status_fields()})
