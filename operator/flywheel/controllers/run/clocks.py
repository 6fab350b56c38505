"""A Run's clocks: its deadline, when an attempt starts, timing out, heartbeats."""

from __future__ import annotations

from datetime import datetime, timedelta

from flywheel.api.enums import ConditionStatus, RunState
from flywheel.api.times import format_precise_time
from flywheel.controllers.run.passes import AWAITING_APPROVAL, STEP_REAP, STEP_TIMEOUT, SUCCEEDED, RunPass
from flywheel.domain.run_state import ACTIVE_STATES, RunErrorCode, attempt_deadline, overdue, run_deadline

# A Running or Verifying Run writes status.heartbeatAt at least this often.
HEARTBEAT_INTERVAL = timedelta(seconds=10)
# No sign of life for this long before the deadline: the Run was abandoned, not slow.
STALE_AFTER = timedelta(seconds=30)


def deadline_of(ctx: RunPass) -> datetime:
    """The Run's deadline: its timeout plus its verification window."""
    return run_deadline(ctx.run.created_at, ctx.status.started_at, ctx.run.spec.timeout_seconds + ctx.window_seconds)


def last_sign_of_life(ctx: RunPass) -> datetime:
    moments = [
        ctx.run.created_at,
        ctx.status.started_at,
        ctx.status.heartbeat_at,
        ctx.status.steps[-1].at if ctx.status.steps else None,
    ]
    return max(moment for moment in moments if moment is not None)


def expire(ctx: RunPass) -> bool:
    """Time the Run out if it is past its deadline (reaped as stale if it was abandoned)."""
    deadline = deadline_of(ctx)
    code = overdue(
        ctx.status.state,
        now=ctx.now,
        deadline=deadline,
        last_sign_of_life=last_sign_of_life(ctx),
        stale_after=STALE_AFTER,
    )
    if code is None:
        return False
    if code is RunErrorCode.RUN_STALE:
        message = (
            f"reaped: no sign of life since {format_precise_time(last_sign_of_life(ctx))}, "
            f"deadline {format_precise_time(deadline)} passed while nobody drove the Run"
        )
        ctx.move(RunState.TIMED_OUT, STEP_REAP, "TimedOut", message, code=code)
    else:
        waited = "to start" if ctx.state is RunState.PENDING else "to finish"
        message = f"the Run did not manage {waited} within {ctx.run.spec.timeout_seconds}s"
        ctx.move(RunState.TIMED_OUT, STEP_TIMEOUT, "TimedOut", message, code=code)
    ctx.event("Warning", "TimedOut", message)
    return True


def start_attempt(ctx: RunPass) -> None:
    """Begin the next attempt: count it, start the clock, set its verification deadline."""
    status = ctx.status
    status.started_at = status.started_at or ctx.now
    status.attempt += 1
    status.timeout_at = attempt_deadline(
        ctx.now, deadline_of(ctx), ctx.run.spec.timeout_seconds, ctx.run.spec.max_attempts
    )
    status.heartbeat_at = ctx.now
    ctx.clear_condition(AWAITING_APPROVAL, "Approved", "the Run is executing")
    ctx.condition(
        SUCCEEDED,
        ConditionStatus.UNKNOWN,
        "Running",
        f"attempt {status.attempt} of {ctx.run.spec.max_attempts}",
    )


def heartbeat(ctx: RunPass) -> None:
    status = ctx.status
    if ctx.state not in ACTIVE_STATES:
        return
    if status.heartbeat_at is None or ctx.now - status.heartbeat_at >= HEARTBEAT_INTERVAL:
        status.heartbeat_at = ctx.now

