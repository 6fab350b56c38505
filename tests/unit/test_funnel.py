"""The remediation funnel's stall rules, failure ranking and source statistics (pure).

Scenario matrix:
- every stall rule exactly at its thresholds, and one step below each threshold;
- a property: for any counts, the rules that fire are exactly those whose predicates hold;
- messages list the counts, the open-waiting samples (≤5), the failure classes and examples;
- each rule names the resources its Warning Event is attached to;
- failure classes: top 5 by count (ties by code), merged case-insensitively, UNKNOWN for a
  missing code, at most 3 examples each;
- sources: internal probes and blank sources excluded, open-only sources counted and ranked;
- the period: default 10 minutes, 5 accepted, shorter refused; invalid counts refused.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.domain.funnel import (
    DEFAULT_PERIOD,
    FailureClass,
    FunnelCounts,
    ObjectSample,
    SourceActivity,
    SourceStatistics,
    StallRule,
    evaluate_stalls,
    funnel_period,
    is_internal_source,
    rank_failure_classes,
    source_statistics,
)
from flywheel.errors import InvalidInputError

pytestmark = pytest.mark.unit

PERIOD = timedelta(minutes=10)


def incident(name: str) -> ObjectSample:
    return ObjectSample("Incident", "shop", name, f"uid-{name}")


def run(name: str) -> ObjectSample:
    return ObjectSample("Run", "shop", name, f"uid-{name}")


def funnel(**counts: object) -> FunnelCounts:
    return FunnelCounts(period=PERIOD, **counts)  # type: ignore[arg-type]


def rules(counts: FunnelCounts) -> list[StallRule]:
    return [alert.rule for alert in evaluate_stalls(counts)]


def open_only(count: int) -> SourceStatistics:
    return SourceStatistics(reporting=count, progressing=0, open_only=count)


# --------------------------------------------------------------------------- boundaries


class TestClaimStall:
    def test_fires_at_three_opened_with_one_waiting_and_no_run(self) -> None:
        assert rules(funnel(opened=3, open_waiting=1)) == [StallRule.CLAIM_STALL]

    def test_two_opened_is_not_enough(self) -> None:
        assert StallRule.CLAIM_STALL not in rules(funnel(opened=2, open_waiting=2))

    def test_nothing_waiting_is_no_stall(self) -> None:
        assert StallRule.CLAIM_STALL not in rules(funnel(opened=30, open_waiting=0))

    def test_one_run_started_is_no_stall(self) -> None:
        assert StallRule.CLAIM_STALL not in rules(funnel(opened=3, open_waiting=1, runs_started=1, executed=1,
                                                         verification_passed=1, resolved=1))


class TestColdStandby:
    def test_fires_at_three_open_only_sources_ten_opened_one_waiting(self) -> None:
        counts = funnel(opened=10, open_waiting=1, runs_started=1, executed=1, verification_passed=1, resolved=1,
                        sources=open_only(3))
        assert rules(counts) == [StallRule.COLD_STANDBY]

    def test_two_open_only_sources_are_not_enough(self) -> None:
        assert StallRule.COLD_STANDBY not in rules(funnel(opened=10, open_waiting=1, sources=open_only(2)))

    def test_nine_opened_are_not_enough(self) -> None:
        assert StallRule.COLD_STANDBY not in rules(funnel(opened=9, open_waiting=1, sources=open_only(3)))

    def test_nothing_waiting_is_no_stall(self) -> None:
        assert StallRule.COLD_STANDBY not in rules(funnel(opened=10, open_waiting=0, sources=open_only(5)))

    def test_fires_together_with_claim_stall(self) -> None:
        counts = funnel(opened=10, open_waiting=4, sources=open_only(3))
        assert rules(counts) == [StallRule.CLAIM_STALL, StallRule.COLD_STANDBY]


class TestSubmitStall:
    def test_fires_when_runs_started_but_none_executed(self) -> None:
        assert rules(funnel(runs_started=1)) == [StallRule.SUBMIT_STALL]

    def test_no_run_started_is_no_stall(self) -> None:
        assert rules(funnel(runs_started=0)) == []

    def test_one_execution_is_no_stall(self) -> None:
        assert StallRule.SUBMIT_STALL not in rules(funnel(runs_started=1, executed=1, verification_passed=1,
                                                          resolved=1))


class TestPassStall:
    def test_fires_when_executed_but_none_passed(self) -> None:
        assert rules(funnel(runs_started=1, executed=1)) == [StallRule.PASS_STALL]

    def test_one_pass_is_no_stall(self) -> None:
        assert StallRule.PASS_STALL not in rules(funnel(executed=1, verification_passed=1, resolved=1))

    def test_nothing_executed_is_no_stall(self) -> None:
        assert StallRule.PASS_STALL not in rules(funnel(executed=0, verification_failed=0))

    def test_message_lists_the_failure_classes_and_failed_runs(self) -> None:
        classes = (
            FailureClass("E-VERIFY-TIMEOUT", 3, (run("a"), run("b"))),
            FailureClass("E-ACTION-FORBIDDEN", 1, (run("c"),)),
        )
        (alert,) = evaluate_stalls(funnel(executed=4, verification_failed=4, failure_classes=classes))
        assert "E-VERIFY-TIMEOUT (3), E-ACTION-FORBIDDEN (1)" in alert.message
        assert "4 Runs executed" in alert.message and "4 failed" in alert.message
        assert "shop/a, shop/b, shop/c" in alert.message
        assert alert.subjects == (run("a"), run("b"), run("c"))

    def test_without_failures_it_names_the_runs_still_executing(self) -> None:
        (alert,) = evaluate_stalls(funnel(executed=2, executing_run_samples=(run("v1"),)))
        assert "No failure class recorded yet" in alert.message
        assert "Executing: shop/v1." in alert.message
        assert alert.subjects == (run("v1"),)


class TestResolveStall:
    def test_fires_when_passed_but_nothing_resolved(self) -> None:
        counts = funnel(runs_started=1, executed=1, verification_passed=1, unresolved_samples=(incident("x"),))
        (alert,) = evaluate_stalls(counts)
        assert alert.rule is StallRule.RESOLVE_STALL
        assert alert.subjects == (incident("x"),)
        assert "shop/x" in alert.message

    def test_one_resolution_is_no_stall(self) -> None:
        assert rules(funnel(runs_started=1, executed=1, verification_passed=1, resolved=1)) == []


def test_a_turning_funnel_fires_nothing() -> None:
    counts = funnel(opened=20, runs_started=10, executed=9, verification_passed=8, verification_failed=1,
                    resolved=8, open_waiting=2, sources=SourceStatistics(reporting=4, progressing=4))
    assert evaluate_stalls(counts) == ()


_count = st.integers(min_value=0, max_value=15)


@given(opened=_count, waiting=_count, started=_count, executed=_count, passed=_count, resolved=_count,
       open_only_sources=_count)
def test_rules_fire_exactly_when_their_predicates_hold(
    opened: int, waiting: int, started: int, executed: int, passed: int, resolved: int, open_only_sources: int
) -> None:
    counts = funnel(opened=opened, open_waiting=waiting, runs_started=started, executed=executed,
                    verification_passed=passed, resolved=resolved, sources=open_only(open_only_sources))
    expected = [
        rule
        for rule, holds in (
            (StallRule.CLAIM_STALL, opened >= 3 and waiting > 0 and started == 0),
            (StallRule.COLD_STANDBY, open_only_sources >= 3 and opened >= 10 and waiting > 0),
            (StallRule.SUBMIT_STALL, started > 0 and executed == 0),
            (StallRule.PASS_STALL, executed > 0 and passed == 0),
            (StallRule.RESOLVE_STALL, passed > 0 and resolved == 0),
        )
        if holds
    ]
    assert rules(counts) == expected


# --------------------------------------------------------------------------- messages and subjects


def test_claim_stall_message_lists_counts_samples_and_open_only_sources() -> None:
    samples = tuple(incident(f"i{number}") for number in range(5))
    sources = SourceStatistics(
        reporting=2, progressing=0, open_only=2,
        top_open_only=(SourceActivity("alertmanager", 4, 0), SourceActivity("jane", 1, 0)),
    )
    (alert,) = evaluate_stalls(funnel(opened=5, open_waiting=7, open_waiting_samples=samples, sources=sources))
    assert alert.rule is StallRule.CLAIM_STALL
    assert "5 Incidents opened in the last 10 min and 7 wait without a Run" in alert.message
    assert "shop/i0, shop/i1, shop/i2, shop/i3, shop/i4" in alert.message
    assert "alertmanager (4), jane (1)" in alert.message
    assert alert.subjects == samples


def test_cold_standby_message_lists_the_source_funnel() -> None:
    sources = SourceStatistics(reporting=5, progressing=2, open_only=3,
                               top_open_only=(SourceActivity("probe-like", 6, 0),))
    counts = funnel(opened=12, open_waiting=2, runs_started=2, executed=2, verification_passed=2, resolved=2,
                    sources=sources, open_waiting_samples=(incident("w"),))
    (alert,) = evaluate_stalls(counts)
    assert alert.rule is StallRule.COLD_STANDBY
    assert "5 sources opened 12 Incidents" in alert.message
    assert "2 saw a Run start, 3 only opened Incidents" in alert.message
    assert "probe-like (6)" in alert.message
    assert alert.subjects == (incident("w"),)


def test_submit_stall_names_the_waiting_runs_and_refused_approvals() -> None:
    counts = funnel(runs_started=2, waiting_run_samples=(run("r1"),), approvals_rejected=1, approvals_invalid=2)
    (alert,) = evaluate_stalls(counts)
    assert alert.rule is StallRule.SUBMIT_STALL
    assert "2 Runs started" in alert.message
    assert "shop/r1" in alert.message
    assert "Approvals rejected: 1, invalid: 2" in alert.message
    assert alert.subjects == (run("r1"),)


def test_event_reasons_are_camel_case() -> None:
    assert StallRule.CLAIM_STALL.event_reason == "FunnelClaimStall"
    assert StallRule.COLD_STANDBY.event_reason == "FunnelColdStandby"
    assert StallRule.RESOLVE_STALL.event_reason == "FunnelResolveStall"


# --------------------------------------------------------------------------- failure classes


def test_failure_classes_keep_the_top_five_by_count_then_code() -> None:
    classes = [FailureClass(f"E-{letter}", count) for letter, count in zip("ABCDEFG", (1, 5, 3, 3, 2, 7, 1), strict=True)]
    ranked = rank_failure_classes(classes)
    assert [(item.code, item.count) for item in ranked] == [
        ("E-F", 7), ("E-B", 5), ("E-C", 3), ("E-D", 3), ("E-E", 2),
    ]


def test_failure_classes_merge_case_and_blank_codes_into_unknown() -> None:
    ranked = rank_failure_classes([
        FailureClass("e-verify-timeout", 1, (run("a"),)),
        FailureClass(" E-VERIFY-TIMEOUT ", 2, (run("b"), run("c"), run("d"))),
        FailureClass("", 1, (run("e"),)),
        FailureClass("UNKNOWN", 1),
    ])
    assert ranked[0].code == "E-VERIFY-TIMEOUT" and ranked[0].count == 3
    assert ranked[0].examples == (run("a"), run("b"), run("c"))  # at most 3
    assert ranked[1].code == "UNKNOWN" and ranked[1].count == 2


def test_failure_class_with_a_negative_count_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        rank_failure_classes([FailureClass("E-X", -1)])


# --------------------------------------------------------------------------- sources


def test_internal_and_blank_sources_are_left_out() -> None:
    stats = source_statistics(
        [
            SourceActivity("Synthetic-Probe", 50, 0),
            SourceActivity(None, 4, 0),
            SourceActivity("  ", 4, 0),
            SourceActivity("alertmanager", 3, 1),
            SourceActivity("jane", 2, 0),
        ],
        internal_sources=["synthetic-probe"],
    )
    assert stats == SourceStatistics(
        reporting=2, progressing=1, open_only=1, top_open_only=(SourceActivity("jane", 2, 0),)
    )


def test_open_only_sources_are_ranked_busiest_first_and_three_are_shown() -> None:
    activity = [SourceActivity(name, opened, 0) for name, opened in (("a", 1), ("b", 4), ("c", 4), ("d", 2))]
    stats = source_statistics(activity)
    assert stats.open_only == 4
    assert [item.source for item in stats.top_open_only] == ["b", "c", "d"]


def test_rows_of_one_source_are_merged() -> None:
    stats = source_statistics([SourceActivity("Jane", 2, 0), SourceActivity("jane ", 1, 1)])
    assert stats.reporting == 1 and stats.progressing == 1 and stats.open_only == 0


def test_is_internal_source() -> None:
    assert is_internal_source("PROBE", ["probe"])
    assert is_internal_source(None, [])
    assert not is_internal_source("alertmanager", ["probe"])


# --------------------------------------------------------------------------- period and validation


def test_period_defaults_to_ten_minutes_and_refuses_less_than_five() -> None:
    assert funnel_period() == DEFAULT_PERIOD == timedelta(minutes=10)
    assert funnel_period(5) == timedelta(minutes=5)
    assert funnel_period(60) == timedelta(hours=1)
    with pytest.raises(InvalidInputError, match="at least 5"):
        funnel_period(4)
    with pytest.raises(InvalidInputError):
        funnel_period(True)


def test_counts_must_be_non_negative_and_samples_bounded() -> None:
    with pytest.raises(InvalidInputError, match="opened"):
        funnel(opened=-1)
    with pytest.raises(InvalidInputError, match="open_waiting_samples"):
        funnel(open_waiting_samples=tuple(incident(f"i{n}") for n in range(6)))
    with pytest.raises(InvalidInputError, match="failure_classes"):
        funnel(failure_classes=tuple(FailureClass(f"E-{n}", 1) for n in range(6)))
