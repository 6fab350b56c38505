"""What approvals keep besides the Approval objects: the token signing key and spent token ids.

(Approvals themselves are read and written through ``flywheel.stores.kube.FlywheelResources``.)

- :class:`SigningKeyStore` reads the HS256 key from a Secret and creates the Secret on
  first use when it does not exist; two replicas racing to create it both end up with the
  one that won. The key is never logged.
- :class:`TokenLedger` spends a token id once (Redis ``SET NX``): a token presented by a
  Run other than the first one to spend it is a replay.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Mapping
from datetime import timedelta
from typing import Final

import redis.asyncio

from flywheel.errors import (
    ConfigurationError,
    KubernetesApiError,
    StoreUnavailableError,
)
from flywheel.logs import get_logger
from flywheel.stores.kube import KubeApi, resource_path
from flywheel.stores.redis_errors import redis_errors

log = get_logger(__name__)

SIGNING_KEY_FIELD: Final = "signing-key"
SIGNING_KEY_BYTES: Final = 32
TOKEN_ID_PREFIX: Final = "flywheel:approval-token:"
# The issued tokens themselves, by id: a Run's status holds only the id, which the shipped
# roles may read; the token never leaves the operator and Redis.
ISSUED_TOKEN_PREFIX: Final = "flywheel:approval-token-issued:"


class SigningKeyStore:
    """The HS256 key of approval tokens, kept in a Secret of the operator's namespace."""

    def __init__(self, namespace: str, secret_name: str, kube: KubeApi) -> None:
        self._kube = kube
        self._namespace = namespace
        self._name = secret_name
        self._key: bytes | None = None
        self._lock = asyncio.Lock()

    async def key(self) -> bytes:
        """The signing key; read (or created) once, then cached for the process's lifetime."""
        async with self._lock:
            if self._key is None:
                self._key = await self._load_or_create()
            return self._key

    async def _load_or_create(self) -> bytes:
        where = f"secret {self._namespace}/{self._name}"
        secrets_path = resource_path("", "v1", "secrets", namespace=self._namespace)
        secret_path = resource_path("", "v1", "secrets", namespace=self._namespace, name=self._name)
        for _ in range(3):
            try:
                secret = await self._kube.request("GET", secret_path, f"read {where}")
                return self._decode(secret.get("data") or {})
            except KubernetesApiError as exc:
                if exc.status != 404:
                    raise
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": self._name,
                    "namespace": self._namespace,
                    "labels": {"app.kubernetes.io/name": "flywheel", "app.kubernetes.io/component": "approvals"},
                },
                "type": "Opaque",
                "data": {SIGNING_KEY_FIELD: base64.b64encode(secrets.token_bytes(SIGNING_KEY_BYTES)).decode()},
            }
            try:
                created = await self._kube.request("POST", secrets_path, f"create {where}", body=body)
                log.info("approval_signing_key_created", secret=self._name, namespace=self._namespace)
                return self._decode(created.get("data") or {})
            except KubernetesApiError as exc:
                if exc.status != 409:  # 409: another replica created it first; read theirs
                    raise
        raise StoreUnavailableError(f"read {where}: the signing-key Secret keeps vanishing")

    def _decode(self, data: Mapping[str, str]) -> bytes:
        encoded = data.get(SIGNING_KEY_FIELD)
        if not encoded:
            raise ConfigurationError(
                f"secret {self._namespace}/{self._name} has no {SIGNING_KEY_FIELD!r} entry (FLYWHEEL_APPROVAL_SIGNING_SECRET)"
            )
        key = base64.b64decode(encoded)
        if len(key) < SIGNING_KEY_BYTES:
            raise ConfigurationError(
                f"secret {self._namespace}/{self._name}: {SIGNING_KEY_FIELD!r} must hold at least "
                f"{SIGNING_KEY_BYTES} bytes for HS256"
            )
        return key


class TokenLedger:
    """Approval tokens kept by id, and their ids, each spent by exactly one Run attempt."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._redis = client

    async def keep(self, token_id: str, token: str, keep_for: timedelta) -> None:
        """Keep an issued token under its id until it cannot be used any more."""
        seconds = max(int(keep_for.total_seconds()), 1)
        with redis_errors("keeping an approval token"):
            await self._redis.set(ISSUED_TOKEN_PREFIX + token_id, token, ex=seconds)

    async def fetch(self, token_id: str) -> str | None:
        """The token issued under ``token_id``; None if none was (or it expired)."""
        with redis_errors("reading an approval token"):
            value = await self._redis.get(ISSUED_TOKEN_PREFIX + token_id)
        if value is None:
            return None
        return bytes(value).decode() if isinstance(value, bytes) else str(value)

    async def spend(self, token_id: str, run_uid: str, keep_for: timedelta) -> bool:
        """Spend ``token_id`` for ``run_uid``; False if another Run spent it already.

        The same Run spending it again (a pass retried after a crash) is not a replay. Raises
        :class:`~flywheel.errors.RedisUnavailableError` while Redis cannot take the write (a
        failover's read-only replica included): the Run waits and tries again.
        """
        key = TOKEN_ID_PREFIX + token_id
        seconds = max(int(keep_for.total_seconds()), 1)
        with redis_errors("spending an approval token"):
            if await self._redis.set(key, run_uid, nx=True, ex=seconds):
                return True
            holder = await self._redis.get(key)
        if holder is None:  # expired in between: it was this Run's or nobody's
            return await self.spend(token_id, run_uid, keep_for)
        return bytes(holder).decode() == run_uid if isinstance(holder, bytes) else str(holder) == run_uid


__all__ = ["SigningKeyStore", "TokenLedger"]
