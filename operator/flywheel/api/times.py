"""Timestamps as the Kubernetes API writes them (RFC 3339 in UTC, ``Z``), formatted and parsed here.

The API server writes ``metav1.Time`` to the second (``2025-03-01T12:00:00Z``); Kopf, Alertmanager
and our own fields may carry fractions of a second or an offset. Everything that puts a time
into a body, an annotation, an Event or a report formats it with :func:`format_time` (to the
second) or :func:`format_precise_time` (fractions kept); everything that reads one from a body
uses :func:`parse_time` (a bad value is an error) or :func:`read_time` (a bad value is absent).
Pydantic models format and parse their own ``datetime`` fields.

Identities derived from a time (occurrence ids, notification dedup keys, Redis members) keep
their own formats on purpose: they are stored, and changing them would break idempotency across
an upgrade.
"""

from __future__ import annotations

from datetime import UTC, datetime


def _utc(moment: datetime) -> datetime:
    # A naive datetime is taken as UTC: every clock of ours is UTC, never local time.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def format_time(moment: datetime) -> str:
    """``moment`` in UTC to the second, as the API server writes ``metav1.Time``: ``2025-03-01T12:00:00Z``."""
    return _utc(moment).isoformat(timespec="seconds").replace("+00:00", "Z")


def format_precise_time(moment: datetime) -> str:
    """``moment`` in UTC with its fractions of a second (when it has any): ``2025-03-01T12:00:00.250000Z``."""
    return _utc(moment).isoformat().replace("+00:00", "Z")


def parse_time(value: object) -> datetime:
    """An RFC 3339 timestamp (``Z`` or an offset, fractions allowed); :class:`ValueError` when it is not one."""
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def parse_optional_time(value: object) -> datetime | None:
    """:func:`parse_time` of a value that may be absent (``None`` or empty: ``None``)."""
    return parse_time(value) if value else None


def read_time(value: object, *, assume_utc: bool = False) -> datetime | None:
    """A timestamp read leniently: ``None`` when absent, not a string, malformed, or without a zone.

    ``assume_utc``: a timestamp without a zone is taken as UTC instead (Kopf's peering records).
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC) if assume_utc else None
    return parsed
