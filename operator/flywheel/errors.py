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


class PrometheusUnavailableError(StoreUnavailableError):
    """Prometheus cannot be reached, timed out or answered 5xx (the symptom check falls back)."""


class StoreRefusedError(FlywheelError):
    """A backing store refused the request itself (a script error, a value of the wrong type).

    Permanent, unlike :class:`StoreUnavailableError`: the same request is refused again until
    the code, the data or the configuration changes, so callers do not retry it sooner than
    their backoff allows and the error is reported, not degraded around.
    """


class RedisRefusedError(StoreRefusedError):
    """Redis answered, and refused the command (see ``flywheel.stores.redis_errors``)."""


class PrometheusRefusedError(StoreRefusedError):
    """Prometheus refused the query (4xx, a bad expression) or answered something that is not its API."""


class KubernetesApiError(FlywheelError):
    """The Kubernetes API refused a request for a reason other than unavailability."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubernetesUnavailableError(StoreUnavailableError):
    """The Kubernetes API cannot be reached, timed out, or answered 429 or 5xx: try again later."""


class NotFoundError(KubernetesApiError):
    """404: no such object (or no such resource)."""


class ConflictError(KubernetesApiError):
    """409: the object exists already, or changed since it was read (a resourceVersion precondition)."""


class ForbiddenError(KubernetesApiError):
    """401 or 403: the operator's identity may not do this."""


class GoneError(KubernetesApiError):
    """410: the object, or the resourceVersion asked for, is gone."""


class InvalidWriteError(KubernetesApiError):
    """The API server refused a write as invalid (422): the same write is refused again.

    ``causes`` are the API server's ``(field, message)`` pairs (``details.causes`` of its
    Status answer), so that the error can name the field.
    """

    def __init__(self, message: str, causes: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message, status=422)
        self.causes = causes

    def describe(self) -> str:
        """The refused fields and why, as the API server said: ``field: message; ...``."""
        if not self.causes:
            return str(self)
        return "; ".join(f"{field}: {message}" if field else message for field, message in self.causes)


class DevClusterError(FlywheelError):
    """The local development control plane could not be built, started or stopped."""
