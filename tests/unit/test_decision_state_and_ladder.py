"""The decision state machine (SPEC §2) and the remediation ladder, pure.

- every (current, target) pair of DecisionState: allowed exactly when the table says so, final
  states have no exit, a state never moves to itself; random walks only ever take table edges;
- the ladder: decisions 2…max follow a failed one, approval after the first unless disabled,
  exhausted at the cap, invalid settings refused naming the field.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.api.enums import DecisionState
from flywheel.domain.decision_state import (
    DECISION_TRANSITIONS,
    FINAL_DECISION_STATES,
    IllegalDecisionTransitionError,
    check_decision_transition,
    decision_transition,
)
from flywheel.domain.ladder import (
    LadderExhausted,
    LadderPolicy,
    NextDecision,
    next_rung,
    rung_requires_approval,
)
from flywheel.errors import InvalidInputError

pytestmark = pytest.mark.unit


def test_the_table_covers_every_state() -> None:
    assert set(DECISION_TRANSITIONS) == set(DecisionState)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(DecisionState, DecisionState)))
def test_every_pair_is_allowed_exactly_as_the_table_says(current: DecisionState, target: DecisionState) -> None:
    verdict = check_decision_transition(current, target)
    expected = current not in FINAL_DECISION_STATES and current != target and target in DECISION_TRANSITIONS[current]
    assert verdict.allowed is expected, verdict.reason
    if expected:
        assert decision_transition(current, target) is target
    else:
        with pytest.raises(IllegalDecisionTransitionError) as refused:
            decision_transition(current, target)
        assert refused.value.reason == verdict.reason


def test_the_spec_path_and_its_error_exits() -> None:
    path = [DecisionState.ANALYZING, DecisionState.READY, DecisionState.EXECUTING, DecisionState.COMPLETED]
    state: DecisionState | None = None
    for target in path:
        state = decision_transition(state, target)
    for state in (DecisionState.INIT, DecisionState.ANALYZING, DecisionState.READY, DecisionState.EXECUTING):
        assert check_decision_transition(state, DecisionState.ERROR).allowed
    assert not check_decision_transition(DecisionState.COMPLETED, DecisionState.READY).allowed
    assert not check_decision_transition(None, DecisionState.EXECUTING).allowed, "unwritten means Init"


@given(st.lists(st.sampled_from(list(DecisionState)), max_size=12))
def test_random_walks_take_only_table_edges_and_stop_at_a_final_state(targets: list[DecisionState]) -> None:
    state = DecisionState.INIT
    for target in targets:
        if check_decision_transition(state, target).allowed:
            assert target in DECISION_TRANSITIONS[state]
            state = target
    if state in FINAL_DECISION_STATES:
        assert all(not check_decision_transition(state, t).allowed for t in DecisionState)


def test_the_ladder_climbs_to_the_cap_then_is_exhausted() -> None:
    policy = LadderPolicy(max_decisions=3)
    assert next_rung(1, policy) == NextDecision(2, requires_approval=True)
    assert next_rung(2, policy) == NextDecision(3, requires_approval=True)
    exhausted = next_rung(3, policy)
    assert isinstance(exhausted, LadderExhausted) and exhausted.decisions == 3
    assert "at most 3" in exhausted.message
    assert isinstance(next_rung(1, LadderPolicy(max_decisions=1)), LadderExhausted)


def test_later_decisions_act_on_their_own_only_when_allowed() -> None:
    free = LadderPolicy(later_decisions_require_approval=False)
    assert next_rung(1, free) == NextDecision(2, requires_approval=False)
    assert rung_requires_approval(2, False, LadderPolicy()) is True
    assert rung_requires_approval(1, False, LadderPolicy()) is False
    assert rung_requires_approval(2, False, free) is False
    assert rung_requires_approval(1, True, free) is True, "what the rules decided stays"


def test_invalid_ladder_input_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidInputError) as refused:
        LadderPolicy(max_decisions=0)
    assert refused.value.field == "max_decisions_per_incident"
    with pytest.raises(InvalidInputError):
        next_rung(0, LadderPolicy())
