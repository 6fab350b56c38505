"""The one Redis error mapping (``flywheel.stores.redis_errors``), over the replies Redis sends.

Errors are built the way redis-py builds them from a server reply (its own parser), so the
table is checked against the classes a real reply turns into, not against hand-picked ones.

Scenario matrix:
- transient (RedisUnavailableError, a StoreUnavailableError): READONLY (a failover's
  replica), LOADING, MASTERDOWN, CLUSTERDOWN, TRYAGAIN, OOM, BUSY, MISCONF, NOREPLICAS, NOAUTH,
  WRONGPASS, NOPERM, too many clients; client side: connection refused, timeouts (redis-py's,
  the builtin, which asyncio's is), an unreadable reply, an exhausted pool;
- permanent (RedisRefusedError, a StoreRefusedError): WRONGTYPE, script errors, unknown
  commands, Cluster redirections and cross-slot keys, EXECABORT, NOSCRIPT, a bad argument;
- every exception class redis-py defines lands in exactly one of the two;
- the context manager chains the cause, names what was being done and why, and lets other
  exceptions (and cancellation) through untouched.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest
import redis.exceptions
from redis._parsers.base import BaseParser

from flywheel.errors import (
    RedisRefusedError,
    RedisUnavailableError,
    StoreRefusedError,
    StoreUnavailableError,
)
from flywheel.stores.redis_errors import classify, redis_error, redis_errors, reply_code

pytestmark = pytest.mark.unit

TRANSIENT_REPLIES = [
    "READONLY You can't write against a read only replica.",
    "READONLY You can't write against a read only replica. script: 131b5f2e, on @user_script:1.",
    "LOADING Redis is loading the dataset in memory",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "CLUSTERDOWN The cluster is down",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    "NOREPLICAS Not enough good replicas to write.",
    "NOAUTH Authentication required.",
    "WRONGPASS invalid username-password pair or user is disabled.",
    "NOPERM User flywheel has no permissions to run the 'set' command",
    "ERR max number of clients reached",
]

PERMANENT_REPLIES = [
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "ERR user_script:1: Script attempted to access nonexistent global variable 'nosuch' script: c843e9",
    "ERR Wrong number of args calling Redis command from script script: 77e3e7, on @user_script:1.",
    "ERR unknown command 'FOO', with args beginning with: ",
    "MOVED 3999 127.0.0.1:6381",
    "ASK 3999 127.0.0.1:6381",
    "CROSSSLOT Keys in request don't hash to the same slot",
    "EXECABORT Transaction discarded because of previous errors.",
    "NOSCRIPT No matching script. Please use EVAL.",
]


def from_reply(reply: str) -> BaseException:
    """The exception redis-py raises for this error reply."""
    error: BaseException = BaseParser.parse_error(reply)
    return error


@pytest.mark.parametrize("reply", TRANSIENT_REPLIES)
def test_replies_meaning_not_now_are_transient(reply: str) -> None:
    mapped = redis_error(from_reply(reply), "spending an approval token")
    assert isinstance(mapped, RedisUnavailableError)
    assert isinstance(mapped, StoreUnavailableError)
    assert str(mapped).startswith("Redis unavailable while spending an approval token: ")


@pytest.mark.parametrize("reply", PERMANENT_REPLIES)
def test_replies_refusing_the_command_are_permanent(reply: str) -> None:
    mapped = redis_error(from_reply(reply), "recording an occurrence")
    assert isinstance(mapped, RedisRefusedError)
    assert isinstance(mapped, StoreRefusedError)
    assert not isinstance(mapped, StoreUnavailableError)
    assert str(mapped).startswith("Redis refused while recording an occurrence: ")


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        redis.exceptions.InvalidResponse("Protocol Error: H, TTP/1.1 400 Bad Request"),
        redis.exceptions.MaxConnectionsError("Too many connections"),
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),  # asyncio's too, since Python 3.11
        OSError(113, "No route to host"),
    ],
    ids=type,
)
def test_client_side_connection_failures_are_transient(error: BaseException) -> None:
    assert isinstance(redis_error(error, "pinging"), RedisUnavailableError)


def test_a_bad_argument_is_permanent() -> None:
    error = redis.exceptions.DataError("Invalid input of type: 'dict'. Convert to a bytes, string, int or float first.")
    assert isinstance(redis_error(error, "pinging"), RedisRefusedError)


def test_the_failover_reply_says_what_happened() -> None:
    mapped = redis_error(from_reply("READONLY You can't write against a read only replica."), "spending a token")
    assert "read-only replica" in str(mapped)
    assert "ReadOnlyError" in str(mapped)


def test_reply_codes_are_read_from_the_reply() -> None:
    assert reply_code(from_reply("READONLY You can't write against a read only replica.")) == "READONLY"
    assert reply_code(from_reply("BUSY Redis is busy running a script.")) == "BUSY"
    assert reply_code(redis.exceptions.ResponseError("user_script:1: oops")) is None
    assert reply_code(redis.exceptions.ConnectionError("Connection refused")) is None


def every_redis_exception_class() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(redis.exceptions, inspect.isclass)
        if issubclass(cls, redis.exceptions.RedisError)
    ]


@pytest.mark.parametrize("cls", every_redis_exception_class(), ids=lambda cls: cls.__name__)
def test_every_exception_class_of_redis_py_is_either_transient_or_permanent(cls: type[BaseException]) -> None:
    try:
        error = cls("something went wrong")
    except (TypeError, ValueError):  # a constructor that parses its reply (MovedError: slot and node)
        error = cls("3999 127.0.0.1:6381")
    failure = classify(error)
    assert failure is not None
    mapped = redis_error(error, "doing something")
    assert isinstance(mapped, StoreUnavailableError) is failure.transient
    assert isinstance(mapped, StoreRefusedError) is not failure.transient


def test_exceptions_that_are_not_redis_s_are_not_classified() -> None:
    assert classify(ValueError("not a Redis problem")) is None
    assert classify(KeyError("field")) is None


def test_the_context_manager_chains_the_cause_and_lets_other_errors_through() -> None:
    cause = from_reply("READONLY You can't write against a read only replica.")
    with pytest.raises(RedisUnavailableError) as raised, redis_errors("spending an approval token"):
        raise cause
    assert raised.value.__cause__ is cause

    with pytest.raises(ValueError, match="not Redis"), redis_errors("anything"):
        raise ValueError("not Redis")


async def test_the_context_manager_lets_cancellation_through() -> None:
    async def cancelled_inside() -> None:
        with redis_errors("waiting"):
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await cancelled_inside()
