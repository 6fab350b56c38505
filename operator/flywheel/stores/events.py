"""Kubernetes Events posted outside a Kopf handler (Kopf's ``kopf.event`` only works inside one).

Used for operator-level findings such as funnel stalls, which are about a set of resources
rather than about the object a handler is processing. Events are core/v1 Events, so that
``kubectl describe`` and ``kubectl get events`` show them beside Kopf's own.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Final

from flywheel.api.times import format_time
from flywheel.domain.funnel import ObjectSample
from flywheel.stores.kube import API_VERSION, KubeApi, resource_path

EVENT_COMPONENT: Final = "flywheel-operator"
# The API server refuses longer messages.
EVENT_MESSAGE_LIMIT: Final = 1024
REQUEST_TIMEOUT_SECONDS: Final = 10




class KubernetesEventPoster:
    """Posts Events about Flywheel's own resources (Incident, Run, Approval)."""

    def __init__(self, kube: KubeApi, component: str = EVENT_COMPONENT) -> None:
        self._kube = kube
        self._component = component

    async def post(
        self, subject: ObjectSample, *, type: str, reason: str, message: str, api_version: str = API_VERSION
    ) -> None:
        """Post one Event about ``subject`` (a Flywheel resource unless ``api_version`` says otherwise);
        raises StoreUnavailableError/KubernetesApiError on failure."""
        now = format_time(datetime.now(UTC))
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                # Events are named <object>.<unique suffix>, as kubectl and the kubelet name theirs.
                "name": f"{subject.name}.{uuid.uuid4().hex[:16]}",
                "namespace": subject.namespace,
            },
            "involvedObject": {
                "apiVersion": api_version,
                "kind": subject.kind,
                "name": subject.name,
                "namespace": subject.namespace,
                "uid": subject.uid,
            },
            "type": type,
            "reason": reason,
            "message": message[:EVENT_MESSAGE_LIMIT],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": self._component},
            "reportingComponent": self._component,
        }
        await self._kube.request(
            "POST", resource_path("", "v1", "events", namespace=subject.namespace),
            f"post event {reason} on {subject.kind} {subject}", body=body, timeout=REQUEST_TIMEOUT_SECONDS,
        )


__all__ = ["EVENT_COMPONENT", "KubernetesEventPoster"]
