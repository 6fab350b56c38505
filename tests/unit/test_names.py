"""Label values and child names derived from object names (``flywheel.domain.names``).

Scenario matrix (Hypothesis over valid object names of 1–253 characters, long ones favoured):
- label values: always valid (≤ 63, alphanumeric at both ends, ``[-_.a-zA-Z0-9]``), the name
  itself when it is a valid label value, the same for the same name, different for different
  names; the cut that ``name[:63]`` made invalid (ending in ``-`` or ``.``) is valid now;
- child names (``<incident>-<n>``): always a valid object name, ``base + suffix`` when it fits,
  different for different bases, the same for the same base;
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from flywheel.domain.actions import validate_object_name
from flywheel.domain.names import LABEL_VALUE_MAX_LENGTH, is_label_value, label_value, suffixed_name

pytestmark = pytest.mark.unit

ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyz0123456789"


@st.composite
def dns_labels(draw: st.DrawFn) -> str:
    """One label of an RFC 1123 subdomain: alphanumeric at both ends, dashes inside."""
    size = draw(st.integers(min_value=1, max_value=63))
    if size == 1:
        return draw(st.sampled_from(ALPHANUMERIC))
    middle = draw(st.text(alphabet=ALPHANUMERIC + "-", min_size=size - 2, max_size=size - 2))
    return draw(st.sampled_from(ALPHANUMERIC)) + middle + draw(st.sampled_from(ALPHANUMERIC))


@st.composite
def object_names(draw: st.DrawFn, max_length: int = 253) -> str:
    """A valid object name of up to ``max_length`` characters, often near the limit."""
    target = draw(st.one_of(st.integers(1, max_length), st.integers(max_length - 20, max_length)))
    name = draw(dns_labels())
    while len(name) < target:
        name = f"{name}.{draw(dns_labels())}"
    name = name[:target].rstrip("-.")
    assume(name)
    return validate_object_name(name, field="name")


@given(object_names())
def test_every_object_name_gets_a_valid_label_value(name: str) -> None:
    value = label_value(name)
    assert is_label_value(value), value
    assert len(value) <= LABEL_VALUE_MAX_LENGTH
    assert value[0].isalnum() and value[-1].isalnum()
    assert label_value(name) == value, "stable"


@given(object_names(max_length=LABEL_VALUE_MAX_LENGTH))
def test_a_name_that_is_a_label_value_is_kept(name: str) -> None:
    assert label_value(name) == name


@given(object_names(), object_names())
def test_different_names_get_different_label_values(first: str, second: str) -> None:
    assume(first != second)
    assert label_value(first) != label_value(second)


def test_two_long_names_sharing_their_first_63_characters_are_told_apart() -> None:
    shared = "checkout-" + "a" * 60
    assert label_value(shared + "-east") != label_value(shared + "-west")


@pytest.mark.parametrize("cut_at", ["-", "."])
def test_a_cut_that_would_end_in_a_separator_is_valid(cut_at: str) -> None:
    name = "a" * 62 + cut_at + "b" * 100
    assert not is_label_value(name[:63])
    assert is_label_value(label_value(name))


@given(object_names(), st.integers(min_value=1, max_value=10_000))
def test_every_child_name_is_a_valid_object_name(base: str, sequence: int) -> None:
    name = suffixed_name(base, f"-{sequence}")
    assert validate_object_name(name, field="name") == name
    assert name.endswith(f"-{sequence}")
    if len(base) + len(f"-{sequence}") <= 253:
        assert name == f"{base}-{sequence}"


@given(object_names(), object_names())
def test_different_bases_get_different_child_names(first: str, second: str) -> None:
    assume(first != second)
    assert suffixed_name(first, "-1") != suffixed_name(second, "-1")


def test_the_full_length_cut_of_the_old_run_names_is_valid_now() -> None:
    base = "a" * 250 + ".bc"  # name[:251] + "-1" was "aaa….-1": a label starting with "-"
    assert len(base) == 253
    assert validate_object_name(suffixed_name(base, "-1"), field="name")
