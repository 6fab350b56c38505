"""The rule catalogue: spec order, every keyword, the catch-all, a ConfigMap format naming its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.api.enums import ActionType, RiskLevel
from flywheel.domain.actions import ActionTemplate
from flywheel.domain.rules import (
    RuleCatalogue,
    configured_catalogue,
    default_catalogue,
    default_catalogue_text,
    load_catalogue,
    load_catalogue_file,
)
from flywheel.errors import ConfigurationError, InvalidInputError

pytestmark = pytest.mark.unit

DEFAULT_YAML = Path(__file__).resolve().parents[2] / "operator" / "flywheel" / "rules" / "default.yaml"

SPEC_KEYWORDS = {
    "pod_crash": ("crash", "restart", "oom", "killed", "failed"),
    "high_latency": ("latency", "slow", "timeout", "p99"),
    "high_error_rate": ("error", "5xx", "fail", "exception"),
    "resource_exhaustion": ("cpu", "memory", "resource", "quota"),
}

MINIMAL_CATCH_ALL = """
- name: fallback
  keywords: []
  action: {type: RolloutRestart}
  risk: medium
"""


def test_default_catalogue_is_the_spec_catalogue_in_order() -> None:
    catalogue = default_catalogue()
    summary = [
        (rule.name, rule.keywords, rule.action, rule.risk, rule.confidence, rule.enabled)
        for rule in catalogue
    ]
    assert summary == [
        (
            "pod_crash",
            SPEC_KEYWORDS["pod_crash"],
            ActionTemplate(ActionType.ROLLOUT_RESTART),
            RiskLevel.MEDIUM,
            0.75,
            True,
        ),
        (
            "high_latency",
            SPEC_KEYWORDS["high_latency"],
            ActionTemplate(ActionType.SCALE, replicas=3),
            RiskLevel.LOW,
            0.75,
            True,
        ),
        (
            "high_error_rate",
            SPEC_KEYWORDS["high_error_rate"],
            ActionTemplate(ActionType.ROLLOUT_UNDO),
            RiskLevel.CRITICAL,
            0.75,
            True,
        ),
        (
            "resource_exhaustion",
            SPEC_KEYWORDS["resource_exhaustion"],
            ActionTemplate(ActionType.SCALE, replicas=2),
            RiskLevel.MEDIUM,
            0.75,
            True,
        ),
        ("default", (), ActionTemplate(ActionType.ROLLOUT_RESTART), RiskLevel.MEDIUM, 0.75, True),
    ]
    assert catalogue.playbook_count == 5


def test_the_shipped_yaml_file_is_what_the_code_loads() -> None:
    assert default_catalogue_text() == DEFAULT_YAML.read_text(encoding="utf-8")
    from_file = load_catalogue_file(DEFAULT_YAML)
    assert from_file.rules == default_catalogue().rules


def test_configured_catalogue_uses_the_file_when_set(tmp_path: Path) -> None:
    assert configured_catalogue(None) is default_catalogue()
    assert configured_catalogue("") is default_catalogue()
    path = tmp_path / "rules.yaml"
    path.write_text(MINIMAL_CATCH_ALL, encoding="utf-8")
    assert [rule.name for rule in configured_catalogue(str(path))] == ["fallback"]


@pytest.mark.parametrize(
    ("rule_name", "keyword"),
    [(rule_name, keyword) for rule_name, keywords in SPEC_KEYWORDS.items() for keyword in keywords],
)
def test_every_keyword_selects_its_rule(rule_name: str, keyword: str) -> None:
    # Padding with letters that contain no keyword, in upper case: matching is case-insensitive.
    alert_name = f"Zz{keyword.upper()}Zz"
    match = default_catalogue().match([alert_name])
    assert match.rule.name == rule_name
    assert match.keyword == keyword


def test_rule_order_decides_when_several_rules_match() -> None:
    match = default_catalogue().match(["PodOOMKilledSlow"])
    assert match.rule.name == "pod_crash"
    assert [hit.rule.name for hit in match.hits] == ["pod_crash", "high_latency", "default"]


def test_failed_is_a_crash_but_fail_is_an_error_rate() -> None:
    assert default_catalogue().match(["JobFailed"]).rule.name == "pod_crash"
    assert default_catalogue().match(["RequestsFail"]).rule.name == "high_error_rate"


def test_catalogue_order_wins_over_alert_order() -> None:
    match = default_catalogue().match(["CPUThrottlingHigh", "KubePodCrashLooping"])
    assert match.rule.name == "pod_crash"
    assert match.first.alert_name == "kubepodcrashlooping"
    assert [hit.rule.name for hit in match.hits] == ["pod_crash", "resource_exhaustion", "default"]


@pytest.mark.parametrize("alert_names", [[], [None], [""], ["DiskPressure"], [None, "Watchdog"]])
def test_unmatched_alerts_fall_back_to_the_default_rule(alert_names: list[str | None]) -> None:
    match = default_catalogue().match(alert_names)
    assert match.rule.name == "default"
    assert match.keyword is None
    assert len(match.hits) == 1


def test_disabled_rules_never_match_and_are_not_playbooks() -> None:
    catalogue = load_catalogue(
        """
- name: restarts
  keywords: [Crash]
  action: {type: RolloutRestart}
  risk: medium
  enabled: false
- name: scale
  keywords: [crash]
  action: {type: Scale, params: {replicas: 4}}
  risk: low
  confidence: 0.5
  description: "  padded  "
"""
        + MINIMAL_CATCH_ALL
    )
    assert catalogue.playbook_count == 2
    assert catalogue.rules[0].keywords == ("crash",)  # keywords are lower-cased on load
    match = catalogue.match(["PodCrashLooping"])
    assert match.rule.name == "scale"
    assert match.rule.confidence == 0.5
    assert match.rule.description == "padded"
    assert catalogue.action_types == frozenset({ActionType.SCALE, ActionType.ROLLOUT_RESTART})


def test_advisor_risk_is_the_highest_the_catalogue_assigns() -> None:
    catalogue = default_catalogue()
    assert catalogue.risk_for(ActionType.SCALE) is RiskLevel.MEDIUM  # low for latency, medium for resources
    assert catalogue.risk_for(ActionType.ROLLOUT_UNDO) is RiskLevel.CRITICAL
    only_restart = load_catalogue(MINIMAL_CATCH_ALL)
    assert only_restart.action_types == frozenset({ActionType.ROLLOUT_RESTART})
    with pytest.raises(InvalidInputError, match="not offered"):
        only_restart.risk_for(ActionType.ROLLOUT_UNDO)


def _rule(body: str) -> str:
    return body + MINIMAL_CATCH_ALL


@pytest.mark.parametrize(
    ("yaml_text", "expected_message"),
    [
        ("pod_crash: {}", "must be a YAML list of rules, found dict"),
        ("", "must be a YAML list of rules, found nothing"),
        ("- [unclosed", "not valid YAML"),
        ("[]", "the catalogue is empty"),
        (_rule("- just-a-string\n"), r"rules\[0\]: must be a mapping"),
        (
            _rule("- name: a\n  action: {type: RolloutRestart}\n  risk: low\n"),
            r"rules\[0\]\.keywords: only the last rule may have neither keywords nor match",
        ),
        (
            _rule("- name: a\n  keywords: [x]\n  action: {type: Reboot}\n  risk: low\n"),
            r"rules\[0\] \(a\): action\.type: Input should be 'RolloutRestart', 'Scale' or 'RolloutUndo'",
        ),
        (
            _rule("- name: a\n  keywords: [x]\n  action: {type: Scale}\n  risk: low\n"),
            r"rules\[0\] \(a\): action\.params\.replicas: Scale requires a replica count",
        ),
        (
            _rule(
                "- name: a\n  keywords: [x]\n  action: {type: Scale, params: {replicas: 0}}\n  risk: low\n"
            ),
            r"rules\[0\] \(a\): action\.params\.replicas: Input should be greater than or equal to 1",
        ),
        (
            _rule(
                "- name: a\n  keywords: [x]\n  action: {type: Scale, params: {replicas: '3'}}\n  risk: low\n"
            ),
            r"action\.params\.replicas: Input should be a valid integer",
        ),
        (
            _rule(
                "- name: a\n  keywords: [x]\n"
                "  action: {type: RolloutRestart, params: {replicas: 2}}\n  risk: low\n"
            ),
            r"rules\[0\] \(a\): action\.params\.replicas: RolloutRestart takes no parameters",
        ),
        (
            _rule(
                "- name: a\n  keywords: [x]\n"
                "  action: {type: RolloutUndo, params: {toRevision: 0}}\n  risk: low\n"
            ),
            r"action\.params\.toRevision: Input should be greater than or equal to 1",
        ),
        (
            _rule(
                "- name: a\n  keywords: [x]\n"
                "  action: {type: RolloutUndo, command: 'rm -rf /'}\n  risk: low\n"
            ),
            r"rules\[0\] \(a\): action\.command: Extra inputs are not permitted",
        ),
        (
            _rule("- name: a\n  keywords: [x]\n  action: {type: RolloutUndo}\n  risk: severe\n"),
            r"rules\[0\] \(a\): risk: Input should be 'low', 'medium', 'high' or 'critical'",
        ),
        (
            _rule(
                "- name: a\n  keywords: [x]\n  action: {type: RolloutUndo}\n  risk: low\n  confidence: 1.5\n"
            ),
            r"rules\[0\] \(a\): confidence: Input should be less than or equal to 1",
        ),
        (
            _rule("- name: a\n  keywords: [x, '  ']\n  action: {type: RolloutUndo}\n  risk: low\n"),
            r"rules\[0\] \(a\): keywords: a keyword cannot be blank",
        ),
        (
            _rule(
                "- name: a\n  keywords: [x]\n  action: {type: RolloutUndo}\n  risk: low\n  enabled: 'yes'\n"
            ),
            r"rules\[0\] \(a\): enabled: Input should be a valid boolean",
        ),
        (
            _rule("- name: fallback\n  keywords: [x]\n  action: {type: RolloutUndo}\n  risk: low\n"),
            r"rules\[1\]\.name: 'fallback' is already used by rules\[0\]",
        ),
        (
            MINIMAL_CATCH_ALL + "- name: late\n  keywords: [x]\n  action: {type: RolloutUndo}\n  risk: low\n",
            r"rules\[0\]\.keywords: only the last rule may have neither keywords nor match",
        ),
        (
            "- name: a\n  keywords: [x]\n  action: {type: RolloutUndo}\n  risk: low\n",
            r"rules\[0\]\.keywords: the last rule must have neither keywords nor match",
        ),
        (
            MINIMAL_CATCH_ALL + "  enabled: false\n",
            r"rules\[0\]\.enabled: the catch-all rule cannot be disabled",
        ),
    ],
)
def test_invalid_catalogues_are_refused_naming_rule_and_field(yaml_text: str, expected_message: str) -> None:
    with pytest.raises(ConfigurationError, match=expected_message) as caught:
        load_catalogue(yaml_text, source="configmap flywheel-rules")
    assert str(caught.value).startswith("configmap flywheel-rules")


def test_unreadable_file_is_a_configuration_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigurationError, match=f"rule catalogue {missing}: cannot be read"):
        load_catalogue_file(missing)


def test_errors_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        _rule("- name: a\n  keywords: [x]\n  action: {type: Scale}\n  risk: low\n"), encoding="utf-8"
    )
    with pytest.raises(
        ConfigurationError, match=rf"rule catalogue {path}: rules\[0\] \(a\): action\.params\.replicas"
    ):
        load_catalogue_file(path)


def test_catalogue_object_is_introspectable() -> None:
    catalogue = RuleCatalogue(default_catalogue().rules, source="copy")
    assert len(catalogue) == 5
    assert catalogue.catch_all.name == "default"
    assert "pod_crash" in repr(catalogue)
