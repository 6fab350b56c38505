"""Which Incident owns the remediation of an anomaly: one Lease per (namespace, anomaly key).

Kopf's cache can miss a twin created in the same instant, so "who is primary" is decided
by an atomic write instead: creating the Lease succeeds for exactly one Incident; a later
one takes it over only from a holder that is no longer active, with a resourceVersion
precondition so two contenders cannot both win.

The Lease is owned by its holder (an ownerReference, moved on take-over), so Kubernetes'
garbage collector deletes it with the Incident that holds it: a namespace keeps one Lease
per anomaly key that an existing Incident holds, not one per key ever seen.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from flywheel.errors import ConflictError, NotFoundError, StoreUnavailableError
from flywheel.stores.kube import API_VERSION, KubeApi, resource_path

LEASE_PREFIX = "flywheel-anomaly-"
# Claims this process won, remembered for the twins that follow (the most recent ones).
WON_CLAIMS_REMEMBERED = 10_000
# The holder's name, so that a Duplicate can say whom it duplicates without a lookup.
HOLDER_NAME_ANNOTATION = "flywheel.dev/incident"


def lease_name(anomaly_key: str) -> str:
    return f"{LEASE_PREFIX}{anomaly_key}"


def _leases(namespace: str, name: str | None = None) -> str:
    return resource_path("coordination.k8s.io", "v1", "leases", namespace=namespace, name=name)


@dataclass(frozen=True)
class Holder:
    name: str
    uid: str

    def owner_references(self) -> list[dict[str, Any]]:
        return [{"apiVersion": API_VERSION, "kind": "Incident", "name": self.name, "uid": self.uid}]


# Whether the Incident (name, uid) still holds a claim: it exists and is not resolved/closed/duplicate.
HolderIsActive = Callable[[Holder], Awaitable[bool]]


class AnomalyClaims:
    def __init__(self, kube: KubeApi) -> None:
        self._kube = kube
        # In an alert storm most twins arrive while the claim this process just won is active:
        # the Lease would answer 409 and then name that holder, two API calls for a known answer.
        self._won: OrderedDict[tuple[str, str], Holder] = OrderedDict()

    async def claim(self, namespace: str, anomaly_key: str, claimant: Holder, is_active: HolderIsActive) -> Holder | None:
        """Claim the anomaly for ``claimant``; None when it holds the claim, else the active holder."""
        name = lease_name(anomaly_key)
        won = self._won.get((namespace, name))
        if won is not None and won.uid != claimant.uid and await is_active(won):
            return won
        holder = await self._claim_lease(namespace, name, claimant, is_active)
        if holder is None:
            self._won[(namespace, name)] = claimant
            self._won.move_to_end((namespace, name))
            while len(self._won) > WON_CLAIMS_REMEMBERED:
                self._won.popitem(last=False)
        return holder

    async def _claim_lease(
        self, namespace: str, name: str, claimant: Holder, is_active: HolderIsActive
    ) -> Holder | None:
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "labels": {"app.kubernetes.io/managed-by": "flywheel"},
                "annotations": {HOLDER_NAME_ANNOTATION: claimant.name},
                "ownerReferences": claimant.owner_references(),
            },
            "spec": {"holderIdentity": claimant.uid},
        }
        try:
            await self._kube.request("POST", _leases(namespace), f"create lease {name}", body=body)
            return None
        except ConflictError:
            pass
        try:
            lease = await self._kube.request("GET", _leases(namespace, name), f"read lease {name}")
        except NotFoundError as exc:
            # Collected with its holder between the conflict and this read.
            raise StoreUnavailableError(f"lease {name} was deleted while claiming it; retrying") from exc
        annotations = dict(lease["metadata"].get("annotations") or {})
        spec = lease.setdefault("spec", {})
        holder = Holder(name=annotations.get(HOLDER_NAME_ANNOTATION, ""), uid=spec.get("holderIdentity") or "")
        if holder.uid == claimant.uid:
            return None
        if holder.uid and await is_active(holder):
            return holder
        spec["holderIdentity"] = claimant.uid
        lease["metadata"]["annotations"] = {**annotations, HOLDER_NAME_ANNOTATION: claimant.name}
        lease["metadata"]["ownerReferences"] = claimant.owner_references()
        try:
            # replace carries the read resourceVersion: a concurrent take-over gets 409.
            await self._kube.request("PUT", _leases(namespace, name), f"take over lease {name}", body=lease)
        except (NotFoundError, ConflictError) as exc:
            raise StoreUnavailableError(f"lease {name} changed while taking it over; retrying") from exc
        return None
