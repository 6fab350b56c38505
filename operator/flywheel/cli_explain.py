"""``flywheel explain incident NAME``: the story of an Incident in one screen.

Read from the API server as the user of the kubeconfig (:mod:`flywheel.cli_kube`): the
Incident (anomaly counts, escalation, decision, conditions), its Runs with their journals,
their Approvals, and the latest Events about any of them. With ``--database-url`` the
history database adds what only it keeps (:meth:`HistoryStore.timeline`): approvals as
recorded, notifications and completions. Nothing is written anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import click

from flywheel.cli_approvals import action_text, iso, parse_time, remaining_text
from flywheel.cli_history import open_history_store, render_table, shorten, timestamp_text
from flywheel.cli_kube import UserKube, kube_options, kube_target
from flywheel.errors import KubernetesApiError
from flywheel.stores.history.records import RunTimeline, TimelineKind

LATEST_EVENTS: Final = 10
_TEXT_WIDTH: Final = 90
_STEP_WIDTH: Final = 70
# Journal steps are already shown from the Runs' status; the history adds the rest.
_HISTORY_KINDS: Final = frozenset(kind for kind in TimelineKind if kind is not TimelineKind.STEP)

Body = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class IncidentStory:
    """What the API server (and, optionally, the history database) says about one Incident."""

    incident: Body
    runs: Sequence[Body]
    approvals: Sequence[Body]
    events: Sequence[Body]
    # None: the history database was not asked (no --database-url).
    history: Sequence[RunTimeline] | None = None


def _uid(body: Body) -> str:
    return str((body.get("metadata") or {}).get("uid") or "")


def _name(body: Body) -> str:
    return str((body.get("metadata") or {}).get("name") or "")


def _created(body: Body) -> datetime:
    return parse_time((body.get("metadata") or {}).get("creationTimestamp")) or datetime.min.replace(tzinfo=UTC)


def runs_of(incident: Body, runs: Sequence[Body]) -> list[Body]:
    """The Runs remediating this incarnation of the Incident, oldest first."""
    uid = _uid(incident)
    mine = [run for run in runs if ((run.get("spec") or {}).get("incidentRef") or {}).get("uid") == uid]
    return sorted(mine, key=_created)


def approvals_of(runs: Sequence[Body], approvals: Sequence[Body]) -> list[Body]:
    uids = {_uid(run) for run in runs}
    mine = [item for item in approvals if ((item.get("spec") or {}).get("runRef") or {}).get("uid") in uids]
    return sorted(mine, key=_created)


def _event_time(event: Body) -> datetime:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        parsed = parse_time(event.get(key)) or parse_time((event.get("series") or {}).get("lastObservedTime"))
        if parsed:
            return parsed
    return _created(event)


def events_about(objects: Sequence[Body], events: Sequence[Body], limit: int = LATEST_EVENTS) -> list[Body]:
    """The latest ``limit`` Events whose object is one of ``objects``, oldest of them first."""
    uids = {_uid(body) for body in objects}
    mine = [event for event in events if (event.get("involvedObject") or {}).get("uid") in uids]
    return sorted(mine, key=_event_time)[-limit:]


def _field(label: str, value: Any) -> str:
    return f"{label} {value if value not in (None, '') else '-'}"


def _header(incident: Body) -> list[str]:
    metadata, spec, status = incident.get("metadata") or {}, incident.get("spec") or {}, incident.get("status") or {}
    target = spec.get("targetRef") or {}
    phase = status.get("phase") or "-"
    if status.get("disposition"):
        phase += f" ({status['disposition']})"
    if status.get("duplicateOf"):
        phase += f" (duplicate of {status['duplicateOf']})"
    creator = ((metadata.get("annotations") or {}).get("flywheel.dev/created-by")) or "unknown"
    lines = [
        (
            f"Incident {metadata.get('namespace')}/{metadata.get('name')}: {phase}, "
            f"created {iso(parse_time(metadata.get('creationTimestamp')))} by {creator}"
        ),
        "  " + "  ".join([
            _field("alert", spec.get("alertName")), _field("service", spec.get("service")),
            _field("error", spec.get("errorType")), _field("severity", spec.get("severity")),
            _field("source", spec.get("source")),
        ]),
        (
            f"  target {target.get('kind', '?')}/{target.get('name', '?')}  "
            f"mode {(spec.get('remediation') or {}).get('mode', 'Auto')}"
        ),
    ]
    if spec.get("summary"):
        lines.append(f"  summary: {shorten(spec['summary'], _TEXT_WIDTH)}")
    return lines


def _anomaly(status: Body) -> list[str]:
    anomaly = status.get("anomaly")
    if not anomaly:
        return ["Anomaly: not counted yet"]
    counts = "  ".join(f"{window} {anomaly.get(f'count{window}', 0)}" for window in ("1h", "24h", "7d", "30d"))
    line = f"Anomaly {anomaly.get('key')}: {counts}  escalation {anomaly.get('escalationLevel') or '-'}"
    line += f"  auto repairs {anomaly.get('autoRepairCount', 0)}"
    if anomaly.get("permanentFixApplied"):
        line += "  permanent fix applied"
    if anomaly.get("degraded"):
        line += "  (Redis was down: counts are stale)"
    return [line]


def _decision(status: Body) -> list[str]:
    decision = status.get("decision")
    if not decision:
        return ["Decision: none yet"]
    confidence = decision.get("confidence")
    lines = [
        f"Decision {decision.get('id')}: {decision.get('state')}  source {decision.get('source') or '-'}  "
        f"action {action_text(decision.get('action'))}  risk {decision.get('riskLevel') or '-'}"
        + (f"  confidence {confidence:.2f}" if isinstance(confidence, (int, float)) else ""),
        f"  rule {decision.get('matchedRule') or '-'}",
    ]
    if decision.get("reasoning"):
        lines.append(f"  reasoning: {shorten(decision['reasoning'], _TEXT_WIDTH)}")
    if decision.get("error"):
        lines.append(f"  error: {shorten(decision['error'], _TEXT_WIDTH)}")
    return lines


def _run(run: Body) -> list[str]:
    spec, status = run.get("spec") or {}, run.get("status") or {}
    line = (
        f"  {_name(run)}: {status.get('state') or 'Pending'}  {action_text(spec.get('action'))}  "
        f"risk {spec.get('riskLevel')}  attempt {status.get('attempt', 0)}/{spec.get('maxAttempts', '?')}"
    )
    if status.get("errorCode"):
        line += f"  {status['errorCode']}"
    lines = [line]
    if status.get("errorDetail"):
        lines.append(f"    error: {shorten(status['errorDetail'], _TEXT_WIDTH)}")
    steps = status.get("steps") or []
    if steps:
        rows = [
            [str(step.get("seq")), iso(parse_time(step.get("at"))), str(step.get("name")), str(step.get("result")),
             shorten(step.get("message"), _STEP_WIDTH)]
            for step in steps
        ]
        table = render_table(["SEQ", "AT", "STEP", "RESULT", "MESSAGE"], rows)
        lines.extend(f"    {row}" for row in table.splitlines())
    return lines


def _approval(approval: Body, now: datetime) -> list[str]:
    spec, status = approval.get("spec") or {}, approval.get("status") or {}
    phase = status.get("phase") or "Pending"
    line = f"  {_name(approval)}: {phase}"
    if status.get("decidedBy"):
        line += f" by {status['decidedBy']} at {status.get('decidedAt') or '-'}"
    expires_at = parse_time(spec.get("expiresAt"))
    line += f"  expires {iso(expires_at)}"
    if phase == "Pending":
        line += f" ({remaining_text(expires_at, now)})"
    lines = [line]
    if spec.get("reason"):
        lines.append(f"    reason: {shorten(spec['reason'], _TEXT_WIDTH)}")
    if status.get("message"):
        lines.append(f"    message: {shorten(status['message'], _TEXT_WIDTH)}")
    return lines


def _conditions(status: Body) -> list[str]:
    conditions = status.get("conditions") or []
    if not conditions:
        return ["Conditions: none"]
    rows = [
        [str(c.get("type")), str(c.get("status")), str(c.get("reason") or "-"), shorten(c.get("message"), _TEXT_WIDTH)]
        for c in conditions
    ]
    return ["Conditions:", *(f"  {row}" for row in render_table(["TYPE", "STATUS", "REASON", "MESSAGE"], rows)
                             .splitlines())]


def _events(events: Sequence[Body]) -> list[str]:
    if not events:
        return ["Events: none"]
    rows = [
        [
            iso(_event_time(event)),
            str(event.get("type") or "-"),
            str(event.get("reason") or "-"),
            f"{(event.get('involvedObject') or {}).get('kind')}/{(event.get('involvedObject') or {}).get('name')}",
            shorten(event.get("message"), _STEP_WIDTH),
        ]
        for event in events
    ]
    table = render_table(["AT", "TYPE", "REASON", "OBJECT", "MESSAGE"], rows)
    return [f"Events (latest {LATEST_EVENTS}):", *(f"  {row}" for row in table.splitlines())]


def _history(story: IncidentStory) -> list[str]:
    if story.history is None:
        return ["History: not read (pass --database-url for notifications and the recorded approvals)"]
    rows = [
        [timestamp_text(entry.at), timeline.run.name, entry.kind.value, entry.title, entry.result or "-",
         shorten(entry.detail, _STEP_WIDTH)]
        for timeline in story.history
        for entry in timeline.entries
        if entry.kind in _HISTORY_KINDS
    ]
    notifications = sum(row[2] == TimelineKind.NOTIFICATION.value for row in rows)
    title = f"History ({notifications} notification{'s' if notifications != 1 else ''} recorded):"
    if not rows:
        return [f"{title} nothing recorded for these Runs yet"]
    table = render_table(["AT", "RUN", "KIND", "EVENT", "RESULT", "DETAIL"], rows)
    return [title, *(f"  {row}" for row in table.splitlines())]


def render_story(story: IncidentStory, now: datetime) -> str:
    status = story.incident.get("status") or {}
    sections: list[list[str]] = [_header(story.incident), _anomaly(status), _decision(status)]
    runs = [line for run in story.runs for line in _run(run)]
    sections.append(["Runs:", *runs] if runs else ["Runs: none"])
    approvals = [line for item in story.approvals for line in _approval(item, now)]
    sections.append(["Approvals:", *approvals] if approvals else ["Approvals: none"])
    sections += [_conditions(status), _events(story.events), _history(story)]
    return "\n\n".join("\n".join(section) for section in sections)


def _history_of(runs: Sequence[Body], namespace: str, database_url: str) -> list[RunTimeline]:
    with open_history_store(database_url) as store:
        found = [store.timeline(_uid(run), namespace) for run in runs]
    return [timeline for timeline in found if timeline is not None]


@click.group("explain")
def explain_group() -> None:
    """Explain what Flywheel did, and why."""


@explain_group.command("incident")
@click.argument("name")
@click.option("-n", "--namespace", default=None, help="Namespace (default: the context's).")
@click.option(
    "--database-url", default=None, metavar="URL",
    help="Also read the history database (SQLAlchemy URL, e.g. the operator's FLYWHEEL_DATABASE_URL).",
)
@kube_options
def explain_incident_command(
    name: str, namespace: str | None, database_url: str | None, kubeconfig: str | None, context: str | None,
    impersonate_user: str | None, impersonate_groups: tuple[str, ...],
) -> None:
    """The story of the Incident NAME: anomaly, decision, Runs and their journals, Approvals, Events."""
    with UserKube(kube_target(kubeconfig, context, impersonate_user, impersonate_groups)) as kube:
        namespace = namespace or kube.default_namespace
        try:
            incident = kube.get("incidents", namespace, name)
        except KubernetesApiError as exc:
            if exc.status == 404:
                raise click.ClickException(f"incident {namespace}/{name}: not found") from exc
            raise
        runs = runs_of(incident, kube.list_objects("runs", namespace))
        approvals = approvals_of(runs, kube.list_objects("approvals", namespace))
        events = events_about([incident, *runs, *approvals], kube.events(namespace))
    history = _history_of(runs, namespace, database_url) if database_url else None
    story = IncidentStory(incident, runs, approvals, events, history)
    click.echo(render_story(story, datetime.now(UTC)))


__all__ = [
    "IncidentStory",
    "approvals_of",
    "events_about",
    "explain_group",
    "render_story",
    "runs_of",
]
