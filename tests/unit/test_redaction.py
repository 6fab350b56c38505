"""Redaction of secrets and personal data before storage.

Scenarios:
- known shapes: key=value secrets (plain, quoted, JSON, query strings), Authorization headers,
  bearer credentials, JWTs, private key blocks, well-known token formats, credentials in URLs,
  Slack webhook paths, email addresses;
- by key: values under secret-naming keys are replaced whole, at any depth, whatever the key's
  spelling; ``None`` stays ``None``;
- properties (Hypothesis): a secret embedded in arbitrary text or at any depth of a payload never
  survives; redaction is idempotent; the payload keeps its shape; text with nothing sensitive in
  it comes back unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from flywheel.domain.redaction import (
    REDACTED,
    REDACTED_EMAIL,
    REDACTED_JWT,
    REDACTED_PRIVATE_KEY,
    REDACTED_TOKEN,
    is_sensitive_key,
    redact_optional_text,
    redact_payload,
    redact_text,
)

pytestmark = pytest.mark.unit

# Disjoint alphabets: surrounding text is lower-case prose, secrets are upper-case and digits,
# so a secret can never reappear in the output by coincidence with its surroundings.
PROSE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,.()", max_size=40)
SECRET = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=12, max_size=40)
EMAIL_LOCAL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._+-", min_size=1, max_size=20).filter(
    lambda local: local[0].isalnum()
)
EMAIL_DOMAIN = st.from_regex(r"\A[a-z0-9]{1,12}(\.[a-z0-9]{1,12}){0,2}\.[a-z]{2,6}\Z")

SECRET_KEY_SPELLINGS = [
    "password",
    "Password",
    "db_password",
    "clientSecret",
    "client-secret",
    "apiKey",
    "API_KEY",
    "X-Api-Key",
    "accessToken",
    "refresh_token",
    "Authorization",
    "privateKey",
    "aws_secret_access_key",
    "credentials",
    "Cookie",
    "sessionId",
    "auth",
    "pwd",
]
HARMLESS_KEYS = ["name", "namespace", "action", "replicas", "author", "message", "reason", "state"]


# --------------------------------------------------------------------------- known shapes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=hunter2", f"password={REDACTED}"),
        ("connecting with PASSWORD: hunter2 now", f"connecting with PASSWORD: {REDACTED} now"),
        ('{"apiKey": "abc123", "name": "web"}', f'{{"apiKey": "{REDACTED}", "name": "web"}}'),
        ("GET /hook?token=abc123&replicas=3", f"GET /hook?token={REDACTED}&replicas=3"),
        ("client_secret='s3cr3t'", f"client_secret='{REDACTED}'"),
        ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: Basic {REDACTED}"),
        ("authorization=Bearer abc.def-ghi", f"authorization=Bearer {REDACTED}"),
        ("sent with bearer AbC123-._~+/xyz==", f"sent with bearer {REDACTED}"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl expired",
            f"jwt {REDACTED_JWT} expired",
        ),
        (
            "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAAAA\n-----END RSA PRIVATE KEY-----\ndone",
            f"key:\n{REDACTED_PRIVATE_KEY}\ndone",
        ),
        ("-----BEGIN PRIVATE KEY-----\ncut off", REDACTED_PRIVATE_KEY),
        ("token ghp_" + "a1B2" * 9 + " leaked", f"token {REDACTED_TOKEN} leaked"),
        ("slack xoxb-1234567890-abcdefghij", f"slack {REDACTED_TOKEN}"),
        ("aws AKIAABCDEFGHIJKLMNOP", f"aws {REDACTED_TOKEN}"),
        (
            "db at postgresql://flywheel:hunter2@db.internal:5432/history",
            f"db at postgresql://{REDACTED}@db.internal:5432/history",
        ),
        ("clone https://ghuser@github.example/repo", f"clone https://{REDACTED}@github.example/repo"),
        (
            "posted to https://hooks.slack.com/services/T000/B000/XXXX ok",
            f"posted to https://hooks.slack.com/services/{REDACTED} ok",
        ),
        ("approve by alice.smith+sre@corp.example.com", f"approve by {REDACTED_EMAIL}"),
        ("rollout restart of deployment/web in shop", "rollout restart of deployment/web in shop"),
        ("scaled web from 2 to 3 replicas (max 10)", "scaled web from 2 to 3 replicas (max 10)"),
    ],
)
def test_known_shapes_are_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize("key", SECRET_KEY_SPELLINGS)
def test_secret_naming_keys_are_recognised(key: str) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize("key", HARMLESS_KEYS)
def test_ordinary_keys_are_not_sensitive(key: str) -> None:
    assert not is_sensitive_key(key)


def test_values_under_secret_keys_are_replaced_whole_at_any_depth() -> None:
    payload = {
        "webhook": {"url": "https://hooks.example/notify", "headers": {"Authorization": "Bearer abc"}},
        "credentials": {"user": "svc", "password": "x"},
        "attempts": [{"token": 12345, "ok": True}, {"token": None}],
        "replicas": 3,
    }
    assert redact_payload(payload) == {
        "webhook": {"url": "https://hooks.example/notify", "headers": {"Authorization": REDACTED}},
        "credentials": REDACTED,
        "attempts": [{"token": REDACTED, "ok": True}, {"token": None}],
        "replicas": 3,
    }


def test_tuples_become_lists_and_other_scalars_pass_through() -> None:
    assert redact_payload(("a", 1, 2.5, False, None)) == ["a", 1, 2.5, False, None]


def test_optional_text() -> None:
    assert redact_optional_text(None) is None
    assert redact_optional_text("password=x") == f"password={REDACTED}"


# --------------------------------------------------------------------------- properties


SECRET_CARRIERS = [
    "password={secret}",
    "password: '{secret}'",
    '"clientSecret": "{secret}"',
    "?api_key={secret}&x=1",
    "Authorization: Basic {secret}",
    "Bearer {secret}",
    "https://user:{secret}@host.example/path",
    "https://{secret}@host.example",
]


@given(before=PROSE, after=PROSE, secret=SECRET, carrier=st.sampled_from(SECRET_CARRIERS))
def test_a_secret_in_any_carrier_never_survives(before: str, after: str, secret: str, carrier: str) -> None:
    text = f"{before} {carrier.format(secret=secret)} {after}"
    assert secret not in redact_text(text)


@given(before=PROSE, after=PROSE, local=EMAIL_LOCAL, domain=EMAIL_DOMAIN)
def test_an_email_address_never_survives(before: str, after: str, local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    redacted = redact_text(f"{before} {address} {after}")
    assert address not in redacted
    assert "@" not in redacted


@given(
    header=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=4),
    claims=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=4),
    signature=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"),
    before=PROSE,
)
def test_a_jwt_never_survives(header: str, claims: str, signature: str, before: str) -> None:
    token = f"eyJ{header}.{claims}.{signature}"
    assert redact_text(f"{before} {token}") == f"{before} {REDACTED_JWT}"


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text())
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@given(payload=JSON_VALUES)
def test_redaction_is_idempotent(payload: Any) -> None:
    once = redact_payload(payload)
    assert redact_payload(once) == once


@given(text=st.text())
def test_text_redaction_is_idempotent(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once


def _shape(value: Any) -> Any:
    """The payload with every string replaced by a placeholder: what redaction must preserve."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    if isinstance(value, str):
        return str
    return value


@given(payload=JSON_VALUES)
def test_redaction_keeps_the_shape_of_payloads_without_secret_keys(payload: Any) -> None:
    assume(not any(is_sensitive_key(key) for key in _all_keys(payload)))
    assert _shape(redact_payload(payload)) == _shape(payload)


def _all_keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [*value.keys(), *(key for item in value.values() for key in _all_keys(item))]
    if isinstance(value, list):
        return [key for item in value for key in _all_keys(item)]
    return []


@given(
    payload=JSON_VALUES,
    path=st.lists(st.sampled_from(HARMLESS_KEYS), max_size=4),
    key=st.sampled_from(SECRET_KEY_SPELLINGS),
    secret=SECRET,
)
def test_a_secret_under_a_secret_key_never_survives_at_any_depth(
    payload: Any, path: list[str], key: str, secret: str
) -> None:
    assume(secret not in json.dumps(payload))
    nested: Any = {key: secret, "sibling": payload}
    for step in reversed(path):
        nested = {step: [nested]}
    assert secret not in json.dumps(redact_payload(nested))


@given(text=PROSE)
def test_prose_without_secrets_is_unchanged(text: str) -> None:
    assume("bearer" not in text)
    assert redact_text(text) == text
