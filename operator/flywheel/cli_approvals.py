"""The approver's commands: ``approvals`` (what waits), ``approve NAME`` and ``reject NAME``.

They talk to the API server as the user of the kubeconfig (:mod:`flywheel.cli_kube`), so
who decided is what the API server authenticated, stamped by Flywheel's admission webhook;
the CLI never names the decider itself. A decision is the merge patch of ``spec.decision``
and ``spec.reason`` that ``kubectl patch`` would send (the README keeps that as the
contract). Before writing, the same patch is sent as a server-side dry run: the admission
webhooks answer it like the real one, so a refusal costs nothing, and a dry run that comes
back without the decider's stamp means the webhooks are not installed; a real patch then
would record a final decision Flywheel can only refuse.

Refusals are one line on stderr and exit code 1; :func:`refusal_for_api_error` turns the
API server's answers (the admission webhook's denial, RBAC, validation) into those lines.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import click

from flywheel.api.bodies import ApprovalBody, approval_body
from flywheel.api.enums import ApprovalPhase
from flywheel.api.times import format_time, read_time
from flywheel.cli_history import duration_text, render_table
from flywheel.cli_kube import KubeTarget, UserKube, kube_options, kube_target
from flywheel.domain.approval import APPROVE, DECIDED_BY, REJECT
from flywheel.errors import KubernetesApiError

APPROVALS: Final = "approvals"
# How long `approve`/`reject` wait for Flywheel to record the outcome, and how often they look.
DEFAULT_WAIT_SECONDS: Final = 30
POLL_INTERVAL_SECONDS: Final = 0.5

# The admission webhook's rule names (flywheel.domain.approval), as an approver would say them.
RULE_LABELS: Final = {
    "four-eyes": "four eyes",
    "approver-not-allowed": "not an approver",
    "decision-final": "already decided",
    "identity-required": "no identity",
    "identity-stamped-by-flywheel": "identity is stamped by Flywheel",
    "proposal-immutable": "the proposal cannot change",
    "decision-after-creation": "decided at creation",
    "approvals-created-by-flywheel": "created by Flywheel only",
}
_DENIED = re.compile(r'admission webhook "(?P<webhook>[^"]+)" denied the request: (?P<message>.*)', re.DOTALL)
_RULE = re.compile(r"(?P<rule>[a-z][a-z0-9-]*): (?P<message>.*)", re.DOTALL)
_UNREACHABLE = re.compile(r'failed calling webhook "(?P<webhook>[^"]+)"')
# The CEL rule of the CRD (flywheel.api.approval), met when the webhooks are not there to answer first.
_CEL_DECISION_FINAL = "decision is immutable once set"
NOT_STAMPED: Final = (
    "Flywheel's admission webhook did not stamp who decides (no webhook for this namespace: is the "
    "operator running with FLYWHEEL_WEBHOOK_MODE=loopback or service?); nothing was written"
)


# --------------------------------------------------------------------------- pure: listing


def one_line(text: str) -> str:
    return " ".join(text.split())


def action_text(action: Mapping[str, Any] | None) -> str:
    """``RolloutRestart Deployment/checkout``, ``Scale Deployment/api to 3``, ``RolloutUndo ... to revision 4``."""
    if not action:
        return "-"
    target = action.get("target") or {}
    text = f"{action.get('type', '?')} {target.get('kind', '?')}/{target.get('name', '?')}"
    params = action.get("params") or {}
    if params.get("replicas") is not None:
        text += f" to {params['replicas']}"
    if params.get("toRevision") is not None:
        text += f" to revision {params['toRevision']}"
    return text


def parse_time(value: Any) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339, ``Z`` or an offset), else None."""
    return read_time(str(value), assume_utc=True) if value else None


def iso(value: datetime | None) -> str:
    return format_time(value) if value else "-"


def remaining_text(expires_at: datetime | None, now: datetime) -> str:
    """``in 14m02s`` while there is time left, ``expired 3s ago`` after."""
    if expires_at is None:
        return "-"
    left = expires_at - now
    if left > timedelta(0):
        return f"in {duration_text(left)}"
    return f"expired {duration_text(-left)} ago"


@dataclass(frozen=True, slots=True)
class WaitingApproval:
    """An Approval nobody has decided yet, as an approver needs to see it."""

    namespace: str
    name: str
    run: str
    action: str
    risk: str
    escalation: str | None
    created_at: datetime | None
    expires_at: datetime | None
    reasoning: str | None

    @classmethod
    def from_body(cls, body: ApprovalBody) -> WaitingApproval:
        metadata, spec = body["metadata"], body.get("spec") or {}
        return cls(
            namespace=str(metadata.get("namespace") or ""),
            name=str(metadata.get("name") or ""),
            run=str((spec.get("runRef") or {}).get("name") or "-"),
            action=action_text(spec.get("action")),
            risk=str(spec.get("riskLevel") or "-"),
            escalation=spec.get("escalationLevel"),
            created_at=parse_time(metadata.get("creationTimestamp")),
            expires_at=parse_time(spec.get("expiresAt")),
            reasoning=spec.get("reasoning"),
        )

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "run": self.run,
            "action": self.action,
            "riskLevel": self.risk,
            "escalationLevel": self.escalation,
            "createdAt": iso(self.created_at) if self.created_at else None,
            "expiresAt": iso(self.expires_at) if self.expires_at else None,
            "ageSeconds": int((now - self.created_at).total_seconds()) if self.created_at else None,
            "remainingSeconds": int((self.expires_at - now).total_seconds()) if self.expires_at else None,
            "reasoning": self.reasoning,
        }


def is_waiting(body: Mapping[str, Any]) -> bool:
    """Undecided and not closed by Flywheel (Expired, Invalid)."""
    phase = (body.get("status") or {}).get("phase")
    return not (body.get("spec") or {}).get("decision") and phase in (None, ApprovalPhase.PENDING.value)


def waiting_approvals(bodies: Iterable[Mapping[str, Any]]) -> list[WaitingApproval]:
    """What waits for a decision, oldest first (then by namespace and name, for a stable order)."""
    waiting = [WaitingApproval.from_body(approval_body(body)) for body in bodies if is_waiting(body)]
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(waiting, key=lambda item: (item.created_at or oldest, item.namespace, item.name))


def render_waiting(items: list[WaitingApproval], now: datetime, *, all_namespaces: bool) -> str:
    if not items:
        return "no Approvals wait for a decision"
    headers = ["NAME", "RUN", "ACTION", "RISK", "ESCALATION", "AGE", "EXPIRES"]
    rows = [
        [
            item.name,
            item.run,
            item.action,
            item.risk,
            item.escalation or "-",
            duration_text(now - item.created_at) if item.created_at else "-",
            f"{iso(item.expires_at)} ({remaining_text(item.expires_at, now)})",
        ]
        for item in items
    ]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
        for item, row in zip(items, rows, strict=True):
            row.insert(0, item.namespace)
    return render_table(headers, rows)


# --------------------------------------------------------------------------- pure: refusals


def refusal_for_api_error(status: int | None, message: str) -> str:
    """The API server's refusal of a decision as ``<what>: <why>``, in the approver's words."""
    message = one_line(message)
    denied = _DENIED.search(message)
    if denied:
        reason = denied["message"]
        rule = _RULE.fullmatch(reason)
        if rule and rule["rule"] in RULE_LABELS:
            return f"{RULE_LABELS[rule['rule']]}: {rule['message']}"
        return f"refused by admission webhook {denied['webhook']}: {reason}"
    unreachable = _UNREACHABLE.search(message)
    if unreachable:
        return (
            f"Flywheel's admission webhook {unreachable['webhook']} did not answer (is the operator running?); "
            "nothing was written"
        )
    if status == 404:
        return "not found"
    if status == 403:
        return f"forbidden by RBAC: {message}"
    if status == 422 and _CEL_DECISION_FINAL in message:
        return f"already decided: {message}"
    return f"refused by the API server ({status}): {message}"


def refusal_before_deciding(body: Mapping[str, Any], now: datetime) -> str | None:
    """Why this Approval cannot be decided any more, from what it says; None when it can."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    if spec.get("decision"):
        by = status.get("decidedBy") or ((body.get("metadata") or {}).get("annotations") or {}).get(DECIDED_BY)
        line = f"already decided: {spec['decision']}"
        if by:
            line += f" by {by}"
        if status.get("phase"):
            line += f" (phase {status['phase']})"
        return line
    expires_at = parse_time(spec.get("expiresAt"))
    if status.get("phase") == ApprovalPhase.EXPIRED.value or (expires_at is not None and now >= expires_at):
        return f"expired at {iso(expires_at)}, its Run timed out; nothing was written"
    if status.get("phase") == ApprovalPhase.INVALID.value:
        return f"invalid: {one_line(str(status.get('message') or 'closed by Flywheel'))}"
    return None


def outcome_of(body: Mapping[str, Any]) -> tuple[str, bool] | None:
    """Once Flywheel recorded the decision: the line to print and whether it stands."""
    status = body.get("status") or {}
    phase = status.get("phase")
    if phase in (ApprovalPhase.APPROVED.value, ApprovalPhase.REJECTED.value):
        line = f"{phase.lower()} by {status.get('decidedBy') or '?'}"
        if status.get("decidedAt"):
            line += f" at {status['decidedAt']}"
        return line, True
    if phase in (ApprovalPhase.INVALID.value, ApprovalPhase.EXPIRED.value):
        return f"{phase.lower()}: {one_line(str(status.get('message') or ''))}", False
    return None


# --------------------------------------------------------------------------- commands


class Refused(click.ClickException):
    """A decision that was not taken: one line on stderr, exit code 1."""

    def __init__(self, namespace: str, name: str, why: str) -> None:
        super().__init__(f"approval {namespace}/{name}: {why}")

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _namespace_option(command: Any) -> Any:
    return click.option("-n", "--namespace", default=None, help="Namespace (default: the context's).")(command)


@click.command("approvals")
@_namespace_option
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@kube_options
def approvals_command(
    namespace: str | None, all_namespaces: bool, output: str, kubeconfig: str | None, context: str | None,
    impersonate_user: str | None, impersonate_groups: tuple[str, ...],
) -> None:
    """List the Approvals that wait for a decision, oldest first."""
    if namespace and all_namespaces:
        raise click.UsageError("use either --namespace or --all-namespaces, not both")
    with UserKube(kube_target(kubeconfig, context, impersonate_user, impersonate_groups)) as kube:
        scope = None if all_namespaces else namespace or kube.default_namespace
        items = waiting_approvals(kube.list_objects(APPROVALS, scope))
    now = datetime.now(UTC)
    if output == "json":
        click.echo(json.dumps({"items": [item.to_json(now) for item in items]}, indent=2, ensure_ascii=False))
    else:
        click.echo(render_waiting(items, now, all_namespaces=all_namespaces))


def _decide(target: KubeTarget, namespace: str | None, name: str, decision: str, reason: str,
            wait_seconds: float | None) -> None:
    with UserKube(target) as kube:
        namespace = namespace or kube.default_namespace
        try:
            body = kube.get(APPROVALS, namespace, name)
        except KubernetesApiError as exc:
            raise Refused(namespace, name, refusal_for_api_error(exc.status, str(exc))) from exc
        refusal = refusal_before_deciding(body, datetime.now(UTC))
        if refusal:
            raise Refused(namespace, name, refusal)
        patch = {"spec": {"decision": decision, "reason": reason}}
        try:
            rehearsed = kube.merge_patch(APPROVALS, namespace, name, patch, dry_run=True)
            if not ((rehearsed.get("metadata") or {}).get("annotations") or {}).get(DECIDED_BY):
                raise Refused(namespace, name, NOT_STAMPED)
            written = kube.merge_patch(APPROVALS, namespace, name, patch)
        except KubernetesApiError as exc:
            raise Refused(namespace, name, refusal_for_api_error(exc.status, str(exc))) from exc
        stamped = written["metadata"]["annotations"][DECIDED_BY]
        if wait_seconds is None:
            click.echo(f"approval {namespace}/{name}: {decision} sent as {stamped}")
            return
        deadline = time.monotonic() + wait_seconds
        while True:
            outcome = outcome_of(kube.get(APPROVALS, namespace, name))
            if outcome is not None:
                line, stands = outcome
                if not stands:
                    raise Refused(namespace, name, line)
                click.echo(f"approval {namespace}/{name} {line}")
                return
            if time.monotonic() >= deadline:
                click.echo(
                    f"approval {namespace}/{name}: {decision} sent as {stamped}; Flywheel has not recorded "
                    f"the outcome within {wait_seconds:g}s (see `flywheel approvals -n {namespace}`)"
                )
                return
            time.sleep(POLL_INTERVAL_SECONDS)


def _decision_command(command_name: str, decision: str, summary: str) -> click.Command:
    @click.command(command_name, help=summary)
    @click.argument("name")
    @click.option("--reason", required=True, help="Why (recorded on the Approval and in the Run's journal).")
    @_namespace_option
    @click.option("--wait/--no-wait", default=True, show_default=True,
                  help="Wait for Flywheel to record the outcome.")
    @click.option("--timeout", type=click.FloatRange(min=0), default=DEFAULT_WAIT_SECONDS, show_default=True,
                  help="Seconds to wait for the outcome.")
    @kube_options
    def command(
        name: str, reason: str, namespace: str | None, wait: bool, timeout: float, kubeconfig: str | None,
        context: str | None, impersonate_user: str | None, impersonate_groups: tuple[str, ...],
    ) -> None:
        if not reason.strip():
            raise click.BadParameter("must say why", param_hint="--reason")
        target = kube_target(kubeconfig, context, impersonate_user, impersonate_groups)
        _decide(target, namespace, name, decision, reason, timeout if wait else None)

    return command


approve_command = _decision_command(
    "approve", APPROVE, "Approve the Approval NAME: its Run executes the proposed action (four eyes apply)."
)
reject_command = _decision_command("reject", REJECT, "Reject the Approval NAME: its Run is cancelled.")


__all__ = [
    "Refused",
    "WaitingApproval",
    "action_text",
    "approvals_command",
    "approve_command",
    "outcome_of",
    "refusal_before_deciding",
    "refusal_for_api_error",
    "reject_command",
    "remaining_text",
    "render_waiting",
    "waiting_approvals",
]
