"""The bounded remediation ladder: what an active Incident does once its decision's Run failed.

Pure. A Run that ends Failed or TimedOut completes its decision; the Incident then gets its next
decision (sequence 2, 3, …, Run ``<incident>-2``, …) — the failure is already in the repair
history, so the history-aware choice moves on — until ``max_decisions`` decisions were made;
then the ladder is exhausted and a person must act. Decisions after the first require
approval unless the operator allows the ladder to climb on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.api.enums import RunState
from flywheel.errors import InvalidInputError

# Final Run states that send the Incident up the ladder (a Cancelled Run does not: nothing failed).
LADDER_RUN_STATES: frozenset[RunState] = frozenset({RunState.FAILED, RunState.TIMED_OUT})


@dataclass(frozen=True, slots=True)
class LadderPolicy:
    max_decisions: int = 3
    later_decisions_require_approval: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.max_decisions, bool) or self.max_decisions < 1:
            raise InvalidInputError("max_decisions_per_incident", f"must be an integer >= 1, got {self.max_decisions!r}")


@dataclass(frozen=True, slots=True)
class NextDecision:
    """Decide again, as decision number ``sequence``."""

    sequence: int
    requires_approval: bool


@dataclass(frozen=True, slots=True)
class LadderExhausted:
    """No decision is left: the Incident is NotRemediated and waits for a person."""

    decisions: int
    message: str


def next_rung(current_sequence: int, policy: LadderPolicy) -> NextDecision | LadderExhausted:
    """What follows decision ``current_sequence`` whose Run failed or timed out."""
    if current_sequence < 1:
        raise InvalidInputError("status.decision.sequence", f"must be >= 1, got {current_sequence}")
    if current_sequence >= policy.max_decisions:
        return LadderExhausted(
            decisions=current_sequence,
            message=(
                f"{current_sequence} decision(s) made, none remediated the Incident "
                f"(at most {policy.max_decisions} per Incident): a person must act"
            ),
        )
    return NextDecision(current_sequence + 1, requires_approval=policy.later_decisions_require_approval)


def rung_requires_approval(sequence: int, decided: bool, policy: LadderPolicy) -> bool:
    """Whether the decision numbered ``sequence`` waits for approval, given what the rules decided."""
    return decided or (sequence > 1 and policy.later_decisions_require_approval)


__all__ = [
    "LADDER_RUN_STATES",
    "LadderExhausted",
    "LadderPolicy",
    "NextDecision",
    "next_rung",
    "rung_requires_approval",
]
