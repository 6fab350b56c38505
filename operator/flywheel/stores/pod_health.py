"""The Pods of a workload as the symptom check of a kubectl-filed Incident sees them.

Reads the workload (its selector and desired replicas) and lists its Pods in one request each;
what counts as healthy is decided in :func:`flywheel.domain.symptom.pods_verdict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flywheel.api.enums import TargetKind
from flywheel.api.times import parse_optional_time
from flywheel.domain.symptom import PodFacts
from flywheel.stores.kube import KubeApi, resource_path

_PLURALS = {
    TargetKind.DEPLOYMENT: "deployments",
    TargetKind.STATEFULSET: "statefulsets",
    TargetKind.DAEMONSET: "daemonsets",
}


def pod_facts(pod: Mapping[str, Any]) -> PodFacts:
    """What the verdict needs of one Pod: readiness since when, and its latest container restart."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    containers = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    restarts = sum(int(c.get("restartCount") or 0) for c in containers)
    finished = [
        moment
        for c in containers
        if (moment := parse_optional_time(((c.get("lastState") or {}).get("terminated") or {}).get("finishedAt"))) is not None
    ]
    return PodFacts(
        name=str(meta.get("name")),
        ready=ready is not None and ready.get("status") == "True",
        ready_since=parse_optional_time(ready.get("lastTransitionTime")) if ready is not None else None,
        restarts=restarts,
        last_restart_at=max(finished) if finished else None,
        terminating=bool(meta.get("deletionTimestamp")),
    )


class PodHealthStore:
    def __init__(self, kube: KubeApi) -> None:
        self._kube = kube

    async def pods(self, namespace: str, kind: TargetKind, name: str) -> tuple[int, list[PodFacts]]:
        """(desired replicas, the Pods its selector selects); errors as the Kubernetes store raises them."""
        what = f"{kind.value}/{name}"
        workload = await self._kube.request(
            "GET", resource_path("apps", "v1", _PLURALS[kind], namespace=namespace, name=name), f"read {what}"
        )
        spec = workload.get("spec") or {}
        labels = (spec.get("selector") or {}).get("matchLabels") or {}
        if kind is TargetKind.DAEMONSET:
            # One Pod per node it schedules to: the controller's own count, not a spec field.
            desired = int((workload.get("status") or {}).get("desiredNumberScheduled") or 0)
        else:
            desired = int(spec.get("replicas", 1) or 0)
        if not labels:
            return desired, []
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        listed = await self._kube.request(
            "GET", resource_path("", "v1", "pods", namespace=namespace), f"list Pods of {what}",
            query={"labelSelector": selector},
        )
        return desired, [pod_facts(pod) for pod in listed.get("items") or []]
