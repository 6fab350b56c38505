"""Redaction of secrets and personal data before anything reaches the history database.

Pure functions, no I/O. The history store runs every free-text field and every audit payload
through here, so a token pasted into an approval reason or a password inside a notification
payload is never written to disk.

Two layers:
- by key: in a mapping, the value under a key that names a secret (``password``, ``apiKey``,
  ``Authorization``, ``client_secret``, ...) is replaced whole, whatever its type;
- by shape: inside any string, bearer credentials, JWTs, private key blocks, well-known token
  formats, ``key=value`` secrets, credentials in URLs and email addresses are replaced.

Redaction is idempotent (redacting twice gives the same result as once) and keeps the shape
of the payload (same keys, same list lengths, numbers and booleans untouched), so a reviewer
can still see *that* something was there and where.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

REDACTED: Final = "[REDACTED]"
REDACTED_EMAIL: Final = "[REDACTED-EMAIL]"
REDACTED_JWT: Final = "[REDACTED-JWT]"
REDACTED_TOKEN: Final = "[REDACTED-TOKEN]"
REDACTED_PRIVATE_KEY: Final = "[REDACTED-PRIVATE-KEY]"

# Matched against a key lower-cased with everything but letters and digits removed, so that
# ``apiKey``, ``api_key``, ``X-Api-Key`` and ``API-KEY`` all normalise to something containing
# ``apikey``. Over-redacting a harmless key (``tokenCount``) is the accepted price of never
# missing a real one.
_SENSITIVE_KEY_PARTS: Final[tuple[str, ...]] = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "authorization",
    "credential",
    "cookie",
    "sessionid",
    "jwt",
)
# Too short to look for as a part of a longer key ("auth" is in "author"), so only exact matches.
_SENSITIVE_EXACT_KEYS: Final[frozenset[str]] = frozenset({"auth", "pwd", "pass", "pin", "otp"})

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]")

# Key names recognised inside free text (``password=hunter2``, ``"apiKey": "abc"``, ``?token=x``).
_TEXT_SECRET_KEY = (
    r"[A-Za-z0-9_.\-]*"
    r"(?:password|passwd|passphrase|pwd|secret|token|api[_\-]?key|access[_\-]?key|private[_\-]?key|credentials?)"
    r"[A-Za-z0-9_.\-]*"
)

# Order matters: the earlier patterns consume text the later ones would misread (the
# ``user:password@host`` of a URL looks like an email address to the email pattern).
_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#@\[\]]+)@")
_SLACK_WEBHOOK_PATH = re.compile(r"(?P<prefix>hooks\.slack\.com/(?:services|workflows)/)[^\s\"'<>]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*")
_KNOWN_TOKEN = re.compile(
    r"\b(?:"
    r"gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|glpat-[A-Za-z0-9_\-]{20,}"  # GitLab
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|sk-[A-Za-z0-9_\-]{20,}"  # OpenAI-style API keys
    r")"
)
_AUTHORIZATION_HEADER = re.compile(
    r"(?P<head>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
    r"(?:(?P<scheme>basic|bearer|digest|token|negotiate)\s+)?"
    r"(?P<credential>[^\s,;\"']+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<scheme>\bbearer)\s+(?P<credential>[A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)
_KEY_VALUE_SECRET = re.compile(
    rf"(?P<key>{_TEXT_SECRET_KEY})(?P<separator>[\"']?\s*[:=]\s*)"
    # A marker left by an earlier rule counts as one value, so that redacting twice changes nothing.
    r"(?P<value>\"[^\"]*\"|'[^']*'|\[REDACTED[A-Z\-]*\]|[^\s,;&\"'}\]]+)",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b")


def _redact_userinfo(match: re.Match[str]) -> str:
    return f"{match['scheme']}{REDACTED}@"


def _redact_authorization(match: re.Match[str]) -> str:
    scheme = f"{match['scheme']} " if match["scheme"] else ""
    return f"{match['head']}{scheme}{REDACTED}"


def _redact_bearer(match: re.Match[str]) -> str:
    return f"{match['scheme']} {REDACTED}"


def _redact_key_value(match: re.Match[str]) -> str:
    value = match["value"]
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match['key']}{match['separator']}{quote}{REDACTED}{quote}"


_TEXT_RULES: Final[tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...]] = (
    (_PRIVATE_KEY_BLOCK, REDACTED_PRIVATE_KEY),
    (_URL_USERINFO, _redact_userinfo),
    (_SLACK_WEBHOOK_PATH, rf"\g<prefix>{REDACTED}"),
    (_JWT, REDACTED_JWT),
    (_KNOWN_TOKEN, REDACTED_TOKEN),
    (_AUTHORIZATION_HEADER, _redact_authorization),
    (_BEARER, _redact_bearer),
    (_KEY_VALUE_SECRET, _redact_key_value),
    (_EMAIL, REDACTED_EMAIL),
)


_CREDENTIAL_RULES: Final = tuple(rule for rule in _TEXT_RULES if rule[0] is not _EMAIL)
# What each credential rule needs to find at least once, lower-cased (a superset: finding one
# only means the rules are run). Plain substrings, because every log line is looked at:
# tests/unit/test_log_redaction.py checks that the rules never change a text without one.
_CREDENTIAL_NEEDLES: Final = (
    "-----begin", "://", "hooks.slack.com", "eyj", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
    "glpat-", "xox", "akia", "asia", "sk-", "authorization", "bearer", "pass", "pwd", "secret", "token",
    "key", "credential",
)


def is_sensitive_key(key: object) -> bool:
    """True when a mapping key names a secret, so that its whole value must not be stored."""
    normalised = _NON_ALPHANUMERIC.sub("", str(key).lower())
    if normalised in _SENSITIVE_EXACT_KEYS:
        return True
    return any(part in normalised for part in _SENSITIVE_KEY_PARTS)


def redact_text(text: str) -> str:
    """``text`` with secrets, credentials and email addresses replaced by markers."""
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


# Known secret values shorter than this are not searched for: they would match ordinary words.
MIN_KNOWN_SECRET_LENGTH: Final = 8


def redact_credentials(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with credentials replaced: the ``known`` secret values, then every credential shape.

    For logs, Events and statuses, which keep people's names and email addresses (they say who
    did what) but never a credential, whether it was recognised by shape or is one the operator
    holds (its intake token, an advisor's API key, a database password).
    """
    for value in known:
        if len(value) >= MIN_KNOWN_SECRET_LENGTH and value in text:
            text = text.replace(value, REDACTED)
    # Every line of the log comes through here: most hold nothing any rule could match.
    if not _may_match_a_rule(text):
        return text
    for pattern, replacement in _CREDENTIAL_RULES:
        text = pattern.sub(replacement, text)
    return text


def may_hold_credential(text: str, known: Iterable[str] = ()) -> bool:
    """Whether :func:`redact_credentials` could change ``text`` (False: it surely would not)."""
    if any(len(value) >= MIN_KNOWN_SECRET_LENGTH and value in text for value in known):
        return True
    return _may_match_a_rule(text)


def _may_match_a_rule(text: str) -> bool:
    lowered = text.lower()
    return any(needle in lowered for needle in _CREDENTIAL_NEEDLES)


def redact_optional_text(text: str | None) -> str | None:
    """:func:`redact_text` for optional columns."""
    return None if text is None else redact_text(text)


def redact_payload(value: Any) -> Any:
    """A copy of a JSON-like value with every secret and email address redacted.

    Mappings become dicts (keys kept as they are), lists and tuples become lists, strings are
    redacted by shape, and any value under a sensitive key is replaced by ``[REDACTED]`` —
    except ``None``, kept so that "no password was set" stays distinguishable. Other scalars
    (numbers, booleans) are returned unchanged.
    """
    if isinstance(value, Mapping):
        return {
            key: (REDACTED if item is not None and is_sensitive_key(key) else redact_payload(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_payload(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


__all__ = [
    "MIN_KNOWN_SECRET_LENGTH",
    "REDACTED",
    "REDACTED_EMAIL",
    "REDACTED_JWT",
    "REDACTED_PRIVATE_KEY",
    "REDACTED_TOKEN",
    "is_sensitive_key",
    "may_hold_credential",
    "redact_credentials",
    "redact_optional_text",
    "redact_payload",
    "redact_text",
]
