"""The metrics HTTP server: ``/metrics``, ``/stats/summary``, ``/stats/flywheel``, ``/healthz``.

Every endpoint reads the latest published snapshot; none queries a store, so a scrape costs
the same whether the database holds a hundred rows or a million, and a slow database can
never make Prometheus time out.

``/stats/*`` answer 503 (with a JSON reason) until a snapshot exists and on a standby replica,
whose figures would be stale; ask the active replica (``flywheel_active == 1``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from flywheel.api.times import format_precise_time
from flywheel.logs import get_logger
from flywheel.metrics.snapshot import MetricsSnapshot, SnapshotHolder

_log = get_logger(__name__)

JSON_CONTENT_TYPE: Final = "application/json"


def _json_response(body: dict[str, Any], status: int = 200) -> web.Response:
    # allow_nan=False: NaN is not JSON; the snapshot already turned it into null.
    return web.Response(
        status=status,
        body=json.dumps(body, allow_nan=False).encode(),  # insertion order: the flywheel order of nodes
        content_type=JSON_CONTENT_TYPE,
    )


class MetricsApp:
    """The request handlers, bound to one registry and one snapshot holder."""

    def __init__(
        self,
        holder: SnapshotHolder,
        registry: CollectorRegistry,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._holder = holder
        self._registry = registry
        self._clock = clock

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/stats/summary", self.summary)
        app.router.add_get("/stats/flywheel", self.flywheel)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encoder(self._registry))
        # Set verbatim: the content type carries version and charset parameters.
        response.headers["Content-Type"] = content_type
        return response

    async def summary(self, request: web.Request) -> web.Response:
        snapshot, refusal = self._current()
        if refusal is not None:
            return refusal
        assert snapshot is not None
        return _json_response(snapshot.summary_json())

    async def flywheel(self, request: web.Request) -> web.Response:
        snapshot, refusal = self._current()
        if refusal is not None:
            return refusal
        assert snapshot is not None
        return _json_response(snapshot.flywheel_json())

    async def healthz(self, request: web.Request) -> web.Response:
        snapshot = self._holder.latest
        body: dict[str, Any] = {"status": "ok", "snapshot": None}
        if snapshot is not None:
            body["snapshot"] = {
                "computed_at": format_precise_time(snapshot.computed_at),
                "age_seconds": round((self._clock() - snapshot.computed_at).total_seconds(), 3),
                "active": snapshot.active,
            }
        return _json_response(body)

    def _current(self) -> tuple[MetricsSnapshot | None, web.Response | None]:
        snapshot = self._holder.latest
        if snapshot is None:
            return None, _json_response({"reason": "no metrics snapshot computed yet; retry shortly"}, status=503)
        if not snapshot.active or snapshot.pipeline is None:
            return None, _json_response(
                {
                    "active": False,
                    "reason": "this replica is a standby Kopf peer; ask the active replica (flywheel_active == 1)",
                },
                status=503,
            )
        return snapshot, None


class MetricsServer:
    """Runs :class:`MetricsApp` on a TCP port inside the operator's event loop."""

    def __init__(self, app: MetricsApp, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    @property
    def port(self) -> int | None:
        """The port actually listened on (useful with port 0 in tests)."""
        return self._bound_port

    async def start(self) -> int:
        runner = web.AppRunner(self._app.application(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        sockets = getattr(site._server, "sockets", None) or []  # aiohttp offers no public accessor
        self._bound_port = int(sockets[0].getsockname()[1]) if sockets else self._port
        _log.info("metrics_server_listening", host=self._host, port=self._bound_port)
        return self._bound_port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            _log.info("metrics_server_stopped")


__all__ = ["MetricsApp", "MetricsServer"]
