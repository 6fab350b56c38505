"""Kopf handlers for Approval: the index the Run controller reads, and decisions nobody waits for.

A waiting Run takes its Approval's decision on its own next pass (``handlers.run``). What
is left here is the decision that cannot be taken: the Run is gone or is not waiting for
this Approval, which makes the Approval Invalid with the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from flywheel.errors import KubernetesApiError, StoreUnavailableError
from flywheel.logs import get_logger
from flywheel.stores.kube import GROUP, VERSION

log = get_logger(__name__)


@kopf.index(GROUP, VERSION, "approvals")
async def approvals_by_run(
    namespace: str | None, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], dict[str, Any]] | None:
    """Approvals by (namespace, Run name), so that a waiting Run reads its Approval without an API call."""
    run_name = (spec.get("runRef") or {}).get("name")
    if namespace is None or not run_name:
        return None
    body = {
        "metadata": {
            "name": meta["name"],
            "namespace": namespace,
            "uid": meta["uid"],
            # The gate's status write is conditional on the version it decided from.
            "resourceVersion": meta["resourceVersion"],
            "annotations": dict(meta.get("annotations") or {}),
            "ownerReferences": [dict(reference) for reference in meta.get("ownerReferences") or []],
        },
        "spec": dict(spec),
        "status": dict(status),
    }
    return {(namespace, run_name): body}


def _decided(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    return bool(spec.get("decision")) and status.get("phase") in (None, "Pending")


@kopf.on.resume(GROUP, VERSION, "approvals", when=_decided)
@kopf.on.create(GROUP, VERSION, "approvals", when=_decided)
@kopf.on.update(GROUP, VERSION, "approvals", field="spec.decision", when=_decided)
async def check_decision_target(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    run_name = (body.get("spec") or {}).get("runRef", {}).get("name")
    try:
        run = await memo.deps.resources.find("runs", body["metadata"]["namespace"], run_name)
        message = await memo.deps.run_stores.approvals.check_target(body, run, datetime.now(UTC))
    except (StoreUnavailableError, KubernetesApiError) as exc:
        raise kopf.TemporaryError(str(exc), delay=10) from exc
    if message is not None:
        kopf.warn(body, reason="ApprovalInvalid", message=message)
