"""The Run state machine and its pure policies.

Scenario matrix:
- transitions: every (from, to) pair of the 8 states is legal or refused exactly as the
  table says; refusals carry a reason; a Run without status counts as Pending;
- failure classes: API statuses map to error codes (transient ones retryable); error
  codes become CamelCase condition reasons;
- verification: rollout classification (generation not observed, updating, old pods
  left, not ready, not available, StatefulSet revision, deadline exceeded, complete);
  what a Verifying Run does next at and around its deadlines and attempt limit;
- deadlines: run deadline from start (or creation), attempt shares, timeout vs stale reaping;
- journal: sequence numbers keep growing, 50 entries kept, messages cut to 128 chars;
- safety limits: namespace and target concurrency at and around N, circuit breaker at
  and around M and at the window's edge, queue order, Shadow exemption, other namespaces.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from flywheel.api.enums import RunMode, RunState, TargetKind
from flywheel.api.run import MAX_STEPS, STEP_MESSAGE_MAX_LENGTH, RunStep, append_step
from flywheel.domain.run_state import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    AdmissionKind,
    IllegalTransitionError,
    NextStep,
    ObservedRun,
    RolloutFacts,
    RolloutState,
    RolloutVerdict,
    RunErrorCode,
    SafetyLimits,
    admit,
    attempt_deadline,
    check_transition,
    classify_api_status,
    classify_rollout,
    condition_reason,
    overdue,
    run_deadline,
    transition,
    verification_outcome,
)
from flywheel.errors import FlywheelError, InvalidInputError

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

P, W, R, V = RunState.PENDING, RunState.WAITING_APPROVAL, RunState.RUNNING, RunState.VERIFYING
S, F, C, T = RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT

# The table of SPEC §3, restated independently of the implementation.
LEGAL = {
    (P, R),
    (P, W),
    (P, C),
    (P, T),
    (P, F),  # not bound to a Flywheel decision: E-RUN-UNTRUSTED
    (W, R),
    (W, F),
    (W, C),
    (W, T),
    (R, V),
    (R, F),
    (R, C),
    (R, T),
    (V, S),
    (V, F),
    (V, R),
    (V, C),
    (V, T),
}


# --------------------------------------------------------------------------- transitions


@pytest.mark.parametrize(("source", "target"), list(itertools.product(RunState, RunState)))
def test_every_pair_is_legal_or_refused_as_the_table_says(source: RunState, target: RunState) -> None:
    verdict = check_transition(source, target)
    assert verdict.allowed == ((source, target) in LEGAL)
    assert verdict.reason
    if verdict.allowed:
        assert transition(source, target) is target
    else:
        with pytest.raises(IllegalTransitionError) as refused:
            transition(source, target)
        assert refused.value.reason == verdict.reason
        assert isinstance(refused.value, FlywheelError)


def test_the_table_has_eight_states_and_four_final_ones() -> None:
    assert len(RunState) == 8
    assert {S, F, C, T} == TERMINAL_STATES
    assert {R, V} == ACTIVE_STATES


@pytest.mark.parametrize("target", list(RunState))
def test_a_run_without_status_moves_like_a_pending_one(target: RunState) -> None:
    assert check_transition(None, target).allowed == check_transition(P, target).allowed


@pytest.mark.parametrize("final", [S, F, C, T])
def test_refusals_say_why(final: RunState) -> None:
    assert "final" in check_transition(final, R).reason
    assert "already Running" in check_transition(R, R).reason
    reason = check_transition(P, S).reason
    assert "Pending can only move to" in reason and "Succeeded" in reason
    with pytest.raises(IllegalTransitionError, match="Succeeded → Running refused"):
        transition(S, R)


# --------------------------------------------------------------------------- failure classes


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (None, RunErrorCode.API_UNAVAILABLE, True),
        (0, RunErrorCode.API_UNAVAILABLE, True),
        (408, RunErrorCode.API_UNAVAILABLE, True),
        (429, RunErrorCode.API_UNAVAILABLE, True),
        (500, RunErrorCode.API_UNAVAILABLE, True),
        (503, RunErrorCode.API_UNAVAILABLE, True),
        (504, RunErrorCode.API_UNAVAILABLE, True),
        (409, RunErrorCode.ACTION_CONFLICT, True),
        (401, RunErrorCode.ACTION_FORBIDDEN, False),
        (403, RunErrorCode.ACTION_FORBIDDEN, False),
        (404, RunErrorCode.TARGET_NOT_FOUND, False),
        (410, RunErrorCode.TARGET_NOT_FOUND, False),
        (400, RunErrorCode.ACTION_FAILED, False),
        (422, RunErrorCode.ACTION_FAILED, False),
        (501, RunErrorCode.ACTION_FAILED, False),
    ],
)
def test_api_statuses_are_classified(status: int | None, code: RunErrorCode, retryable: bool) -> None:
    failure = classify_api_status(status)
    assert (failure.code, failure.retryable) == (code, retryable)


def test_error_codes_match_the_status_pattern_and_become_condition_reasons() -> None:
    import re

    from flywheel.api.run import ERROR_CODE_PATTERN

    for code in RunErrorCode:
        assert re.match(ERROR_CODE_PATTERN, code.value), code
    assert condition_reason(RunErrorCode.VERIFY_TIMEOUT) == "VerifyTimeout"
    assert condition_reason(RunErrorCode.TARGET_NOT_FOUND) == "TargetNotFound"
    assert condition_reason(RunErrorCode.APPROVAL_REJECTED) == "ApprRejected"


# --------------------------------------------------------------------------- verification


def facts(**overrides: object) -> RolloutFacts:
    values: dict[str, object] = {
        "generation": 2,
        "observed_generation": 2,
        "desired": 3,
        "total": 3,
        "updated": 3,
        "ready": 3,
        "available": 3,
    }
    values.update(overrides)
    return RolloutFacts(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "state", "words"),
    [
        ({}, RolloutState.COMPLETE, "rollout complete"),
        ({"observed_generation": 1}, RolloutState.PROGRESSING, "observe generation 2"),
        ({"updated": 2}, RolloutState.PROGRESSING, "2 of 3 replicas updated"),
        ({"total": 4}, RolloutState.PROGRESSING, "1 old replicas"),
        ({"ready": 2}, RolloutState.PROGRESSING, "2 of 3 replicas ready"),
        ({"available": 2}, RolloutState.PROGRESSING, "2 of 3 updated replicas available"),
        ({"revision_pending": True}, RolloutState.PROGRESSING, "update revision"),
        ({"failure_reason": "ProgressDeadlineExceeded"}, RolloutState.FAILED, "ProgressDeadlineExceeded"),
        (
            {"desired": 0, "total": 0, "updated": 0, "ready": 0, "available": 0},
            RolloutState.COMPLETE,
            "complete",
        ),
    ],
)
def test_rollouts_are_classified_like_kubectl_rollout_status(
    overrides: dict[str, object], state: RolloutState, words: str
) -> None:
    verdict = classify_rollout(facts(**overrides))
    assert verdict.state is state
    assert words in verdict.message


def test_an_unobserved_generation_wins_over_a_stale_failure() -> None:
    verdict = classify_rollout(facts(observed_generation=1, failure_reason="ProgressDeadlineExceeded"))
    assert verdict.state is RolloutState.PROGRESSING


COMPLETE = RolloutVerdict(RolloutState.COMPLETE, "done")
PROGRESSING = RolloutVerdict(RolloutState.PROGRESSING, "1 of 3")
FAILED_ROLLOUT = RolloutVerdict(RolloutState.FAILED, "ProgressDeadlineExceeded")


@pytest.mark.parametrize(
    ("rollout", "now_offset", "attempt", "step", "code"),
    [
        (COMPLETE, 0, 1, NextStep.SUCCEED, None),
        (COMPLETE, 999, 2, NextStep.SUCCEED, None),  # complete wins even past every deadline
        (PROGRESSING, -1, 1, NextStep.WAIT, None),
        (PROGRESSING, 0, 1, NextStep.RETRY, RunErrorCode.VERIFY_TIMEOUT),  # at the attempt deadline
        (PROGRESSING, 0, 2, NextStep.FAIL, RunErrorCode.VERIFY_TIMEOUT),  # last attempt
        (FAILED_ROLLOUT, -30, 1, NextStep.RETRY, RunErrorCode.ROLLOUT_FAILED),
        (FAILED_ROLLOUT, -30, 2, NextStep.FAIL, RunErrorCode.ROLLOUT_FAILED),
    ],
)
def test_verification_outcome_at_and_around_the_attempt_deadline(
    rollout: RolloutVerdict, now_offset: int, attempt: int, step: NextStep, code: RunErrorCode | None
) -> None:
    attempt_end = NOW
    outcome = verification_outcome(
        rollout,
        now=attempt_end + timedelta(seconds=now_offset),
        attempt_deadline=attempt_end,
        run_deadline=attempt_end + timedelta(seconds=60),
        attempt=attempt,
        max_attempts=2,
    )
    assert (outcome.step, outcome.code) == (step, code)


def test_no_retry_once_the_run_deadline_has_passed() -> None:
    outcome = verification_outcome(
        PROGRESSING,
        now=NOW,
        attempt_deadline=NOW + timedelta(seconds=5),
        run_deadline=NOW,
        attempt=1,
        max_attempts=3,
    )
    assert (outcome.step, outcome.code) == (NextStep.FAIL, RunErrorCode.VERIFY_TIMEOUT)


# --------------------------------------------------------------------------- deadlines


def test_the_run_deadline_counts_from_the_start_or_from_creation_while_waiting() -> None:
    created = NOW - timedelta(minutes=5)
    assert run_deadline(created, None, 600) == created + timedelta(seconds=600)
    assert run_deadline(created, NOW, 600) == NOW + timedelta(seconds=600)


def test_attempts_share_the_run_time_and_never_pass_its_deadline() -> None:
    deadline = NOW + timedelta(seconds=600)
    assert attempt_deadline(NOW, deadline, 600, 2) == NOW + timedelta(seconds=300)
    assert attempt_deadline(NOW, deadline, 600, 1) == deadline
    late = NOW + timedelta(seconds=500)
    assert attempt_deadline(late, deadline, 600, 2) == deadline
    with pytest.raises(InvalidInputError, match="maxAttempts"):
        attempt_deadline(NOW, deadline, 600, 0)


STALE = timedelta(seconds=30)


@pytest.mark.parametrize(
    ("state", "now_offset", "life_offset", "expected"),
    [
        (R, -1, -1, None),  # before the deadline
        (R, 0, -5, RunErrorCode.RUN_TIMEOUT),  # at the deadline, alive until recently
        (V, 100, -30, RunErrorCode.RUN_TIMEOUT),  # last sign exactly stale_after before: still alive
        (V, 100, -31, RunErrorCode.RUN_STALE),  # abandoned before the deadline
        (R, 3600, -3600, RunErrorCode.RUN_STALE),
        (P, 3600, -3600, RunErrorCode.RUN_TIMEOUT),  # waiting Runs send no heartbeats: never stale
        (None, 0, -3600, RunErrorCode.RUN_TIMEOUT),
        (W, 3600, -3600, None),  # governed by the Approval's expiry
        (S, 3600, -3600, None),
        (T, 3600, -3600, None),
    ],
)
def test_overdue_runs_time_out_or_are_reaped_as_stale(
    state: RunState | None, now_offset: int, life_offset: int, expected: RunErrorCode | None
) -> None:
    deadline = NOW
    code = overdue(
        state,
        now=deadline + timedelta(seconds=now_offset),
        deadline=deadline,
        last_sign_of_life=deadline + timedelta(seconds=life_offset),
        stale_after=STALE,
    )
    assert code == expected


# --------------------------------------------------------------------------- journal


def test_the_journal_keeps_fifty_steps_and_sequence_numbers_keep_growing() -> None:
    steps: list[RunStep] = []
    for index in range(MAX_STEPS + 7):
        steps = append_step(steps, name="verify", result="Waiting", at=NOW + timedelta(seconds=index))
    assert len(steps) == MAX_STEPS == 50
    assert [step.seq for step in steps] == list(range(8, MAX_STEPS + 8))
    assert steps[0].at == NOW + timedelta(seconds=7)


@pytest.mark.parametrize(("length", "kept"), [(127, 127), (128, 128), (129, 128), (500, 128)])
def test_step_messages_are_cut_to_128_characters(length: int, kept: int) -> None:
    steps = append_step([], name="execute", result="Failed", at=NOW, message="x" * length)
    message = steps[0].message
    assert message is not None and len(message) == kept == min(length, STEP_MESSAGE_MAX_LENGTH)
    assert message.endswith("…") == (length > STEP_MESSAGE_MAX_LENGTH)


def test_the_first_step_is_number_one() -> None:
    assert append_step([], name="admit", result="Succeeded", at=NOW)[0].seq == 1


# --------------------------------------------------------------------------- safety limits

LIMITS = SafetyLimits(
    max_running_per_namespace=3,
    max_running_per_target=1,
    breaker_max_remediations=2,
    breaker_window=timedelta(hours=1),
)
_counter = itertools.count()


def observed(
    state: RunState | None = None,
    *,
    target: str = "web",
    namespace: str = "shop",
    mode: RunMode = RunMode.AUTO,
    requires_approval: bool = False,
    created: datetime | None = None,
    started: datetime | None = None,
) -> ObservedRun:
    number = next(_counter)
    if started is None and state in ACTIVE_STATES | TERMINAL_STATES:
        started = NOW - timedelta(days=1)  # outside the breaker window unless stated
    return ObservedRun(
        namespace=namespace,
        name=f"run-{number:04d}",
        uid=f"uid-{number}",
        created_at=created or NOW - timedelta(seconds=number),
        target_kind=TargetKind.DEPLOYMENT,
        target_name=target,
        mode=mode,
        requires_approval=requires_approval,
        state=state,
        started_at=started,
    )


def candidate(**kwargs: object) -> ObservedRun:
    return observed(RunState.PENDING, created=NOW, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("running", "kind"),
    [
        (0, AdmissionKind.ADMIT),
        (2, AdmissionKind.ADMIT),
        (3, AdmissionKind.THROTTLE),
        (4, AdmissionKind.THROTTLE),
    ],
)
def test_namespace_concurrency_at_and_around_the_limit(running: int, kind: AdmissionKind) -> None:
    peers = [observed(R, target=f"other-{index}") for index in range(running)]
    admission = admit(candidate(), peers, LIMITS, NOW)
    assert admission.kind is kind
    if kind is AdmissionKind.THROTTLE:
        assert admission.reason == "NamespaceLimitReached"
        assert "limit 3" in admission.message


def test_verifying_runs_occupy_a_slot_and_finished_ones_do_not() -> None:
    busy = [observed(V, target="a"), observed(R, target="b"), observed(V, target="c")]
    assert admit(candidate(), busy, LIMITS, NOW).kind is AdmissionKind.THROTTLE
    done = [observed(state, target=f"t{index}") for index, state in enumerate([S, F, C, T, W])]
    assert admit(candidate(), done, LIMITS, NOW).kind is AdmissionKind.ADMIT


def test_one_run_per_target_at_a_time() -> None:
    admission = admit(candidate(), [observed(R)], LIMITS, NOW)
    assert (admission.kind, admission.reason) == (AdmissionKind.THROTTLE, "TargetLimitReached")
    assert admit(candidate(), [observed(R, target="api")], LIMITS, NOW).kind is AdmissionKind.ADMIT


def test_older_queued_runs_go_first_and_both_sides_agree() -> None:
    older = observed(None, created=NOW - timedelta(seconds=1))
    newer = candidate()
    assert admit(newer, [older], LIMITS, NOW).kind is AdmissionKind.THROTTLE
    assert admit(older, [newer], LIMITS, NOW).kind is AdmissionKind.ADMIT


def test_same_creation_time_is_ordered_by_name() -> None:
    first = ObservedRun(
        "shop", "a-run", "u1", NOW, TargetKind.DEPLOYMENT, "web", RunMode.AUTO, False, None, None
    )
    second = ObservedRun(
        "shop", "b-run", "u2", NOW, TargetKind.DEPLOYMENT, "web", RunMode.AUTO, False, None, None
    )
    assert admit(first, [second], LIMITS, NOW).kind is AdmissionKind.ADMIT
    assert admit(second, [first], LIMITS, NOW).kind is AdmissionKind.THROTTLE


def test_runs_waiting_for_approval_or_in_shadow_do_not_queue_ahead() -> None:
    ahead = [
        observed(None, requires_approval=True, created=NOW - timedelta(seconds=5)),
        observed(None, mode=RunMode.SHADOW, created=NOW - timedelta(seconds=5)),
        observed(R, mode=RunMode.SHADOW),
    ]
    assert admit(candidate(), ahead, LIMITS, NOW).kind is AdmissionKind.ADMIT


@pytest.mark.parametrize(
    ("recent", "kind"),
    [
        (0, AdmissionKind.ADMIT),
        (1, AdmissionKind.ADMIT),
        (2, AdmissionKind.REQUIRE_APPROVAL),
        (3, AdmissionKind.REQUIRE_APPROVAL),
    ],
)
def test_circuit_breaker_at_and_around_m_remediations(recent: int, kind: AdmissionKind) -> None:
    history = [observed(S, started=NOW - timedelta(minutes=10 + index)) for index in range(recent)]
    admission = admit(candidate(), history, LIMITS, NOW)
    assert admission.kind is kind
    if kind is AdmissionKind.REQUIRE_APPROVAL:
        assert admission.reason == "CircuitBreakerOpen"
        assert f"remediated {recent} times within 3600s (limit 2)" in admission.message


def test_circuit_breaker_window_edge() -> None:
    edge = NOW - LIMITS.breaker_window
    inside = [
        observed(F, started=edge + timedelta(seconds=1)),
        observed(S, started=edge + timedelta(seconds=1)),
    ]
    outside = [observed(F, started=edge), observed(S, started=edge - timedelta(seconds=1))]
    assert admit(candidate(), inside, LIMITS, NOW).kind is AdmissionKind.REQUIRE_APPROVAL
    assert admit(candidate(), outside, LIMITS, NOW).kind is AdmissionKind.ADMIT


def test_circuit_breaker_counts_queued_runs_ahead_and_ignores_other_targets_and_shadow() -> None:
    queued_ahead = observed(None, created=NOW - timedelta(seconds=3))
    recent = observed(S, started=NOW - timedelta(minutes=1))
    assert admit(candidate(), [queued_ahead, recent], LIMITS, NOW).kind is AdmissionKind.REQUIRE_APPROVAL
    unrelated = [
        observed(S, target="api", started=NOW - timedelta(minutes=1)),
        observed(S, target="api", started=NOW - timedelta(minutes=2)),
        observed(S, mode=RunMode.SHADOW, started=NOW - timedelta(minutes=1)),
        observed(S, mode=RunMode.SHADOW, started=NOW - timedelta(minutes=2)),
    ]
    assert admit(candidate(), unrelated, LIMITS, NOW).kind is AdmissionKind.ADMIT


def test_other_namespaces_and_the_candidate_itself_do_not_count() -> None:
    elsewhere = [observed(R, namespace="other", target=f"t{index}") for index in range(5)]
    me = candidate()
    assert admit(me, [*elsewhere, me], LIMITS, NOW).kind is AdmissionKind.ADMIT


def test_shadow_runs_are_exempt_from_every_limit() -> None:
    crowded = [observed(R, target=f"t{index}") for index in range(5)] + [
        observed(S, started=NOW - timedelta(minutes=1)) for _ in range(5)
    ]
    admission = admit(candidate(mode=RunMode.SHADOW), crowded, LIMITS, NOW)
    assert (admission.kind, admission.reason) == (AdmissionKind.ADMIT, "ShadowMode")


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_running_per_namespace": 0},
        {"max_running_per_target": -1},
        {"breaker_max_remediations": True},
        {"breaker_window": timedelta(0)},
    ],
)
def test_invalid_limits_are_refused_naming_the_field(overrides: dict[str, object]) -> None:
    values: dict[str, object] = {
        "max_running_per_namespace": 1,
        "max_running_per_target": 1,
        "breaker_max_remediations": 1,
        "breaker_window": timedelta(minutes=1),
    }
    values.update(overrides)
    with pytest.raises(InvalidInputError, match=next(iter(overrides))):
        SafetyLimits(**values)  # type: ignore[arg-type]
