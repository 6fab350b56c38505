"""Kopf wiring of the rule catalogue's reload: a poll loop per replica, its Events and metrics.

Every replica runs the loop, the standby too (its own mounted copy must be current when it
takes over). Polling, not inotify: see ``flywheel.stores.catalogue_file``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import kopf
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flywheel.controllers.catalogue_reload import CatalogueReloader, LiveCatalogue, ReloadResult
from flywheel.domain.funnel import ObjectSample
from flywheel.errors import KubernetesApiError, StoreUnavailableError
from flywheel.logs import get_logger
from flywheel.stores.catalogue_file import CatalogueFile
from flywheel.stores.events import KubernetesEventPoster
from flywheel.stores.kube import KubeApi, resource_path
from flywheel.wiring import FlywheelMemo

log = get_logger(__name__)

MEMO_CATALOGUE_RELOAD = "catalogue_reload"
REFUSED_EVENT_REASON = "RuleCatalogueRefused"


@dataclass
class CatalogueReloadHandles:
    live: LiveCatalogue
    reloader: CatalogueReloader | None
    task: asyncio.Task[None] | None


class CatalogueRefusalEvents:
    """Posts the Warning Event of a refused catalogue version.

    On the operator's own Pod (``POD_NAME``/``POD_NAMESPACE``, from the downward API): the file
    is that Pod's mounted copy, each replica reloads its own, and ``kubectl describe pod`` is
    where an operator looks when "my rule does nothing" — the peering object is shared by the
    replicas and absent with ``--standalone``, the Deployment's name is not known to the Pod.
    Outside a Pod (a developer's process) the Event is on the operator's namespace
    (``FLYWHEEL_NAMESPACE``), listed by ``kubectl get events -n``.
    """

    def __init__(self, kube: KubeApi, namespace: str, pod_name: str | None, pod_namespace: str | None) -> None:
        self._kube = kube
        self._poster = KubernetesEventPoster(kube)
        self._namespace = namespace
        self._pod_name = pod_name
        self._pod_namespace = pod_namespace
        self._subject: ObjectSample | None = None

    async def _find_subject(self) -> ObjectSample:
        if self._subject is not None:
            return self._subject
        if self._pod_name and self._pod_namespace:
            try:
                pod = await self._kube.request(
                    "GET", resource_path("", "v1", "pods", namespace=self._pod_namespace, name=self._pod_name),
                    f"read Pod {self._pod_name}",
                )
            except (KubernetesApiError, StoreUnavailableError) as exc:
                log.warning("operator_pod_unreadable", pod=self._pod_name, error=str(exc))
            else:
                # kubectl describe finds an object's Events by uid too.
                self._subject = ObjectSample("Pod", self._pod_namespace, self._pod_name, pod["metadata"].get("uid"))
                return self._subject
        return ObjectSample("Namespace", self._namespace, self._namespace)

    async def refused(self, message: str) -> None:
        subject = await self._find_subject()
        await self._poster.post(subject, type="Warning", reason=REFUSED_EVENT_REASON, message=message,
                                api_version="v1")


class CatalogueCollector(Collector):
    """``flywheel_rule_catalogue_*``: reloads by result, the loaded version's time and hash."""

    def __init__(self, memo: kopf.Memo) -> None:
        self._memo = memo

    def collect(self) -> Iterator[Metric]:
        handles = self._memo.get(MEMO_CATALOGUE_RELOAD)
        if not isinstance(handles, CatalogueReloadHandles):
            return
        reloads = CounterMetricFamily(
            "flywheel_rule_catalogue_reloads",
            "New versions of FLYWHEEL_RULES_FILE seen by this replica: loaded, or refused (broken; the "
            "catalogue in force stays).",
            labels=["result"],
        )
        counted = handles.reloader.reloads if handles.reloader is not None else {}
        for result in ReloadResult:
            reloads.add_metric([result.value], counted.get(result, 0))
        yield reloads
        yield GaugeMetricFamily(
            "flywheel_rule_catalogue_refused",
            "1 while the latest version of FLYWHEEL_RULES_FILE is refused as broken (an older catalogue decides).",
            value=1.0 if handles.reloader is not None and handles.reloader.refusing else 0.0,
        )
        version = handles.live.version
        yield GaugeMetricFamily(
            "flywheel_rule_catalogue_loaded_timestamp_seconds",
            "Unix time the rule catalogue in force was loaded (start-up or the last reload).",
            value=version.loaded_at.timestamp(),
        )
        info = GaugeMetricFamily(
            "flywheel_rule_catalogue_info",
            "The rule catalogue in force: the SHA-256 of its file (first 12 hex digits) and its rules.",
            labels=["sha256", "rules"],
        )
        info.add_metric([version.short_digest, str(len(version.catalogue))], 1)
        yield info


async def reload_loop(reloader: CatalogueReloader, interval_seconds: float) -> None:
    """Check every ``interval_seconds``; a check that fails unexpectedly is logged and tried again."""
    while True:
        try:
            await reloader.check()
        except Exception:
            log.exception("catalogue_check_failed")
        await asyncio.sleep(interval_seconds)


@kopf.on.startup()
async def start_catalogue_reload(memo: FlywheelMemo, **_: Any) -> None:
    deps = memo.deps
    config = deps.settings
    if not config.rules_file or not config.rules_reload_seconds:
        memo[MEMO_CATALOGUE_RELOAD] = CatalogueReloadHandles(live=deps.catalogue, reloader=None, task=None)
        log.info("catalogue_reload_off", rules_file=config.rules_file or "built-in")
        return
    warnings = CatalogueRefusalEvents(
        deps.kube, config.namespace, os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    )
    reloader = CatalogueReloader(CatalogueFile(config.rules_file), deps.catalogue, warnings)
    task = asyncio.get_running_loop().create_task(
        reload_loop(reloader, config.rules_reload_seconds), name="flywheel-rule-catalogue-reload"
    )
    memo[MEMO_CATALOGUE_RELOAD] = CatalogueReloadHandles(live=deps.catalogue, reloader=reloader, task=task)
    log.info("catalogue_reload_started", rules_file=config.rules_file,
             interval_seconds=config.rules_reload_seconds, sha256=deps.catalogue.version.short_digest)


@kopf.on.cleanup()
async def stop_catalogue_reload(memo: kopf.Memo, **_: Any) -> None:
    handles = memo.get(MEMO_CATALOGUE_RELOAD)
    if isinstance(handles, CatalogueReloadHandles) and handles.task is not None:
        handles.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await handles.task


__all__ = [
    "CatalogueCollector",
    "CatalogueRefusalEvents",
    "CatalogueReloadHandles",
    "reload_loop",
]
