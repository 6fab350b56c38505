"""Kubernetes timestamps (flywheel.api.times): what we write parses back, what the API server writes parses.

What an operator would notice if it were wrong: a Run that never times out (a deadline read
wrong), an Approval expiring at the wrong moment, Events or status times in local time or with
an offset the API server rewrites, a malformed annotation crashing a pass.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.api.times import format_precise_time, format_time, parse_optional_time, parse_time, read_time

pytestmark = pytest.mark.unit

MOMENTS = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC))
OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))


def test_times_are_written_as_the_api_server_writes_them() -> None:
    moment = datetime(2025, 3, 1, 12, 0, 5, 250000, tzinfo=UTC)
    assert format_time(moment) == "2025-03-01T12:00:05Z"
    assert format_precise_time(moment) == "2025-03-01T12:00:05.250000Z"
    assert format_precise_time(moment.replace(microsecond=0)) == "2025-03-01T12:00:05Z"


def test_an_offset_is_written_as_the_same_moment_in_utc() -> None:
    moment = datetime(2025, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == "2025-03-01T12:00:00Z"


@given(moment=MOMENTS, offset=OFFSETS)
def test_what_is_written_parses_back_to_the_same_moment(moment: datetime, offset: timezone) -> None:
    shifted = moment.astimezone(offset)
    assert parse_time(format_precise_time(shifted)) == moment
    assert parse_time(format_time(shifted)) == moment.replace(microsecond=0)
    assert format_time(shifted).endswith("Z") and format_precise_time(shifted).endswith("Z")


@pytest.mark.parametrize("written", [
    "2025-03-01T12:00:00Z",  # metav1.Time
    "2025-03-01T12:00:00.123456Z",  # metav1.MicroTime
    "2025-03-01T13:00:00+01:00",  # an offset (Alertmanager's startsAt may carry one)
    "2025-03-01T12:00:00.123456789Z",  # Go's nanoseconds (Alertmanager)
])
def test_timestamps_of_real_producers_parse_to_the_moment_they_name(written: str) -> None:
    assert parse_time(written).replace(microsecond=0) == datetime(2025, 3, 1, 12, tzinfo=UTC)


def test_a_malformed_timestamp_is_an_error_when_required_and_absent_when_read_leniently() -> None:
    with pytest.raises(ValueError):
        parse_time("yesterday")
    assert parse_optional_time(None) is None and parse_optional_time("") is None
    for value in ("yesterday", "", None, 5, "2025-03-01T12:00:00"):
        assert read_time(value) is None, value
    assert read_time("2025-03-01T12:00:00", assume_utc=True) == datetime(2025, 3, 1, 12, tzinfo=UTC)
