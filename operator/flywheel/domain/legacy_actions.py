"""Action names of the older system's repair history, read as today's action types.

The older anomaly counter shares its Redis keys with Flywheel, and its repair history names
actions its own way: ``restart_pod`` and ``scale_up`` (its ``record_repair_attempt``), or the
kubectl command line its rule engine proposed. Today's names are the :class:`ActionType`
values, and only those may reach a resource (an Approval's ``previousOutcomes`` is an enum):

| Older name                                   | Today's action   | Why it is the same         |
|----------------------------------------------|------------------|----------------------------|
| ``restart_pod``                              | RolloutRestart   | the workload's pods replaced |
| ``scale_up``                                 | Scale            | Flywheel's Scale only adds replicas |
| ``kubectl rollout restart <kind>/<name>``    | RolloutRestart   | the same command           |
| ``kubectl scale <kind>/<name> --replicas=N`` | Scale            | the same command           |
| ``kubectl rollout undo <kind>/<name>``       | RolloutUndo      | the same command           |
| ``RolloutRestart``, ``Scale``, ``RolloutUndo`` | itself         | already today's            |

Any other name (``scale_down``, ``delete_pod``, a command of another verb) has no clear
counterpart and is left out — it never makes a write fail, and never counts for an action it
may not have been.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from flywheel.api.enums import ActionType
from flywheel.domain.escalation import ActionStats

LEGACY_ACTION_NAMES: Final[Mapping[str, ActionType]] = {
    "restart_pod": ActionType.ROLLOUT_RESTART,
    "scale_up": ActionType.SCALE,
}

# kubectl's own spelling, as the older rule engine wrote its proposals.
_KUBECTL_COMMANDS: Final[tuple[tuple[re.Pattern[str], ActionType], ...]] = (
    (re.compile(r"^kubectl\s+rollout\s+restart\s+\S+"), ActionType.ROLLOUT_RESTART),
    (re.compile(r"^kubectl\s+rollout\s+undo\s+\S+"), ActionType.ROLLOUT_UNDO),
    (re.compile(r"^kubectl\s+scale\s.*--replicas[= ]\d+"), ActionType.SCALE),
)


def current_action(name: str) -> ActionType | None:
    """Today's action type for an action name found in repair history; None if there is none."""
    stripped = name.strip()
    try:
        return ActionType(stripped)
    except ValueError:
        pass
    if stripped in LEGACY_ACTION_NAMES:
        return LEGACY_ACTION_NAMES[stripped]
    for pattern, action in _KUBECTL_COMMANDS:
        if pattern.match(stripped):
            return action
    return None


def current_action_stats(stats: Mapping[str, ActionStats]) -> dict[ActionType, ActionStats]:
    """Outcomes per today's action type: older names added to theirs, unknown names left out."""
    merged: dict[ActionType, ActionStats] = {}
    for name, outcome in stats.items():
        action = current_action(name)
        if action is None:
            continue
        before = merged.get(action, ActionStats(attempts=0, successes=0))
        merged[action] = ActionStats(
            attempts=before.attempts + outcome.attempts, successes=before.successes + outcome.successes
        )
    return merged


__all__ = ["LEGACY_ACTION_NAMES", "current_action", "current_action_stats"]
