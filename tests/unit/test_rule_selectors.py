"""Catalogue rules that match alerts by name and labels, ahead of the keyword rules.

Scenario matrix:
- a team's selector rule binds a real kubernetes-mixin alert (KubePodCrashLooping with the
  labels kube-state-metrics series carry in kube-prometheus-stack) to its playbook, before
  the keyword rule that would otherwise take it; the keyword rules stay the fallback;
- every condition must hold for one and the same alert; namespace globs; exact names;
- the file order is the precedence: a selector rule after a keyword rule, a rule with both
  keywords and match, an empty match, a bad glob or label are refused naming the field;
- properties (Hypothesis) over user-written label sets and globs: a selector made of an
  alert's own labels matches it; changing any selected label's value un-matches it; a
  glob matches exactly what fnmatchcase says.
"""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.api.enums import ActionType, Severity, TargetKind
from flywheel.domain.actions import IncidentTarget
from flywheel.domain.decision import DecisionInput, decide
from flywheel.domain.rules import AlertFacts, AlertSelector, load_catalogue
from flywheel.errors import ConfigurationError

pytestmark = pytest.mark.unit

# KubePodCrashLooping as kube-prometheus-stack's Alertmanager sends it: the series labels of
# kube_pod_container_status_waiting_reason (container, namespace, pod, reason, uid), the
# ServiceMonitor's target labels (endpoint, instance, job, service) and the rule's severity.
CRASH_LOOPING = {
    "alertname": "KubePodCrashLooping",
    "container": "app",
    "endpoint": "http",
    "instance": "10.244.0.17:8080",
    "job": "kube-state-metrics",
    "namespace": "shop-eu",
    "pod": "checkout-7d4b9c6f5-x2x7q",
    "reason": "CrashLoopBackOff",
    "service": "kube-prometheus-stack-kube-state-metrics",
    "severity": "warning",
    "uid": "3b1f0c2e-9a7d-4c55-8e61-0f2d4a6b8c9e",
}

TEAM_CATALOGUE = """
- name: checkout_crashloop
  match:
    alertnames: [KubePodCrashLooping]
    severity: [warning, critical]
    namespaces: ["shop-*"]
    labels: {container: app}
  action: {type: Scale, params: {replicas: 4}}
  risk: low
- name: pod_crash
  keywords: [crash]
  action: {type: RolloutRestart}
  risk: medium
- name: default
  action: {type: RolloutRestart}
  risk: medium
"""


DEFAULT_RULE = "- name: default\n  action: {type: RolloutRestart}\n  risk: low\n"


def facts(labels: dict[str, str], namespace: str = "shop-eu") -> AlertFacts:
    return AlertFacts(labels.get("alertname"), namespace, labels)


def test_a_team_rule_takes_its_real_alert_before_the_keyword_rule() -> None:
    catalogue = load_catalogue(TEAM_CATALOGUE)
    match = catalogue.match(["KubePodCrashLooping"], [facts(CRASH_LOOPING)])
    assert [hit.rule.name for hit in match.hits] == ["checkout_crashloop", "pod_crash", "default"]
    assert "matches alertname in ['KubePodCrashLooping']" in match.first.explain()

    decision = decide(
        DecisionInput(alert_names=("KubePodCrashLooping",), severity=Severity.P2,
                      target=IncidentTarget("shop-eu", TargetKind.DEPLOYMENT, "checkout"),
                      alerts=(facts(CRASH_LOOPING),)),
        catalogue,
    )
    assert (decision.matched_rule, decision.action.type) == ("checkout_crashloop", ActionType.SCALE)

    elsewhere = catalogue.match(["KubePodCrashLooping"], [facts(CRASH_LOOPING, namespace="billing")])
    assert [hit.rule.name for hit in elsewhere.hits] == ["pod_crash", "default"], "keywords stay the fallback"


def test_every_condition_must_hold_for_one_and_the_same_alert() -> None:
    catalogue = load_catalogue(TEAM_CATALOGUE)
    wrong_container = {**CRASH_LOOPING, "container": "sidecar"}
    other_alert = {"alertname": "KubeContainerWaiting", "container": "app", "severity": "warning"}
    # The name is on one alert, the container on another: no alert satisfies the selector.
    assert catalogue.match([], [facts(wrong_container), facts(other_alert)]).first.rule.name == "default"
    assert catalogue.match([], [facts(wrong_container), facts(CRASH_LOOPING)]).first.rule.name == "checkout_crashloop"
    lower_case = {**CRASH_LOOPING, "alertname": "kubepodcrashlooping"}
    assert catalogue.match([], [facts(lower_case)]).first.rule.name == "default", "alert names are exact"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("- name: kw\n  keywords: [x]\n  action: {type: RolloutRestart}\n  risk: low\n" +
         "- name: sel\n  match: {alertnames: [A]}\n  action: {type: RolloutRestart}\n  risk: low\n" + DEFAULT_RULE,
         r"rules\[1\]\.match: selector rules are tried before keyword rules"),
        ("- name: both\n  keywords: [x]\n  match: {alertnames: [A]}\n  action: {type: RolloutRestart}\n  risk: low\n" + DEFAULT_RULE,
         r"rules\[0\] \(both\): match: a rule matches by selector or by keywords, not both"),
        ("- name: empty\n  match: {}\n  action: {type: RolloutRestart}\n  risk: low\n" + DEFAULT_RULE,
         r"rules\[0\] \(empty\): match: .*needs at least one of alertnames"),
        ("- name: glob\n  match: {namespaces: ['Shop Prod']}\n  action: {type: RolloutRestart}\n  risk: low\n" + DEFAULT_RULE,
         r"rules\[0\] \(glob\): match\.namespaces\[0\]"),
        ("- name: label\n  match: {labels: {team: ''}}\n  action: {type: RolloutRestart}\n  risk: low\n" + DEFAULT_RULE,
         r"rules\[0\] \(label\): match\.labels\.team"),
        ("- name: typo\n  match: {alertname: [A]}\n  action: {type: RolloutRestart}\n  risk: low\n" + DEFAULT_RULE,
         r"rules\[0\] \(typo\): match\.alertname: Extra inputs are not permitted"),
        ("- name: sel\n  match: {alertnames: [A]}\n  action: {type: RolloutRestart}\n  risk: low\n",
         r"rules\[0\]\.match: the last rule must have neither keywords nor match"),
    ],
)
def test_bad_selector_catalogues_are_refused_naming_the_rule_and_field(yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_catalogue(yaml_text, source="rule catalogue rules.yaml")


label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True)
label_values = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
label_sets = st.dictionaries(label_names, label_values, min_size=1, max_size=12)


@given(label_sets, st.data())
def test_a_selector_of_an_alerts_own_labels_matches_it_and_a_changed_value_does_not(
    labels: dict[str, str], data: st.DataObject
) -> None:
    chosen = data.draw(st.lists(st.sampled_from(sorted(labels)), min_size=1, unique=True))
    selector = AlertSelector(labels=tuple((name, labels[name]) for name in chosen))
    assert selector.matches(AlertFacts(None, "ns", labels))
    changed = data.draw(st.sampled_from(chosen))
    altered = {**labels, changed: labels[changed] + data.draw(label_values)}
    assert not selector.matches(AlertFacts(None, "ns", altered))
    assert not selector.matches(AlertFacts(None, "ns", {k: v for k, v in labels.items() if k != changed}))


namespaces = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
globs = st.from_regex(r"[a-z0-9*?\-]{1,12}", fullmatch=True)


@given(namespaces, st.lists(globs, min_size=1, max_size=4))
def test_namespace_globs_match_exactly_what_fnmatchcase_says(namespace: str, patterns: list[str]) -> None:
    selector = AlertSelector(namespaces=tuple(patterns))
    expected = any(fnmatch.fnmatchcase(namespace, glob) for glob in patterns)
    assert selector.matches(AlertFacts("A", namespace)) is expected
