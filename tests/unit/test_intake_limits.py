"""The intake's own limits, as pure pieces: the per-client rate limit, JSON depth, the token length."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from flywheel.errors import ConfigurationError
from flywheel.intake.rate_limit import ClientRateLimit
from flywheel.intake.server import json_depth, require_intake_token
from flywheel.settings import MIN_INTAKE_TOKEN_LENGTH, FlywheelSettings

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_gets_its_burst_then_waits_for_its_rate() -> None:
    clock = Clock()
    limit = ClientRateLimit(rate=2.0, burst=3, clock=clock)
    assert [limit.take("10.0.0.1") for _ in range(3)] == [None, None, None]
    assert limit.take("10.0.0.1") == 1, "the fourth at once waits (Retry-After at least 1 s)"
    assert limit.take("10.0.0.2") is None, "another address has its own bucket"
    clock.now += 0.5  # one more token at 2 per second
    assert limit.take("10.0.0.1") is None
    assert limit.take("10.0.0.1") == 1


def test_retry_after_is_the_whole_seconds_until_the_next_token() -> None:
    clock = Clock()
    limit = ClientRateLimit(rate=0.1, burst=1, clock=clock)
    assert limit.take("a") is None
    assert limit.take("a") == 10
    clock.now += 4
    assert limit.take("a") == 6
    clock.now += 6
    assert limit.take("a") is None


def test_refused_requests_spend_nothing_and_the_bucket_never_exceeds_its_burst() -> None:
    clock = Clock()
    limit = ClientRateLimit(rate=1.0, burst=2, clock=clock)
    limit.take("a"), limit.take("a")
    for _ in range(50):
        assert limit.take("a") is not None
    clock.now += 1
    assert limit.take("a") is None, "a flood of refused requests does not dig a debt"
    clock.now += 3600
    assert [limit.take("a") for _ in range(3)] == [None, None, 1], "an idle hour refills only the burst"


def test_the_buckets_are_bounded() -> None:
    clock = Clock()
    limit = ClientRateLimit(rate=1.0, burst=1, clock=clock, remembered=3)
    for client in ("a", "b", "c", "d"):
        assert limit.take(client) is None
    assert limit.take("d") == 1
    assert limit.take("a") is None, "the least recently seen address was forgotten (starts full)"


@given(st.lists(st.floats(min_value=0, max_value=5), max_size=60), st.integers(1, 5), st.floats(0.1, 10))
def test_no_client_exceeds_burst_plus_rate_times_elapsed(steps: list[float], burst: int, rate: float) -> None:
    clock = Clock()
    limit = ClientRateLimit(rate=rate, burst=burst, clock=clock)
    allowed = 0
    for step in steps:
        clock.now += step
        allowed += limit.take("c") is None
    assert allowed <= burst + rate * sum(steps) + 1e-9


def test_depth_counts_arrays_and_objects() -> None:
    assert json_depth("x") == 0
    assert json_depth({}) == 1
    assert json_depth({"alerts": [{"labels": {"a": "b"}}]}) == 4, "an Alertmanager payload is 4 levels"
    assert json_depth([[[[[]]]], {"a": 1}]) == 5


@given(st.integers(min_value=0, max_value=3000))
def test_depth_of_deep_nesting_needs_no_recursion(levels: int) -> None:
    value: object = 1
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    assert json_depth(value) == levels


def test_a_deeply_nested_body_is_not_a_crash_of_the_parser() -> None:
    # What the receiver catches: the C decoder gives up with RecursionError, not a JSONDecodeError.
    with pytest.raises(RecursionError):
        json.loads("[" * 200_000 + "]" * 200_000)


def test_a_short_intake_token_refuses_to_start_naming_the_setting_not_the_token() -> None:
    short = "x" * (MIN_INTAKE_TOKEN_LENGTH - 1)
    with pytest.raises(ConfigurationError) as refused:
        require_intake_token(FlywheelSettings(intake_token=SecretStr(short)).intake_token)
    message = str(refused.value)
    assert "FLYWHEEL_INTAKE_TOKEN" in message and str(MIN_INTAKE_TOKEN_LENGTH) in message
    assert short not in message
    require_intake_token(FlywheelSettings(intake_token=SecretStr("x" * MIN_INTAKE_TOKEN_LENGTH)).intake_token)
    require_intake_token(FlywheelSettings().intake_token)  # no token: the intake refuses every request instead
