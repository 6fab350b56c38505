"""Asking Prometheus which alerts fire: ``ALERTS{alertstate="firing", alertname=...}``.

The symptom check of a verifying Run uses it so that a resolved notification Alertmanager lost
(or has not sent yet: its ``group_interval``) cannot decide the outcome. One instant query per
alert name; errors map to our exception tree (unavailable: transient, refused: permanent).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from flywheel.errors import PrometheusRefusedError, PrometheusUnavailableError
from flywheel.logs import get_logger

log = get_logger(__name__)

_MAX_BODY = 4 * 1024 * 1024


class PrometheusAlerts:
    """An instant-query client of one Prometheus (``FLYWHEEL_PROMETHEUS_URL``)."""

    def __init__(
        self, base_url: str, *, timeout_seconds: float = 5.0, session: aiohttp.ClientSession | None = None
    ) -> None:
        self._url = base_url.rstrip("/") + "/api/v1/query"
        self._timeout = timeout_seconds
        self._session = session
        self._own_session = session is None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def firing(self, query: str) -> list[dict[str, str]]:
        """The label sets of the series the instant vector ``query`` returns."""
        try:
            async with asyncio.timeout(self._timeout):
                async with self._client().get(self._url, params={"query": query}) as response:
                    body = await response.content.read(_MAX_BODY)
                    status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PrometheusUnavailableError(f"Prometheus query failed: {type(exc).__name__}: {exc}") from exc
        if status >= 500 or status == 429:
            raise PrometheusUnavailableError(f"Prometheus answered {status}")
        try:
            document: Any = json.loads(body)
        except ValueError as exc:
            raise PrometheusRefusedError(f"Prometheus answered {status} with a body that is not JSON") from exc
        if status != 200 or not isinstance(document, dict) or document.get("status") != "success":
            error = document.get("error") if isinstance(document, dict) else None
            raise PrometheusRefusedError(f"Prometheus refused the query {query!r} ({status}): {error}")
        data = document.get("data") or {}
        if data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
            raise PrometheusRefusedError(f"Prometheus answered no instant vector for {query!r}")
        return [
            {str(key): str(value) for key, value in dict(item.get("metric") or {}).items()}
            for item in data["result"]
            if isinstance(item, dict)
        ]

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
