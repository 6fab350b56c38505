"""Real redis-servers a test owns, and a failover between two of them.

A Sentinel failover demotes the old primary into a read-only replica of the new one; a
client still connected to the old node then gets ``READONLY`` for every write. ``Failover``
does exactly that with ``REPLICAOF``, and promotes the node back with ``REPLICAOF NO ONE``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import redis
from pytest_redis.executor import RedisExecutor

from tests.harness.ports import free_port


def redis_executor() -> RedisExecutor:
    """A redis-server on a free loopback port with its own data directory (not started yet)."""
    return RedisExecutor(
        "/usr/bin/redis-server", databases=4, redis_timeout=5, loglevel="warning", host="127.0.0.1",
        port=free_port(), datadir=Path(tempfile.mkdtemp(prefix="flywheel-redis-")),
    )


class Failover:
    """Demote ``node`` into a replica of ``new_primary``, and promote it back."""

    def __init__(self, node: RedisExecutor, new_primary: RedisExecutor) -> None:
        self._admin = redis.Redis(host="127.0.0.1", port=node.port)
        self._new_primary = new_primary

    def demote(self) -> None:
        self._admin.execute_command("REPLICAOF", "127.0.0.1", str(self._new_primary.port))
        assert self._admin.info("replication")["role"] == "slave"

    def promote(self) -> None:
        self._admin.execute_command("REPLICAOF", "NO", "ONE")
        assert self._admin.info("replication")["role"] == "master"

    def close(self) -> None:
        self._admin.close()
