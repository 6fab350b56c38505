"""Older systems' action names read as today's (``flywheel.domain.legacy_actions``).

Scenario matrix:
- the older anomaly counter's names (``restart_pod``, ``scale_up``) and the older rule
  engine's kubectl command lines map to RolloutRestart, Scale and RolloutUndo; today's names
  map to themselves;
- names without a clear counterpart (``scale_down``, ``delete_pod``, other kubectl verbs,
  case variants) are left out;
- outcomes of an older name are added to today's; whatever names the history holds, every
  resulting entry is one an Approval's ``previousOutcomes`` accepts (Hypothesis).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.api.approval import PreviousOutcome
from flywheel.api.enums import ActionType
from flywheel.domain.escalation import ActionStats
from flywheel.domain.legacy_actions import current_action, current_action_stats

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("restart_pod", ActionType.ROLLOUT_RESTART),
        ("scale_up", ActionType.SCALE),
        ("kubectl rollout restart deployment/checkout", ActionType.ROLLOUT_RESTART),
        ("kubectl rollout restart deployment/{target}", ActionType.ROLLOUT_RESTART),
        ("kubectl scale deployment/checkout --replicas=3", ActionType.SCALE),
        ("kubectl scale --replicas=2 deployment/checkout", ActionType.SCALE),
        ("kubectl rollout undo deployment/checkout", ActionType.ROLLOUT_UNDO),
        ("RolloutRestart", ActionType.ROLLOUT_RESTART),
        ("Scale", ActionType.SCALE),
        ("RolloutUndo", ActionType.ROLLOUT_UNDO),
        (" restart_pod ", ActionType.ROLLOUT_RESTART),
    ],
)
def test_names_with_a_clear_meaning_map_to_today_s_action(name: str, expected: ActionType) -> None:
    assert current_action(name) is expected


@pytest.mark.parametrize(
    "name",
    [
        "scale_down",
        "delete_pod",
        "restart_node",
        "Restart_Pod",
        "rolloutrestart",
        "kubectl delete pod checkout-abc",
        "kubectl scale deployment/checkout",  # no replica count: not a Scale we could compare
        "kubectl rollout status deployment/checkout",
        "",
    ],
)
def test_names_without_a_clear_counterpart_are_left_out(name: str) -> None:
    assert current_action(name) is None


def test_outcomes_of_an_older_name_add_to_today_s_and_unknown_ones_are_dropped() -> None:
    merged = current_action_stats(
        {
            "restart_pod": ActionStats(attempts=10, successes=3),
            "RolloutRestart": ActionStats(attempts=2, successes=2),
            "scale_up": ActionStats(attempts=2, successes=1),
            "clear_cache": ActionStats(attempts=5, successes=5),
        }
    )
    assert merged == {
        ActionType.ROLLOUT_RESTART: ActionStats(attempts=12, successes=5),
        ActionType.SCALE: ActionStats(attempts=2, successes=1),
    }


outcomes = st.integers(min_value=0, max_value=100).flatmap(
    lambda attempts: st.builds(ActionStats, attempts=st.just(attempts), successes=st.integers(0, attempts))
)
names = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["restart_pod", "scale_up", "RolloutUndo", "kubectl rollout undo deployment/x"]),
)


@given(st.dictionaries(names, outcomes, max_size=12))
def test_whatever_the_history_holds_every_entry_is_a_valid_previous_outcome(
    history: dict[str, ActionStats],
) -> None:
    for action, outcome in current_action_stats(history).items():
        PreviousOutcome.model_validate(
            {"action": action.value, "attempts": outcome.attempts, "successes": outcome.successes}
        )
