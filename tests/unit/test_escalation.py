"""Escalation levels and the history-aware skip policy (pure logic).

Scenarios:
- default thresholds 3/5/10 at and around each boundary (2/3, 4/5, 9/10);
- thresholds are validated (>= 1, never descending) and configurable; equal thresholds
  resolve to the higher level;
- the skip policy: fewer than 2 attempts never skip; a rate of exactly 20% does not skip;
  anything below does;
- properties over arbitrary valid thresholds and counts (Hypothesis).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.api.enums import EscalationLevel
from flywheel.domain.escalation import (
    ActionStats,
    EscalationThresholds,
    escalation_level,
    should_skip_action,
)
from flywheel.errors import ConfigurationError, InvalidInputError

pytestmark = pytest.mark.unit

DEFAULTS = EscalationThresholds()

# Rank of each level, so that properties can say "never goes down".
LEVEL_RANK: dict[EscalationLevel | None, int] = {
    None: 0,
    EscalationLevel.REPEAT: 1,
    EscalationLevel.ESCALATE: 2,
    EscalationLevel.PERMANENT_FIX: 3,
}


def test_default_thresholds_are_those_of_the_spec() -> None:
    assert (DEFAULTS.repeat, DEFAULTS.escalate, DEFAULTS.permanent_fix) == (3, 5, 10)


@pytest.mark.parametrize(
    ("count_24h", "expected"),
    [
        (0, None),
        (1, None),
        (2, None),
        (3, EscalationLevel.REPEAT),
        (4, EscalationLevel.REPEAT),
        (5, EscalationLevel.ESCALATE),
        (9, EscalationLevel.ESCALATE),
        (10, EscalationLevel.PERMANENT_FIX),
        (11, EscalationLevel.PERMANENT_FIX),
        (10_000, EscalationLevel.PERMANENT_FIX),
    ],
)
def test_level_at_default_boundaries(count_24h: int, expected: EscalationLevel | None) -> None:
    assert escalation_level(count_24h, DEFAULTS) == expected


def test_configured_thresholds_move_the_boundaries() -> None:
    strict = EscalationThresholds(repeat=2, escalate=3, permanent_fix=4)
    assert [escalation_level(count, strict) for count in range(1, 6)] == [
        None,
        EscalationLevel.REPEAT,
        EscalationLevel.ESCALATE,
        EscalationLevel.PERMANENT_FIX,
        EscalationLevel.PERMANENT_FIX,
    ]


def test_equal_thresholds_resolve_to_the_higher_level() -> None:
    no_escalate_step = EscalationThresholds(repeat=3, escalate=6, permanent_fix=6)
    assert escalation_level(5, no_escalate_step) == EscalationLevel.REPEAT
    assert escalation_level(6, no_escalate_step) == EscalationLevel.PERMANENT_FIX


@pytest.mark.parametrize(
    ("repeat", "escalate", "permanent_fix"),
    [(5, 3, 10), (3, 10, 5), (10, 5, 3), (0, 5, 10), (-1, 5, 10), (3, 5, 0)],
)
def test_thresholds_that_do_not_ascend_or_are_below_one_are_refused(
    repeat: int, escalate: int, permanent_fix: int
) -> None:
    with pytest.raises(ConfigurationError, match="threshold"):
        EscalationThresholds(repeat=repeat, escalate=escalate, permanent_fix=permanent_fix)


def test_a_boolean_threshold_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="repeat"):
        EscalationThresholds(repeat=True, escalate=5, permanent_fix=10)


def test_a_negative_count_is_refused() -> None:
    with pytest.raises(InvalidInputError) as raised:
        escalation_level(-1, DEFAULTS)
    assert raised.value.field == "count_24h"


@pytest.mark.parametrize(
    ("attempts", "successes", "skip"),
    [
        (0, 0, False),  # never tried
        (1, 0, False),  # one failure is not evidence enough
        (2, 0, True),  # two failures: 0% over the minimum of 2 attempts
        (2, 1, False),
        (5, 1, False),  # exactly 20% is not below 20%
        (6, 1, True),  # 16.7%
        (10, 2, False),  # exactly 20% again
        (10, 1, True),
        (100, 19, True),
        (100, 20, False),
    ],
)
def test_skip_policy_boundaries(attempts: int, successes: int, skip: bool) -> None:
    assert should_skip_action(ActionStats(attempts=attempts, successes=successes)) is skip


def test_skip_policy_parameters_are_honoured() -> None:
    three_failures_of_four = ActionStats(attempts=4, successes=1)
    assert should_skip_action(three_failures_of_four, min_attempts=5) is False
    assert should_skip_action(three_failures_of_four, min_success_rate=0.25) is False
    assert should_skip_action(three_failures_of_four, min_success_rate=0.3) is True


@pytest.mark.parametrize(
    ("min_attempts", "min_success_rate", "field"),
    [(0, 0.2, "min_attempts"), (2, -0.1, "min_success_rate"), (2, 1.5, "min_success_rate")],
)
def test_skip_policy_refuses_meaningless_parameters(
    min_attempts: int, min_success_rate: float, field: str
) -> None:
    with pytest.raises(InvalidInputError) as raised:
        should_skip_action(ActionStats(attempts=3, successes=0), min_attempts, min_success_rate)
    assert raised.value.field == field


def test_success_rate() -> None:
    assert ActionStats(attempts=0, successes=0).success_rate == 0.0
    assert ActionStats(attempts=4, successes=1).success_rate == 0.25
    assert ActionStats(attempts=3, successes=3).success_rate == 1.0


@pytest.mark.parametrize(("attempts", "successes"), [(-1, 0), (1, -1), (2, 3)])
def test_impossible_action_stats_are_refused(attempts: int, successes: int) -> None:
    with pytest.raises(InvalidInputError):
        ActionStats(attempts=attempts, successes=successes)


ascending_thresholds = st.lists(st.integers(min_value=1, max_value=1_000), min_size=3, max_size=3).map(
    lambda values: EscalationThresholds(*sorted(values))
)
counts = st.integers(min_value=0, max_value=2_000)


@given(thresholds=ascending_thresholds, count_24h=counts)
def test_level_matches_the_threshold_intervals(thresholds: EscalationThresholds, count_24h: int) -> None:
    level = escalation_level(count_24h, thresholds)
    if count_24h >= thresholds.permanent_fix:
        assert level == EscalationLevel.PERMANENT_FIX
    elif count_24h >= thresholds.escalate:
        assert level == EscalationLevel.ESCALATE
    elif count_24h >= thresholds.repeat:
        assert level == EscalationLevel.REPEAT
    else:
        assert level is None


@given(thresholds=ascending_thresholds, count_24h=counts)
def test_one_more_occurrence_never_lowers_the_level(thresholds: EscalationThresholds, count_24h: int) -> None:
    assert (
        LEVEL_RANK[escalation_level(count_24h + 1, thresholds)]
        >= LEVEL_RANK[escalation_level(count_24h, thresholds)]
    )


@given(thresholds=ascending_thresholds)
def test_each_threshold_is_where_its_level_starts(thresholds: EscalationThresholds) -> None:
    for threshold in (thresholds.repeat, thresholds.escalate, thresholds.permanent_fix):
        assert (
            LEVEL_RANK[escalation_level(threshold, thresholds)]
            > LEVEL_RANK[escalation_level(threshold - 1, thresholds)]
        )


@given(values=st.lists(st.integers(min_value=1, max_value=1_000), min_size=3, max_size=3, unique=True))
def test_any_order_but_ascending_is_refused(values: list[int]) -> None:
    if values == sorted(values):
        EscalationThresholds(*values)
    else:
        with pytest.raises(ConfigurationError):
            EscalationThresholds(*values)


@given(data=st.data())
def test_skip_means_at_least_two_attempts_below_one_in_five(data: st.DataObject) -> None:
    attempts = data.draw(st.integers(min_value=0, max_value=10_000), label="attempts")
    successes = data.draw(st.integers(min_value=0, max_value=attempts), label="successes")
    # Integer form of "successes / attempts < 0.2", free of floating-point doubt.
    expected = attempts >= 2 and 5 * successes < attempts
    assert should_skip_action(ActionStats(attempts=attempts, successes=successes)) is expected
