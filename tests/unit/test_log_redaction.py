"""The operator's log redaction (issue 17, item 10): secrets never reach a log line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from flywheel import logs
from flywheel.domain import redaction
from flywheel.domain.redaction import REDACTED, redact_credentials
from flywheel.stores.advisor_client import _snippet

pytestmark = pytest.mark.unit

INTAKE_TOKEN = "intake-token-0123456789abcdef0123456789"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJydW4ifQ.c2lnbmF0dXJlc2lnbmF0dXJl"


@pytest.fixture()
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.register_secrets([INTAKE_TOKEN, None, "short"])
    structlog.reset_defaults()  # loggers cached by earlier tests would keep their processors
    logs.configure_logging("DEBUG", "json")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_known_secrets_shapes_and_secret_keys_are_redacted_in_structured_lines(captured: io.StringIO) -> None:
    log = logs.get_logger("test")
    log.warning(f"presented {INTAKE_TOKEN}", detail=f"Authorization: Bearer {INTAKE_TOKEN}",
                token=JWT, nested={"url": "postgresql://flywheel:hunter2pass@db/flywheel", "items": [JWT]},
                user="alice@example.com")
    (line,) = lines(captured)
    text = json.dumps(line)
    assert INTAKE_TOKEN not in text and JWT not in text and "hunter2pass" not in text
    assert line["token"] == REDACTED
    assert line["user"] == "alice@example.com", "who did what stays readable"


def test_lines_of_other_libraries_and_tracebacks_are_redacted_too(captured: io.StringIO) -> None:
    logging.getLogger("kopf.objects").error("failed with %s", INTAKE_TOKEN)
    try:
        raise RuntimeError(f"refused {JWT}")
    except RuntimeError:
        logs.get_logger("test").exception("boom")
    text = captured.getvalue()
    assert INTAKE_TOKEN not in text and JWT not in text
    assert "RuntimeError" in text, "the traceback itself is kept"


def test_short_values_are_not_searched_for() -> None:
    assert redact_credentials("a short word", ["short"]) == "a short word"


def test_an_advisor_error_echoing_its_key_is_redacted_before_it_is_cut() -> None:
    key = "advisor-key-7f3a9c2e5b1d4f6a8c0e2b4d6f8a0c2e"
    body = json.dumps({"error": f"invalid api key: Bearer {key}", "key": key, "padding": "x" * 400}).encode()
    snippet = _snippet(body, key)
    assert key not in snippet and key[:12] not in snippet
    assert REDACTED in snippet


FRAGMENTS = [
    "-----BEGIN RSA PRIVATE KEY-----abc-----END RSA PRIVATE KEY-----", "https://user:pw@host/x",
    "hooks.slack.com/services/T0/B0/xyz", JWT, "ghp_" + "a" * 24, "glpat-" + "b" * 22, "xoxb-1234567890ab",
    "AKIA" + "A" * 16, "sk-" + "c" * 24, "Authorization: Basic abc", "Bearer abc.def", "password=hunter2",
    "api-key: k", "ACCESS_KEY='v'", "credentials: x", "alice@example.com", "run checkout-oom-1", " ", "=", ":",
    "Deployment/checkout", "2/5 executing",
]


@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=12), max_size=8))
def test_the_fast_path_never_skips_a_text_a_rule_would_change(parts: list[str]) -> None:
    text = "".join(parts)
    changed = text
    for pattern, replacement in redaction._CREDENTIAL_RULES:
        changed = pattern.sub(replacement, changed)
    if changed != text:
        assert redaction.may_hold_credential(text), text
    assert redact_credentials(text) == changed
