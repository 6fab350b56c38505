"""The one exception tree of Flywheel.

Library errors are chained underneath (``raise ... from exc``) so that the cause is
kept while callers only need to know these classes.
"""

from __future__ import annotations


class FlywheelError(Exception):
    """Base of every error Flywheel raises on purpose."""


class ConfigurationError(FlywheelError):
    """A setting or a configuration file is invalid; the message names it."""


class InvalidInputError(FlywheelError):
    """User input (a resource spec, a webhook payload, a CLI argument) is invalid.

    ``field`` is the dotted path of the offending field, so messages can name it.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class AlertRefusedError(InvalidInputError):
    """An Alertmanager alert cannot become an Incident; ``code`` is the bounded reason (a metric label)."""

    def __init__(self, code: str, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.code = code


class StoreUnavailableError(FlywheelError):
    """A backing store (Redis, the database, the Kubernetes API) cannot be reached right now.

    Transient by nature: callers retry later or degrade.
    """


class RedisUnavailableError(StoreUnavailableError):
    """Redis cannot be reached or answered with a connection-level error."""


class DatabaseUnavailableError(StoreUnavailableError):
    """The history database cannot be reached."""


class KubernetesApiError(FlywheelError):
    """The Kubernetes API refused a request for a reason other than unavailability."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DevClusterError(FlywheelError):
    """The local development control plane could not be built, started or stopped."""
