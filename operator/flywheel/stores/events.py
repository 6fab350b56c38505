"""Kubernetes Events posted outside a Kopf handler (Kopf's ``kopf.event`` only works inside one).

Used for operator-level findings such as funnel stalls, which are about a set of resources
rather than about the object a handler is processing. Events are core/v1 Events, so that
``kubectl describe`` and ``kubectl get events`` show them beside Kopf's own.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Final

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from flywheel.domain.funnel import ObjectSample
from flywheel.errors import KubernetesApiError, StoreUnavailableError
from flywheel.stores.kube import API_VERSION, configure_client

EVENT_COMPONENT: Final = "flywheel-operator"
# The API server refuses longer messages.
EVENT_MESSAGE_LIMIT: Final = 1024
REQUEST_TIMEOUT_SECONDS: Final = 10


class KubernetesEventPoster:
    """Posts Events about Flywheel's own resources (Incident, Run, Approval)."""

    def __init__(self, api: kubernetes.client.CoreV1Api | None = None, component: str = EVENT_COMPONENT) -> None:
        self._api = api
        self._component = component

    async def post(self, subject: ObjectSample, *, type: str, reason: str, message: str) -> None:
        """Post one Event about ``subject``; raises StoreUnavailableError/KubernetesApiError on failure."""
        await asyncio.to_thread(self._post, subject, type, reason, message)

    def _post(self, subject: ObjectSample, event_type: str, reason: str, message: str) -> None:
        if self._api is None:
            configure_client()
            self._api = kubernetes.client.CoreV1Api()
        now = datetime.now(UTC)
        body = kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(
                # Events are named <object>.<unique suffix>, as kubectl and the kubelet name theirs.
                name=f"{subject.name}.{uuid.uuid4().hex[:16]}",
                namespace=subject.namespace,
            ),
            involved_object=kubernetes.client.V1ObjectReference(
                api_version=API_VERSION,
                kind=subject.kind,
                name=subject.name,
                namespace=subject.namespace,
                uid=subject.uid,
            ),
            type=event_type,
            reason=reason,
            message=message[:EVENT_MESSAGE_LIMIT],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=kubernetes.client.V1EventSource(component=self._component),
            reporting_component=self._component,
        )
        what = f"post event {reason} on {subject.kind} {subject}"
        try:
            self._api.create_namespaced_event(subject.namespace, body, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as exc:
            if exc.status in (None, 0, 429, 500, 502, 503, 504):
                raise StoreUnavailableError(f"{what}: Kubernetes API unavailable ({exc.status} {exc.reason})") from exc
            raise KubernetesApiError(f"{what}: {exc.status} {exc.reason}", status=exc.status) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailableError(f"{what}: Kubernetes API unreachable: {exc}") from exc


__all__ = ["EVENT_COMPONENT", "KubernetesEventPoster"]
