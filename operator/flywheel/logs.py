"""Structured logging (structlog) shared by the operator and the CLI.

Every line, Kopf's and the libraries' included, goes through :func:`redact_event` before it is
rendered: values under keys that name a secret are replaced, credentials are replaced by shape
(bearer tokens, JWTs, URL userinfo, private keys, ``password=...``), and so are the secret
values the operator holds (:func:`register_secrets`: its intake token, the advisors' API key,
the passwords in its database and Redis URLs), wherever they appear.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from enum import StrEnum
from functools import lru_cache
from typing import Any

import structlog

from flywheel.domain.redaction import (
    MIN_KNOWN_SECRET_LENGTH,
    REDACTED,
    is_sensitive_key,
    may_hold_credential,
    redact_credentials,
)


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class LogFormat(StrEnum):
    CONSOLE = "console"  # for a person at a terminal
    JSON = "json"  # one object per line, for a log collector


_known_secrets: set[str] = set()
# Structlog's own keys, never secrets (and "event" is the message, redacted by shape only).
_STRUCTURAL_KEYS = frozenset({"event", "level", "logger", "timestamp"})


def register_secrets(values: Iterable[str | None]) -> None:
    """Secret values the operator holds: never written to the log, wherever they appear."""
    _known_secrets.update(value for value in values if value and len(value) >= MIN_KNOWN_SECRET_LENGTH)


@lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    return key not in _STRUCTURAL_KEYS and is_sensitive_key(key)


def _clean(key: object, value: Any) -> Any:
    if value is not None and isinstance(key, str) and _secret_key(key):
        return REDACTED
    if isinstance(value, str):
        return redact_credentials(value, _known_secrets)
    if isinstance(value, Mapping):
        return {k: _clean(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(None, item) for item in value]
    if isinstance(value, BaseException):
        return redact_credentials(str(value), _known_secrets)
    return value


def redact_event(_: Any, __: str, event_dict: Any) -> Any:
    """The structlog processor: every value redacted as the module docstring says."""
    # The common line (flat, no secret-naming key, nothing credential-shaped) is looked at once.
    flat = all(value is None or isinstance(value, str | int | float) for value in event_dict.values())
    if flat and not any(isinstance(key, str) and _secret_key(key) for key in event_dict):
        joined = "\n".join(value for value in event_dict.values() if isinstance(value, str))
        if not may_hold_credential(joined, _known_secrets):
            return event_dict
    return {key: _clean(key, value) for key, value in event_dict.items()}


def configure_logging(level: LogLevel | str = LogLevel.INFO, fmt: LogFormat | str = LogFormat.CONSOLE) -> None:
    """Route stdlib logging (Kopf, kubernetes, aiohttp) and structlog through one renderer."""
    renderer: structlog.types.Processor
    if fmt == LogFormat.JSON:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Exceptions are rendered to text first, so that a traceback is redacted like the rest.
    redacting: list[structlog.types.Processor] = [structlog.processors.format_exc_info, redact_event]
    structlog.configure(
        processors=[*shared, *redacting, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=[*shared, *redacting], processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer,
        ])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(str(level).upper())
    # No record shows where it was logged from, and finding out walks the stack on every call
    # (a twentieth of the operator's CPU with 10,000 objects present); the logging HOWTO's
    # "Optimization" section names this switch.
    logging._srcfile = None


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
