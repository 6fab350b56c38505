"""Anomaly keys stay byte-identical to the older system's, so its recurrence data stays usable."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.domain.signature import anomaly_key

pytestmark = pytest.mark.unit

# Computed outside Python, with coreutils, from the literal JSON text the older system hashed:
#   printf '%s' '{"alert_name": "PodCrashLoopBackOff", "error_type": "OOMKilled", \
#     "namespace": "shop", "service": "checkout"}' | sha256sum | cut -c1-16
KNOWN_VECTORS = [
    (("PodCrashLoopBackOff", "checkout", "shop", "OOMKilled"), "d9f832bb9931b5c8"),
    (("", "", "", ""), "c0a178b83e27c095"),
    # Non-ASCII is escaped (json.dumps' default ensure_ascii=True): the hashed text is 'caf\u00e9'.
    (("HighLatency", "caf\u00e9", "default", ""), "b67c84fbfe0da550"),
]

optional_text = st.one_of(st.none(), st.text(max_size=40))


def seed_style_key(alert_name: str, service: str, namespace: str, error_type: str) -> str:
    """How the older system computed it: a dict in its own field order, sort_keys, default separators."""
    fields = {"alert_name": alert_name, "service": service, "namespace": namespace, "error_type": error_type}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize(("fields", "expected"), KNOWN_VECTORS)
def test_known_vectors(fields: tuple[str, str, str, str], expected: str) -> None:
    assert anomaly_key(*fields) == expected


def test_none_is_hashed_as_empty_string() -> None:
    assert anomaly_key(None, None, None, None) == "c0a178b83e27c095"
    assert anomaly_key("A", None, "ns", None) == anomaly_key("A", "", "ns", "")


def test_each_field_changes_the_key() -> None:
    base = anomaly_key("A", "svc", "ns", "OOMKilled")
    assert base != anomaly_key("B", "svc", "ns", "OOMKilled")
    assert base != anomaly_key("A", "svc2", "ns", "OOMKilled")
    assert base != anomaly_key("A", "svc", "ns2", "OOMKilled")
    assert base != anomaly_key("A", "svc", "ns", "Evicted")
    # Swapping values between fields must not collide: the field names are hashed too.
    assert anomaly_key("x", "y", "", "") != anomaly_key("y", "x", "", "")


@given(optional_text, optional_text, optional_text, optional_text)
def test_key_is_16_lowercase_hex_and_stable(
    alert_name: str | None, service: str | None, namespace: str | None, error_type: str | None
) -> None:
    key = anomaly_key(alert_name, service, namespace, error_type)
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert key == anomaly_key(alert_name, service, namespace, error_type)


@given(optional_text, optional_text, optional_text, optional_text)
def test_matches_the_seed_computation_whatever_the_field_order(
    alert_name: str | None, service: str | None, namespace: str | None, error_type: str | None
) -> None:
    values = {
        "alert_name": alert_name or "",
        "service": service or "",
        "namespace": namespace or "",
        "error_type": error_type or "",
    }
    reversed_order = dict(reversed(list(values.items())))
    expected = hashlib.sha256(json.dumps(reversed_order, sort_keys=True).encode()).hexdigest()[:16]
    assert anomaly_key(alert_name, service, namespace, error_type) == expected
    assert expected == seed_style_key(**values)


@given(optional_text, optional_text, optional_text, optional_text)
def test_none_and_empty_are_the_same_key(
    alert_name: str | None, service: str | None, namespace: str | None, error_type: str | None
) -> None:
    assert anomaly_key(alert_name, service, namespace, error_type) == anomaly_key(
        alert_name or "", service or "", namespace or "", error_type or ""
    )
