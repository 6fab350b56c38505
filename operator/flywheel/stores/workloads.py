"""Remediation actions against the real ``apps/v1`` API, applied at most once per Run attempt.

Every change is stamped with the Run's uid and attempt (``flywheel.dev/actions`` on the
workload, plus ``flywheel.dev/run-uid`` / ``flywheel.dev/run-attempt`` for humans). Before
acting, the store reads the workload and looks for that stamp: a retried handler, or an
operator restarted after being killed half-way, sees that the change already happened and
does not apply it again. The change and its stamp go in one merge patch carrying the
``resourceVersion`` that was read, so two appliers racing each other cannot both succeed:
the loser gets 409 Conflict, reads again and finds the winner's stamp.

Shadow mode sends the same patch as a server-side dry run (``dryRun=All``): admission,
validation and defaulting run, nothing is stored, and the would-be object tells what
would change.

Requests go through the operator's shared asyncio client (:class:`~flywheel.stores.kube.KubeApi`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from flywheel.api.enums import ActionType, TargetKind
from flywheel.api.times import format_precise_time
from flywheel.domain.actions import ProposedAction, effective_replicas
from flywheel.domain.run_state import ActionNotApplicableError, RolloutFacts
from flywheel.errors import ConflictError, KubernetesApiError
from flywheel.logs import get_logger
from flywheel.stores.kube import MERGE_PATCH, KubeApi, resource_path

log = get_logger(__name__)

# Pod-template annotations of a rollout restart (the template change is what rolls the pods).
RESTARTED_AT_ANNOTATION = "flywheel.dev/restartedAt"
RUN_UID_ANNOTATION = "flywheel.dev/run-uid"
RUN_ATTEMPT_ANNOTATION = "flywheel.dev/run-attempt"
# Workload annotation: the latest actions Flywheel applied, newest last (JSON list).
ACTION_LOG_ANNOTATION = "flywheel.dev/actions"
ACTION_LOG_LENGTH = 10
# Workload annotations recording a rollback.
UNDO_FROM_ANNOTATION = "flywheel.dev/undo-from-revision"
UNDO_TO_ANNOTATION = "flywheel.dev/undo-to-revision"

DEPLOYMENT_REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
FIELD_MANAGER = "flywheel"
# A workload changed by someone else between our read and our write: read again, this often.
CONFLICT_RETRIES = 3

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ActionStamp:
    """Who applies the change: one attempt of one Run."""

    run_uid: str
    attempt: int
    at: datetime


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What :meth:`WorkloadStore.apply` did (or, in a dry run, would do)."""

    changed: bool  # the workload's spec changed (dry run: would change)
    already_applied: bool  # the stamp of this Run attempt was already there: nothing done now
    dry_run: bool
    summary: str
    generation_before: int
    generation_after: int


@dataclass(frozen=True, slots=True)
class _Plan:
    patch: dict[str, Any]
    changed: bool
    summary: str
    extra_annotations: dict[str, str]


# --------------------------------------------------------------------------- pure helpers


def merge_patch(current: Any, desired: Any) -> Any:
    """The JSON merge patch (RFC 7386) turning ``current`` into ``desired``.

    Keys missing from ``desired`` are deleted (``None``); maps are diffed recursively;
    everything else (lists, scalars) is replaced. ``{}`` means no change.
    """
    if not isinstance(current, Mapping) or not isinstance(desired, Mapping):
        return copy.deepcopy(desired)
    patch: dict[str, Any] = {key: None for key in current if key not in desired}
    for key, value in desired.items():
        if key not in current:
            patch[key] = copy.deepcopy(value)
        elif current[key] != value:
            if isinstance(current[key], Mapping) and isinstance(value, Mapping):
                patch[key] = merge_patch(current[key], value)
            else:
                patch[key] = copy.deepcopy(value)
    return patch


def action_log(workload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The actions stamped on the workload, oldest first (an unreadable log counts as empty)."""
    raw = ((workload.get("metadata") or {}).get("annotations") or {}).get(ACTION_LOG_ANNOTATION)
    if not raw:
        return []
    try:
        entries = json.loads(raw)
    except ValueError:
        return []
    return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []


def already_applied(workload: Mapping[str, Any], stamp: ActionStamp, action_type: ActionType) -> bool:
    """Whether this Run attempt's change is already on the workload.

    A rollback is applied once per Run whatever the attempt: undoing again would return
    to the revision the first attempt rolled away from.
    """
    for entry in action_log(workload):
        if entry.get("run") != stamp.run_uid:
            continue
        attempt = entry.get("attempt")
        if action_type is ActionType.ROLLOUT_UNDO:
            return True
        if isinstance(attempt, int) and attempt >= stamp.attempt:
            return True
    return False


def stamp_annotations(
    workload: Mapping[str, Any], stamp: ActionStamp, action_type: ActionType, extra: Mapping[str, str]
) -> dict[str, str]:
    """Workload annotations recording this change (the bounded action log and the latest Run)."""
    entry = {
        "run": stamp.run_uid,
        "attempt": stamp.attempt,
        "action": action_type.value,
        "at": format_precise_time(stamp.at),
    }
    entries = [*action_log(workload), entry][-ACTION_LOG_LENGTH:]
    return {
        ACTION_LOG_ANNOTATION: json.dumps(entries, separators=(",", ":")),
        RUN_UID_ANNOTATION: stamp.run_uid,
        RUN_ATTEMPT_ANNOTATION: str(stamp.attempt),
        **extra,
    }


def daemonset_rollout_facts(workload: Mapping[str, Any]) -> RolloutFacts:
    """Rollout progress of a DaemonSet, judged as ``kubectl rollout status daemonset`` does.

    The desired count is ``status.desiredNumberScheduled`` (one Pod per eligible node, set by
    the controller), not a spec field; the rollout is complete once the controller observed the
    generation and every desired Pod is updated (``updatedNumberScheduled``) and available
    (``numberAvailable``). ``currentNumberScheduled`` counts nodes running a Pod of any
    revision, so a surplus over the updated ones is old Pods still to be replaced.
    """
    metadata = workload.get("metadata") or {}
    status = workload.get("status") or {}
    return RolloutFacts(
        generation=int(metadata.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        desired=int(status.get("desiredNumberScheduled") or 0),
        total=int(status.get("currentNumberScheduled") or 0),
        updated=int(status.get("updatedNumberScheduled") or 0),
        ready=int(status.get("numberReady") or 0),
        available=int(status.get("numberAvailable") or 0),
    )


def rollout_facts(kind: TargetKind, workload: Mapping[str, Any]) -> RolloutFacts:
    """Rollout progress of a Deployment, StatefulSet or DaemonSet from its spec and status."""
    if kind is TargetKind.DAEMONSET:
        return daemonset_rollout_facts(workload)
    metadata = workload.get("metadata") or {}
    spec = workload.get("spec") or {}
    status = workload.get("status") or {}
    replicas = spec.get("replicas")
    desired = int(replicas) if replicas is not None else 1
    failure_reason = None
    revision_pending = False
    if kind is TargetKind.DEPLOYMENT:
        for condition in status.get("conditions") or []:
            if (
                condition.get("type") == "Progressing"
                and condition.get("reason") == PROGRESS_DEADLINE_EXCEEDED
            ):
                failure_reason = f"{PROGRESS_DEADLINE_EXCEEDED}: {condition.get('message', '')}".strip()
    else:
        strategy = spec.get("updateStrategy") or {}
        rolling = strategy.get("type", "RollingUpdate") == "RollingUpdate"
        partition = int(((strategy.get("rollingUpdate") or {}).get("partition")) or 0)
        if rolling and partition == 0:
            revision_pending = status.get("currentRevision") != status.get("updateRevision")
    return RolloutFacts(
        generation=int(metadata.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        desired=desired,
        total=int(status.get("replicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        revision_pending=revision_pending,
        failure_reason=failure_reason,
    )




def _describe(kind: TargetKind, name: str) -> str:
    return f"{kind.value}/{name}"


def _owned_by(item: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (item.get("metadata") or {}).get("ownerReferences") or [])


def _selector(workload: Mapping[str, Any]) -> str | None:
    labels = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or None


def choose_revision(
    revisions: Mapping[int, T], current: int, to_revision: int | None, what: str
) -> tuple[int, T]:
    """The revision to roll back to: ``to_revision``, else the newest one before ``current``."""
    if to_revision is not None:
        if to_revision not in revisions:
            known = ", ".join(str(number) for number in sorted(revisions)) or "none"
            raise ActionNotApplicableError(f"{what} has no revision {to_revision} (known revisions: {known})")
        return to_revision, revisions[to_revision]
    earlier = [number for number in revisions if number < current]
    if not earlier:
        raise ActionNotApplicableError(f"{what} has no revision before {current} to roll back to")
    number = max(earlier)
    return number, revisions[number]


# --------------------------------------------------------------------------- the store


class WorkloadStore:
    """Apply remediation actions to Deployments, StatefulSets and DaemonSets, and read their rollouts."""

    def __init__(self, kube: KubeApi) -> None:
        self._kube = kube

    async def apply(
        self,
        namespace: str,
        action: ProposedAction,
        stamp: ActionStamp,
        *,
        dry_run: bool,
        max_replicas: int,
    ) -> ActionResult:
        """Apply ``action`` once for this Run attempt (or dry-run it).

        Raises :class:`KubernetesApiError` (404 when the workload is gone, 403 when Flywheel
        may not change it, ...), :class:`StoreUnavailableError` when the API cannot be
        reached, and :class:`ActionNotApplicableError` when the action cannot apply.
        """
        kind, name = action.target_kind, action.target_name
        what = _describe(kind, name)
        for _ in range(CONFLICT_RETRIES):
            workload = await self.read(namespace, kind, name)
            generation = int(workload["metadata"].get("generation") or 0)
            if not dry_run and already_applied(workload, stamp, action.type):
                log.info(
                    "action_already_applied",
                    workload=what,
                    namespace=namespace,
                    run_uid=stamp.run_uid,
                    attempt=stamp.attempt,
                    action=action.type.value,
                )
                return ActionResult(
                    changed=False,
                    already_applied=True,
                    dry_run=False,
                    summary=f"{action.describe()}: already applied by this Run (attempt {stamp.attempt})",
                    generation_before=generation,
                    generation_after=generation,
                )
            plan = await self._plan(namespace, workload, action, stamp, max_replicas)
            body = copy.deepcopy(plan.patch)
            metadata = body.setdefault("metadata", {})
            metadata["resourceVersion"] = workload["metadata"]["resourceVersion"]
            metadata["annotations"] = {
                **(metadata.get("annotations") or {}),
                **stamp_annotations(workload, stamp, action.type, plan.extra_annotations),
            }
            try:
                patched = await self._patch(namespace, kind, name, body, dry_run=dry_run)
            except ConflictError:
                log.info("action_conflict_retry", workload=what, namespace=namespace, run_uid=stamp.run_uid)
                continue
            generation_after = int(patched["metadata"].get("generation") or 0)
            summary = plan.summary
            if dry_run:
                change = f"generation {generation} → {generation_after}" if plan.changed else "no spec change"
                summary = f"would {summary} ({change}; server-side dry run)"
            log.info(
                "action_applied",
                workload=what,
                namespace=namespace,
                action=action.type.value,
                run_uid=stamp.run_uid,
                attempt=stamp.attempt,
                dry_run=dry_run,
                changed=plan.changed,
                generation_before=generation,
                generation_after=generation_after,
            )
            return ActionResult(
                changed=plan.changed,
                already_applied=False,
                dry_run=dry_run,
                summary=summary,
                generation_before=generation,
                generation_after=generation_after,
            )
        raise KubernetesApiError(
            f"{what} kept changing under Flywheel ({CONFLICT_RETRIES} conflicts in a row)", status=409
        )

    async def rollout(self, namespace: str, kind: TargetKind, name: str) -> RolloutFacts:
        """The rollout progress of the workload (raises 404 as :class:`KubernetesApiError`)."""
        return rollout_facts(kind, await self.read(namespace, kind, name))

    async def read(self, namespace: str, kind: TargetKind, name: str) -> dict[str, Any]:
        """The workload as the API server returns it (raw JSON)."""
        return await self._kube.request("GET", _apps(namespace, _PLURALS[kind], name), f"read {_describe(kind, name)}")

    # -- internals --------------------------------------------------------------------------

    async def _plan(
        self,
        namespace: str,
        workload: Mapping[str, Any],
        action: ProposedAction,
        stamp: ActionStamp,
        max_replicas: int,
    ) -> _Plan:
        what = _describe(action.target_kind, action.target_name)
        if action.target_kind is TargetKind.DAEMONSET:
            _refuse_on_delete_daemonset(workload, what)
        if action.type is ActionType.ROLLOUT_RESTART:
            template_annotations = {
                RESTARTED_AT_ANNOTATION: format_precise_time(stamp.at),
                RUN_UID_ANNOTATION: stamp.run_uid,
                RUN_ATTEMPT_ANNOTATION: str(stamp.attempt),
            }
            return _Plan(
                patch={"spec": {"template": {"metadata": {"annotations": template_annotations}}}},
                changed=True,
                summary=f"restart {what}",
                extra_annotations={},
            )
        if action.type is ActionType.SCALE:
            assert action.replicas is not None  # guaranteed by ProposedAction's validation
            replicas = (workload.get("spec") or {}).get("replicas")
            current = int(replicas) if replicas is not None else 1
            target = effective_replicas(action.replicas, current, max_replicas)
            if target == current:
                return _Plan(
                    patch={},
                    changed=False,
                    summary=(
                        f"keep {what} at {current} replicas (requested {action.replicas}, maximum "
                        f"{max_replicas}; scaling never lowers the count)"
                    ),
                    extra_annotations={},
                )
            return _Plan(
                patch={"spec": {"replicas": target}},
                changed=True,
                summary=f"scale {what} from {current} to {target} replicas",
                extra_annotations={},
            )
        if action.type is ActionType.ROLLOUT_UNDO:
            if action.target_kind is TargetKind.DEPLOYMENT:
                current_revision, revision, template = await self._deployment_undo_target(
                    namespace, workload, action
                )
            elif action.target_kind is TargetKind.DAEMONSET:
                current_revision, revision, template = await self._daemonset_undo_target(
                    namespace, workload, action
                )
            else:
                current_revision, revision, template = await self._statefulset_undo_target(
                    namespace, workload, action
                )
            current_template = (workload.get("spec") or {}).get("template") or {}
            template_patch = merge_patch(current_template, template)
            extra = {UNDO_FROM_ANNOTATION: str(current_revision), UNDO_TO_ANNOTATION: str(revision)}
            if not template_patch:
                return _Plan(
                    patch={},
                    changed=False,
                    summary=f"keep {what}: its template already matches revision {revision}",
                    extra_annotations=extra,
                )
            return _Plan(
                patch={"spec": {"template": template_patch}},
                changed=True,
                summary=f"roll {what} back from revision {current_revision} to revision {revision}",
                extra_annotations=extra,
            )
        raise ActionNotApplicableError(
            f"unsupported action {action.type!r}"
        )  # pragma: no cover - closed enum

    async def _deployment_undo_target(
        self, namespace: str, deployment: Mapping[str, Any], action: ProposedAction
    ) -> tuple[int, int, dict[str, Any]]:
        """(current revision, chosen revision, its pod template) from the Deployment's ReplicaSets."""
        what = _describe(action.target_kind, action.target_name)
        uid = deployment["metadata"]["uid"]
        annotations = deployment["metadata"].get("annotations") or {}
        try:
            current = int(annotations.get(DEPLOYMENT_REVISION_ANNOTATION, "0"))
        except ValueError as exc:
            raise ActionNotApplicableError(f"{what} has an unreadable revision annotation") from exc
        replica_sets = (await self._kube.request(
            "GET", _apps(namespace, "replicasets"), f"list ReplicaSets of {what}",
            query={"labelSelector": _selector(deployment) or ""},
        ))["items"]
        templates: dict[int, dict[str, Any]] = {}
        for replica_set in replica_sets:
            if not _owned_by(replica_set, uid):
                continue
            revision = (replica_set["metadata"].get("annotations") or {}).get(DEPLOYMENT_REVISION_ANNOTATION)
            if revision is None or not revision.isdigit():
                continue
            template = copy.deepcopy((replica_set.get("spec") or {}).get("template") or {})
            labels = (template.get("metadata") or {}).get("labels")
            if labels:
                labels.pop(POD_TEMPLATE_HASH_LABEL, None)
            templates[int(revision)] = template
        revision, template = choose_revision(templates, current, action.to_revision, what)
        return current, revision, template

    async def _statefulset_undo_target(
        self, namespace: str, statefulset: Mapping[str, Any], action: ProposedAction
    ) -> tuple[int, int, dict[str, Any]]:
        """(current revision, chosen revision, its pod template) from the ControllerRevisions."""
        what = _describe(action.target_kind, action.target_name)
        uid = statefulset["metadata"]["uid"]
        update_revision = (statefulset.get("status") or {}).get("updateRevision")
        items = (await self._kube.request(
            "GET", _apps(namespace, "controllerrevisions"), f"list ControllerRevisions of {what}",
            query={"labelSelector": _selector(statefulset) or ""},
        ))["items"]
        templates: dict[int, dict[str, Any]] = {}
        current = 0
        for item in items:
            if not _owned_by(item, uid):
                continue
            number = int(item.get("revision") or 0)
            if item["metadata"]["name"] == update_revision:
                current = number
            stored = ((item.get("data") or {}).get("spec") or {}).get("template")
            if isinstance(stored, dict):
                templates[number] = {key: value for key, value in stored.items() if key != "$patch"}
        if current == 0:
            raise ActionNotApplicableError(
                f"{what} has no current ControllerRevision yet (status.updateRevision)"
            )
        revision, template = choose_revision(templates, current, action.to_revision, what)
        return current, revision, template

    async def _daemonset_undo_target(
        self, namespace: str, daemonset: Mapping[str, Any], action: ProposedAction
    ) -> tuple[int, int, dict[str, Any]]:
        """(current revision, chosen revision, its pod template) from the DaemonSet's ControllerRevisions.

        As ``kubectl rollout undo daemonset``: the DaemonSet's status names no revision, and the
        controller gives the revision of its current template the highest number (a rollback to an
        old template renumbers that template's ControllerRevision), so the current revision is the
        highest one, and "the previous revision" the highest below it.
        """
        what = _describe(action.target_kind, action.target_name)
        templates = await self._controller_revision_templates(namespace, daemonset, what)
        if not templates:
            raise ActionNotApplicableError(f"{what} has no ControllerRevision yet")
        current = max(templates)
        revision, template = choose_revision(templates, current, action.to_revision, what)
        return current, revision, template

    async def _controller_revision_templates(
        self, namespace: str, workload: Mapping[str, Any], what: str
    ) -> dict[int, dict[str, Any]]:
        """The pod template of every ControllerRevision the workload controls, by revision number."""
        uid = workload["metadata"]["uid"]
        # Without matchLabels (never for apps/v1) every revision is listed; ownership filters them.
        items = (await self._kube.request(
            "GET", _apps(namespace, "controllerrevisions"), f"list ControllerRevisions of {what}",
            query={"labelSelector": _selector(workload) or ""},
        ))["items"]
        templates: dict[int, dict[str, Any]] = {}
        for item in items:
            if not _owned_by(item, uid):
                continue
            stored = ((item.get("data") or {}).get("spec") or {}).get("template")
            if isinstance(stored, dict):
                # The controller stores the template as a strategic-merge patch with "$patch": "replace".
                templates[int(item.get("revision") or 0)] = {
                    key: value for key, value in stored.items() if key != "$patch"
                }
        return templates

    async def _patch(
        self, namespace: str, kind: TargetKind, name: str, body: dict[str, Any], *, dry_run: bool
    ) -> dict[str, Any]:
        query = {"fieldManager": FIELD_MANAGER, **({"dryRun": "All"} if dry_run else {})}
        return await self._kube.request(
            "PATCH", _apps(namespace, _PLURALS[kind], name), f"patch {_describe(kind, name)}",
            body=body, query=query, content_type=MERGE_PATCH,
        )


def _refuse_on_delete_daemonset(daemonset: Mapping[str, Any], what: str) -> None:
    """A DaemonSet with ``updateStrategy: OnDelete`` replaces a Pod only when someone deletes it:
    a template change would roll nothing out and the Run could never be verified (``kubectl
    rollout status`` refuses such a DaemonSet too)."""
    strategy = ((daemonset.get("spec") or {}).get("updateStrategy") or {}).get("type", "RollingUpdate")
    if strategy != "RollingUpdate":
        raise ActionNotApplicableError(
            f"{what} has updateStrategy {strategy}: its Pods are replaced only when deleted, so a "
            "rollout restart or undo would change nothing that can be verified"
        )


_PLURALS = {
    TargetKind.DEPLOYMENT: "deployments",
    TargetKind.STATEFULSET: "statefulsets",
    TargetKind.DAEMONSET: "daemonsets",
}


def _apps(namespace: str, plural: str, name: str | None = None) -> str:
    return resource_path("apps", "v1", plural, namespace=namespace, name=name)


__all__ = [
    "ACTION_LOG_ANNOTATION",
    "RESTARTED_AT_ANNOTATION",
    "RUN_ATTEMPT_ANNOTATION",
    "RUN_UID_ANNOTATION",
    "ActionResult",
    "ActionStamp",
    "WorkloadStore",
    "action_log",
    "already_applied",
    "choose_revision",
    "daemonset_rollout_facts",
    "merge_patch",
    "rollout_facts",
    "stamp_annotations",
]
