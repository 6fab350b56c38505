"""Creating Runs bound to their decision, and verifying the binding (``flywheel.domain.run_binding``).

Shared by the Incident controller (which creates and binds) and the Run controller (which
verifies before every attempt); it holds no state but the signing key's store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from flywheel.domain.approval import Refusal
from flywheel.domain.run_binding import (
    RunBinding,
    binding_annotation,
    proposal_annotations,
    proposal_is_own,
    verify_binding,
)
from flywheel.logs import get_logger

log = get_logger(__name__)

RUNS = "runs"


class SigningKey(Protocol):
    async def key(self) -> bytes: ...


class RunWriter(Protocol):
    """Creating and annotating Runs (``flywheel.stores.kube.FlywheelResources``)."""

    async def create_or_get(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def patch_annotations(
        self, plural: str, namespace: str, name: str, annotations: Mapping[str, str], *, resource_version: str
    ) -> dict[str, Any]: ...


class RunBinder:
    """Seals the Runs Flywheel creates, and tells the executor whether a Run is one of them."""

    def __init__(self, signing_key: SigningKey, resources: RunWriter) -> None:
        self._signing_key = signing_key
        self._resources = resources

    async def create_bound(self, manifest: dict[str, Any], decision_id: str) -> dict[str, Any]:
        """Create (or find) the Run of ``manifest`` and bind it to its uid; the stored Run.

        Idempotent: a pass killed between the create and the binding binds on its next try.
        A Run of that name that Flywheel did not propose (someone else created it first) is
        left unbound, so it can never act.
        """
        key = await self._signing_key.key()
        meta = manifest["metadata"]
        meta["annotations"] = {**(meta.get("annotations") or {}), **proposal_annotations(manifest, decision_id, key)}
        body = await self._resources.create_or_get(RUNS, meta["namespace"], manifest)
        if isinstance(verify_binding(body, key), RunBinding):
            return body
        incident_uid = str(manifest["spec"]["incidentRef"]["uid"])
        stored = body["metadata"]
        if not proposal_is_own(body, key, incident_uid=incident_uid, decision_id=decision_id):
            log.warning("run_not_bound", run=stored["name"], namespace=stored["namespace"],
                        reason="a Run of that name exists that Flywheel did not propose; it never acts")
            return body
        return await self._resources.patch_annotations(
            RUNS, stored["namespace"], stored["name"], binding_annotation(body, key),
            resource_version=str(stored["resourceVersion"]),
        )

    async def verify(self, body: Mapping[str, Any]) -> RunBinding | Refusal:
        """The Run's binding, or why it has none (the executor then refuses it)."""
        return verify_binding(body, await self._signing_key.key())


__all__ = ["RunBinder", "RunWriter", "SigningKey"]
