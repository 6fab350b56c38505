"""Read-your-writes within one operator process: a Run's own last write, and its peers' for admission."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import replace

from flywheel.api.enums import RunState
from flywheel.api.run import RunStatus
from flywheel.controllers.run.views import last_seq
from flywheel.domain.run_state import ObservedRun

# How long a pass waits for a status this process wrote before trusting what it reads.
GUARD_PATIENCE_SECONDS = 10.0


class RunGuard:
    """Read-your-writes for one Run within one operator process.

    Every state change appends a journal step, so the journal's last ``seq`` orders the
    statuses of a Run. A pass that reads an older status than the last one written here
    (the watch event bringing the write back may lag) is skipped.
    If the written status never shows up (the patch failed), the guard gives up waiting
    after :data:`GUARD_PATIENCE_SECONDS` and trusts what is stored.
    """

    def __init__(self) -> None:
        self._written_seq = 0
        self._written_at = -math.inf

    def is_stale(self, status: RunStatus, monotonic_now: float) -> bool:
        if last_seq(status.steps) >= self._written_seq:
            return False
        return monotonic_now - self._written_at < GUARD_PATIENCE_SECONDS

    def wrote(self, status: RunStatus, monotonic_now: float) -> None:
        self._written_seq = last_seq(status.steps)
        self._written_at = monotonic_now


class AdmittedRuns:
    """Read-your-writes for the safety limits, across the Runs of one operator process.

    Admission counts a namespace's Runs from the operator's index, which learns of a
    status write only when the watch brings it back. Without this, two Runs on one target
    passed within that lag both start: the first is still Pending in the index when the
    second looks (and, created in the same second, it may even queue behind the second).

    So a pass that may start its Run holds the namespace's :meth:`lock` from reading the
    peers until its status is written, then reports what it wrote (:meth:`wrote`). Until
    the index shows that Run in another state than it had before the write, the written
    view stands in for the indexed one (:meth:`peers`).
    """

    def __init__(self) -> None:
        # namespace -> uid -> (state the index had before our write, the view we wrote)
        self._written: dict[str, dict[str, tuple[RunState | None, ObservedRun]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, namespace: str) -> asyncio.Lock:
        return self._locks.setdefault(namespace, asyncio.Lock())

    def peers(self, namespace: str, indexed: Iterable[ObservedRun]) -> Iterable[ObservedRun]:
        written = self._written.get(namespace)
        if not written:
            return indexed
        views: list[ObservedRun] = []
        echo_pending: dict[str, tuple[RunState | None, ObservedRun]] = {}
        for view in indexed:
            entry = written.get(view.uid)
            if entry is not None and entry[0] == view.state:
                echo_pending[view.uid] = entry
                views.append(entry[1])
            else:
                views.append(view)
        # Entries the index has caught up with, or whose Run is gone from it, are dropped.
        if echo_pending:
            self._written[namespace] = echo_pending
        else:
            del self._written[namespace]
        return views

    def wrote(self, before: ObservedRun, status: RunStatus) -> None:
        """The pass stored ``status`` for the Run the index showed as ``before``."""
        if status.state == before.state:
            return
        after = replace(before, state=status.state, started_at=status.started_at)
        self._written.setdefault(before.namespace, {})[before.uid] = (before.state, after)

