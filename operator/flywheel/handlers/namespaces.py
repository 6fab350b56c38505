"""Kopf wiring of the namespace watch that keeps the opt-in labels in memory.

Namespaces are cluster-scoped, so Kopf watches them cluster-wide whatever ``--namespace``
the operator reconciles; the operator needs ``get``, ``list`` and ``watch`` on them. A raw
``on.event`` handler writes nothing back to the namespace (no annotations, no finalizers).
"""

from __future__ import annotations

from typing import Any

import kopf

from flywheel.wiring import FlywheelMemo


@kopf.on.event("", "v1", "namespaces")
async def namespace_changed(event: kopf.RawEvent, memo: FlywheelMemo, **_: Any) -> None:
    metadata = event["object"].get("metadata") or {}
    name = metadata.get("name")
    if not name:
        return
    if event["type"] == "DELETED":
        memo.deps.namespaces.deleted(name)
    else:
        memo.deps.namespaces.observed(name, metadata.get("labels") or {})
