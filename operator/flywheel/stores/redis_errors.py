"""The one mapping from redis-py's exceptions to Flywheel's own: transient or permanent.

Every Redis store (anomaly counts, approval-token ids, metrics reads, stall de-duplication)
wraps its commands in :func:`redis_errors`, so a failover looks the same everywhere:

- :class:`~flywheel.errors.RedisUnavailableError` (a ``StoreUnavailableError``): Redis cannot
  serve this request *now* and the same request may succeed later without anything changing
  on our side — the connection dropped or timed out, the node is loading its dataset, a
  failover demoted it to a read-only replica (``READONLY``), its link to the primary is down
  (``MASTERDOWN``), it is out of memory, busy with a script, cannot persist (``MISCONF``), or
  refuses our credentials or ACL (a rotated password is fixed outside the request, and the
  product promise is that an Incident is still processed without Redis). Callers degrade
  and record later.
- :class:`~flywheel.errors.RedisRefusedError` (a ``StoreRefusedError``): Redis answered and
  refused the command itself — a Lua script error, ``WRONGTYPE`` (a key of another layout),
  a syntax error, a Redis Cluster redirection (Cluster is not supported) — or the client
  refused an argument. The same request fails again: it is reported, not retried sooner.

Lookup is by the exception's class hierarchy, most specific class first, then — for a plain
``ResponseError`` redis-py did not specialise — by the error code Redis put first in its
reply (``BUSY``, ``MISCONF``, ``NOREPLICAS`` ...). Anything else Redis may invent later is
permanent: a request we cannot classify is not one to hammer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import redis.exceptions

from flywheel.errors import RedisRefusedError, RedisUnavailableError


@dataclass(frozen=True)
class RedisFailure:
    """How one redis-py exception is classified: transient or not, and why in words."""

    transient: bool
    meaning: str


def _unavailable(meaning: str) -> RedisFailure:
    return RedisFailure(transient=True, meaning=meaning)


def _refused(meaning: str) -> RedisFailure:
    return RedisFailure(transient=False, meaning=meaning)


# By class; the most specific class of an exception's MRO that is listed here wins (so
# ReadOnlyError is transient although ResponseError is not, AuthenticationError is listed
# beside ConnectionError to say why).
FAILURES_BY_CLASS: Final[Mapping[type[BaseException], RedisFailure]] = {
    redis.exceptions.ConnectionError: _unavailable("connection failed"),
    redis.exceptions.BusyLoadingError: _unavailable("Redis is loading its dataset"),
    redis.exceptions.MaxConnectionsError: _unavailable("connection pool exhausted"),
    redis.exceptions.AuthenticationError: _unavailable("credentials refused (FLYWHEEL_REDIS_URL)"),
    redis.exceptions.AuthorizationError: _unavailable("credentials refused (FLYWHEEL_REDIS_URL)"),
    redis.exceptions.NoPermissionError: _unavailable("the ACL of our Redis user refuses the command"),
    redis.exceptions.TimeoutError: _unavailable("Redis did not answer in time"),
    redis.exceptions.InvalidResponse: _unavailable("unreadable reply (is FLYWHEEL_REDIS_URL a Redis?)"),
    redis.exceptions.ReadOnlyError: _unavailable("the node is a read-only replica (failover in progress?)"),
    redis.exceptions.ClusterDownError: _unavailable("the cluster is down"),
    redis.exceptions.MasterDownError: _unavailable("the replica lost its link to the primary"),
    redis.exceptions.TryAgainError: _unavailable("Redis asks to try again"),
    redis.exceptions.OutOfMemoryError: _unavailable("Redis is out of memory (maxmemory)"),
    # The builtins cover socket errors should a redis-py code path let one through unwrapped
    # (builtin ConnectionError and TimeoutError are OSErrors).
    OSError: _unavailable("connection failed"),
    redis.exceptions.AskError: _refused("Redis Cluster redirection: Redis Cluster is not supported"),
    redis.exceptions.ClusterCrossSlotError: _refused("Redis Cluster is not supported (keys in different slots)"),
    redis.exceptions.ExecAbortError: _refused("transaction aborted"),
    redis.exceptions.NoScriptError: _refused("script not loaded"),
    redis.exceptions.DataError: _refused("invalid command argument"),
    redis.exceptions.ResponseError: _refused("command refused"),
    redis.exceptions.RedisError: _refused("Redis client error"),
}

# By the error code that starts the reply, for plain ResponseErrors: codes redis-py does not
# turn into a class of its own but that mean "not now" rather than "never".
TRANSIENT_REPLY_CODES: Final[Mapping[str, str]] = {
    "BUSY": "Redis is busy running a script",
    "MISCONF": "Redis cannot persist to disk and refuses writes",
    "NOREPLICAS": "not enough replicas to accept writes",
}


def reply_code(exc: BaseException) -> str | None:
    """The error code Redis put first in its reply (``READONLY``, ``BUSY``...), if it sent one."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    if isinstance(exc, redis.exceptions.ResponseError) and exc.args:
        first = str(exc.args[0]).split(" ", 1)[0]
        if first.isupper() and first.isalpha():
            return first
    return None


def classify(exc: BaseException) -> RedisFailure | None:
    """How ``exc`` is classified; None for an exception that is not Redis's (nor a socket's)."""
    for cls in type(exc).__mro__:
        failure = FAILURES_BY_CLASS.get(cls)
        if failure is None:
            continue
        if not failure.transient:
            meaning = TRANSIENT_REPLY_CODES.get(reply_code(exc) or "")
            if meaning is not None:
                return _unavailable(meaning)
        return failure
    return None


def redis_error(exc: BaseException, doing: str) -> RedisUnavailableError | RedisRefusedError:
    """Flywheel's error for ``exc`` raised while ``doing``; its message says which and why."""
    failure = classify(exc) or _refused("unexpected error")
    verdict = "unavailable" if failure.transient else "refused"
    message = f"Redis {verdict} while {doing}: {failure.meaning} ({type(exc).__name__}: {exc})"
    return RedisUnavailableError(message) if failure.transient else RedisRefusedError(message)


@contextmanager
def redis_errors(doing: str) -> Iterator[None]:
    """Turn the redis-py (and socket) errors raised inside into Flywheel's, chained.

    A plain (non-async) context manager works around ``await`` too; cancellation is not an
    Exception and passes through untouched.
    """
    try:
        yield
    except (redis.exceptions.RedisError, OSError) as exc:
        raise redis_error(exc, doing) from exc


__all__ = [
    "FAILURES_BY_CLASS",
    "TRANSIENT_REPLY_CODES",
    "RedisFailure",
    "classify",
    "redis_error",
    "redis_errors",
    "reply_code",
]
