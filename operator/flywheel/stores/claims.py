"""Which Incident owns the remediation of an anomaly: one Lease per (namespace, anomaly key).

Kopf's cache and even a fresh list can both miss a twin created in the same instant, so
"who is primary" is decided by an atomic write instead: creating the Lease succeeds for
exactly one Incident; a later one takes it over only from a holder that is no longer
active, with a resourceVersion precondition so two contenders cannot both win.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import kubernetes
from kubernetes.client.exceptions import ApiException

from flywheel.errors import KubernetesApiError, StoreUnavailableError
from flywheel.stores.kube import configure_client

LEASE_PREFIX = "flywheel-anomaly-"


def lease_name(anomaly_key: str) -> str:
    return f"{LEASE_PREFIX}{anomaly_key}"


class AnomalyClaims:
    def __init__(self, api: kubernetes.client.CoordinationV1Api | None = None) -> None:
        if api is None:
            configure_client()
        self._api = api or kubernetes.client.CoordinationV1Api()

    async def claim(self, namespace: str, anomaly_key: str, incident_uid: str,
                    holder_is_active: Callable[[str], bool]) -> str | None:
        """Claim the anomaly for ``incident_uid``; returns None when it holds the claim,
        else the uid of the active Incident that does."""
        name = lease_name(anomaly_key)
        body = kubernetes.client.V1Lease(
            metadata=kubernetes.client.V1ObjectMeta(name=name, labels={"app.kubernetes.io/managed-by": "flywheel"}),
            spec=kubernetes.client.V1LeaseSpec(holder_identity=incident_uid),
        )
        try:
            await asyncio.to_thread(self._api.create_namespaced_lease, namespace, body)
            return None
        except ApiException as exc:
            if exc.status != 409:
                raise _translate(exc, f"create lease {name}") from exc
        try:
            lease = await asyncio.to_thread(self._api.read_namespaced_lease, name, namespace)
        except ApiException as exc:
            raise _translate(exc, f"read lease {name}") from exc
        holder = lease.spec.holder_identity
        if holder == incident_uid:
            return None
        if holder and holder_is_active(holder):
            return str(holder)
        lease.spec.holder_identity = incident_uid
        try:
            # replace carries the read resourceVersion: a concurrent take-over gets 409.
            await asyncio.to_thread(self._api.replace_namespaced_lease, name, namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                raise StoreUnavailableError(f"lease {name} changed while taking it over; retrying") from exc
            raise _translate(exc, f"take over lease {name}") from exc
        return None


def _translate(exc: ApiException, what: str) -> Exception:
    if exc.status in (None, 0, 429, 500, 502, 503, 504):
        return StoreUnavailableError(f"{what}: Kubernetes API unavailable ({exc.status} {exc.reason})")
    return KubernetesApiError(f"{what}: {exc.status} {exc.reason}", status=exc.status)
