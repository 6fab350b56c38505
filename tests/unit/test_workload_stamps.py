"""The pure helpers behind exactly-once workload actions.

Scenario matrix:
- the action log: stamps are found per Run and attempt (a rollback once per Run), kept
  bounded, unreadable logs count as empty;
- merge patches turn a template into exactly another one (removals as null);
- rollback targets: the previous revision, an explicit one, refusals naming what exists;
- rollout facts read from Deployment and StatefulSet bodies.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from flywheel.api.enums import ActionType, TargetKind
from flywheel.domain.run_state import ActionNotApplicableError, RolloutState, classify_rollout
from flywheel.stores.workloads import (
    ACTION_LOG_ANNOTATION,
    ACTION_LOG_LENGTH,
    RUN_ATTEMPT_ANNOTATION,
    RUN_UID_ANNOTATION,
    ActionStamp,
    action_log,
    already_applied,
    choose_revision,
    merge_patch,
    rollout_facts,
    stamp_annotations,
)

pytestmark = pytest.mark.unit

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def workload(entries: list[dict[str, Any]] | str | None = None) -> dict[str, Any]:
    annotations = {}
    if entries is not None:
        annotations[ACTION_LOG_ANNOTATION] = entries if isinstance(entries, str) else json.dumps(entries)
    return {"metadata": {"annotations": annotations}}


def test_a_stamp_is_found_for_its_run_and_attempt_or_a_later_one() -> None:
    body = workload([{"run": "r1", "attempt": 2, "action": "RolloutRestart"}])
    assert already_applied(body, ActionStamp("r1", 1, AT), ActionType.ROLLOUT_RESTART)
    assert already_applied(body, ActionStamp("r1", 2, AT), ActionType.ROLLOUT_RESTART)
    assert not already_applied(body, ActionStamp("r1", 3, AT), ActionType.ROLLOUT_RESTART)
    assert not already_applied(body, ActionStamp("r2", 1, AT), ActionType.ROLLOUT_RESTART)


def test_a_rollback_is_applied_once_per_run_whatever_the_attempt() -> None:
    body = workload([{"run": "r1", "attempt": 1, "action": "RolloutUndo"}])
    assert already_applied(body, ActionStamp("r1", 2, AT), ActionType.ROLLOUT_UNDO)
    assert not already_applied(body, ActionStamp("r2", 1, AT), ActionType.ROLLOUT_UNDO)


@pytest.mark.parametrize("raw", ["not json", json.dumps({"run": "r1"}), json.dumps([1, "x"])])
def test_an_unreadable_log_counts_as_empty(raw: str) -> None:
    assert action_log(workload(raw)) == []
    assert not already_applied(workload(raw), ActionStamp("r1", 1, AT), ActionType.SCALE)


def test_stamps_append_to_a_bounded_log_and_name_the_latest_run() -> None:
    entries = [{"run": f"old-{index}", "attempt": 1, "action": "Scale"} for index in range(ACTION_LOG_LENGTH)]
    annotations = stamp_annotations(workload(entries), ActionStamp("r9", 2, AT), ActionType.SCALE, {"x": "y"})
    log = json.loads(annotations[ACTION_LOG_ANNOTATION])
    assert len(log) == ACTION_LOG_LENGTH
    assert log[-1] == {"run": "r9", "attempt": 2, "action": "Scale", "at": "2025-03-01T12:00:00Z"}
    assert log[0]["run"] == "old-1", "the oldest entry goes first"
    assert (annotations[RUN_UID_ANNOTATION], annotations[RUN_ATTEMPT_ANNOTATION], annotations["x"]) == (
        "r9",
        "2",
        "y",
    )


def test_merge_patch_turns_one_template_into_exactly_the_other() -> None:
    current = {
        "metadata": {"labels": {"app": "web"}, "annotations": {"flywheel.dev/restartedAt": "t"}},
        "spec": {"containers": [{"name": "app", "image": "v2"}], "dnsPolicy": "ClusterFirst"},
    }
    desired = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "v1"}], "dnsPolicy": "ClusterFirst"},
    }
    patch = merge_patch(current, desired)
    assert patch == {
        "metadata": {"annotations": None},
        "spec": {"containers": [{"name": "app", "image": "v1"}]},
    }
    assert merge_patch(desired, desired) == {}


def test_rollback_targets() -> None:
    revisions = {1: "one", 2: "two", 4: "four"}
    assert choose_revision(revisions, 4, None, "Deployment/web") == (2, "two")
    assert choose_revision(revisions, 4, 1, "Deployment/web") == (1, "one")
    with pytest.raises(ActionNotApplicableError, match=r"no revision 3 \(known revisions: 1, 2, 4\)"):
        choose_revision(revisions, 4, 3, "Deployment/web")
    with pytest.raises(ActionNotApplicableError, match="no revision before 1"):
        choose_revision({1: "one"}, 1, None, "Deployment/web")


def test_rollout_facts_of_a_deployment() -> None:
    body = {
        "metadata": {"generation": 3},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 3,
            "replicas": 3,
            "updatedReplicas": 2,
            "readyReplicas": 2,
            "availableReplicas": 1,
            "conditions": [
                {"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "too slow"}
            ],
        },
    }
    facts = rollout_facts(TargetKind.DEPLOYMENT, body)
    assert (facts.generation, facts.observed_generation, facts.desired, facts.total) == (3, 3, 2, 3)
    assert (facts.updated, facts.ready, facts.available) == (2, 2, 1)
    assert facts.failure_reason == "ProgressDeadlineExceeded: too slow"
    assert not facts.revision_pending


@pytest.mark.parametrize(
    ("strategy", "pending"),
    [
        ({}, True),
        ({"type": "RollingUpdate"}, True),
        ({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}, False),
        ({"type": "OnDelete"}, False),
    ],
)
def test_rollout_facts_of_a_statefulset(strategy: dict[str, Any], pending: bool) -> None:
    body = {
        "metadata": {"generation": 1},
        "spec": {"updateStrategy": strategy},
        "status": {"observedGeneration": 1, "currentRevision": "db-1", "updateRevision": "db-2"},
    }
    facts = rollout_facts(TargetKind.STATEFULSET, body)
    assert facts.desired == 1, "replicas default to 1"
    assert facts.revision_pending is pending
    assert (facts.total, facts.updated, facts.ready, facts.available) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("status", "generation", "state"),
    [
        # as `kubectl rollout status daemonset`: observed generation, then updated, then available
        ({"observedGeneration": 1, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
          "updatedNumberScheduled": 3, "numberReady": 3, "numberAvailable": 3}, 2, RolloutState.PROGRESSING),
        ({"observedGeneration": 2, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
          "updatedNumberScheduled": 2, "numberReady": 3, "numberAvailable": 3}, 2, RolloutState.PROGRESSING),
        ({"observedGeneration": 2, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
          "updatedNumberScheduled": 3, "numberReady": 3, "numberAvailable": 2}, 2, RolloutState.PROGRESSING),
        ({"observedGeneration": 2, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
          "updatedNumberScheduled": 3, "numberReady": 3, "numberAvailable": 3}, 2, RolloutState.COMPLETE),
        # no eligible node: nothing to roll out
        ({"observedGeneration": 2}, 2, RolloutState.COMPLETE),
    ],
)
def test_rollout_of_a_daemonset(status: dict[str, Any], generation: int, state: RolloutState) -> None:
    body = {"metadata": {"generation": generation}, "spec": {}, "status": status}
    facts = rollout_facts(TargetKind.DAEMONSET, body)
    assert facts.desired == int(status.get("desiredNumberScheduled") or 0)
    assert classify_rollout(facts).state is state
