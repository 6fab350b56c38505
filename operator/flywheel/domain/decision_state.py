"""The decision state machine of SPEC §2: Init → Analyzing → Ready → Executing → Completed, or Error.

Pure: the Incident controller (Init, Analyzing, Ready) and the Run controller (Executing,
Completed, Error once its Run acts or ends) ask this table before they write
``status.decision.state``; every other change is refused with a reason.

- Init: the decision has an id, nothing is decided yet.
- Analyzing: the advisors are being asked.
- Ready: the action is chosen and its Run created (it may wait for admission or approval).
- Executing: the Run acts on the workload.
- Completed: the Run ended — succeeded, failed or timed out (a failed one gives the Incident its
  next decision, see :mod:`flywheel.domain.ladder`) — or a person resolved the Incident.
- Error: the decision cannot be carried out (its Run was cancelled, deciding failed), with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flywheel.api.enums import DecisionState
from flywheel.errors import FlywheelError

FINAL_DECISION_STATES: frozenset[DecisionState] = frozenset({DecisionState.COMPLETED, DecisionState.ERROR})

DECISION_TRANSITIONS: Mapping[DecisionState, frozenset[DecisionState]] = {
    DecisionState.INIT: frozenset({DecisionState.ANALYZING, DecisionState.READY, DecisionState.ERROR}),
    DecisionState.ANALYZING: frozenset({DecisionState.READY, DecisionState.ERROR}),
    # Ready → Completed: the Run ended before anyone saw it act (refused at once, or a person resolved it).
    DecisionState.READY: frozenset({DecisionState.EXECUTING, DecisionState.COMPLETED, DecisionState.ERROR}),
    DecisionState.EXECUTING: frozenset({DecisionState.COMPLETED, DecisionState.ERROR}),
    DecisionState.COMPLETED: frozenset(),
    DecisionState.ERROR: frozenset(),
}


class IllegalDecisionTransitionError(FlywheelError):
    """A decision state change the table does not allow."""

    def __init__(self, current: DecisionState, target: DecisionState, reason: str) -> None:
        super().__init__(f"decision {current.value} → {target.value} refused: {reason}")
        self.current = current
        self.target = target
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DecisionTransition:
    allowed: bool
    current: DecisionState
    target: DecisionState
    reason: str


def check_decision_transition(current: DecisionState | None, target: DecisionState) -> DecisionTransition:
    """Whether ``current → target`` is allowed (a decision not written yet is Init), with the reason."""
    source = DecisionState.INIT if current is None else current
    if source in FINAL_DECISION_STATES:
        return DecisionTransition(False, source, target, f"{source.value} is final; a new decision has a new id")
    if source == target:
        return DecisionTransition(False, source, target, f"the decision is already {source.value}")
    if target in DECISION_TRANSITIONS[source]:
        return DecisionTransition(True, source, target, f"{source.value} may move to {target.value}")
    allowed = ", ".join(sorted(state.value for state in DECISION_TRANSITIONS[source]))
    return DecisionTransition(
        False, source, target, f"{source.value} can only move to {allowed}, not to {target.value}"
    )


def decision_transition(current: DecisionState | None, target: DecisionState) -> DecisionState:
    """``target`` if allowed, else :class:`IllegalDecisionTransitionError`."""
    verdict = check_decision_transition(current, target)
    if not verdict.allowed:
        raise IllegalDecisionTransitionError(verdict.current, verdict.target, verdict.reason)
    return target


__all__ = [
    "DECISION_TRANSITIONS",
    "FINAL_DECISION_STATES",
    "DecisionTransition",
    "IllegalDecisionTransitionError",
    "check_decision_transition",
    "decision_transition",
]
