"""Reviewer commands over the history database: ``history``, ``timeline`` and ``db upgrade``.

Registered on the ``flywheel`` group by ``flywheel.cli``. They read the database the operator
writes (``--database-url``, default ``FLYWHEEL_DATABASE_URL``) and never touch the cluster.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import click

from flywheel.api.enums import RunState
from flywheel.errors import ConfigurationError, DatabaseUnavailableError, InvalidInputError
from flywheel.stores.history.engine import create_history_engine, describe_database_url, sqlite_database_path
from flywheel.stores.history.records import RunOutcome, RunPage, RunTimeline
from flywheel.stores.history.repository import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, HistoryStore

# Free text is cut in tables so that rows stay on one line; JSON output carries it whole.
_DETAIL_WIDTH = 80
_ERROR_WIDTH = 40


def _database_url(explicit: str | None) -> str:
    if explicit:
        return explicit
    from flywheel.settings import get_settings

    return get_settings().database_url.get_secret_value()


_database_url_option = click.option(
    "--database-url",
    default=None,
    metavar="URL",
    help="History database (SQLAlchemy URL). Default: FLYWHEEL_DATABASE_URL, else sqlite:///flywheel.db.",
)
_output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)


@contextmanager
def open_history_store(database_url: str | None) -> Iterator[HistoryStore]:
    """A store for reading, with errors a reviewer can act on instead of tracebacks."""
    url = _database_url(database_url)
    try:
        path = sqlite_database_path(url)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc
    # Opening a missing SQLite file would silently create an empty one.
    if path is not None and not Path(path).exists():
        raise click.ClickException(
            f"no history database at {path} (set --database-url or FLYWHEEL_DATABASE_URL, "
            "or create it with `flywheel db upgrade`)"
        )
    store = HistoryStore(create_history_engine(url))
    try:
        yield store
    except DatabaseUnavailableError as exc:
        raise click.ClickException(str(exc)) from exc
    except InvalidInputError as exc:
        if exc.field == "namespace":
            raise click.UsageError(f"{exc.reason} with -n/--namespace") from exc
        raise click.UsageError(str(exc)) from exc
    finally:
        store.close()


def _one_of(enum: type[StrEnum]) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """Option callback accepting an enum value in any case and returning its canonical spelling.

    (``click.Choice`` would do, but it shows the choices lower-cased, e.g. ``waitingapproval``.)
    """

    def validate(_context: click.Context, _parameter: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        for member in enum:
            if member.value.lower() == value.lower():
                return member.value
        raise click.BadParameter(f"{value!r} is not one of {', '.join(member.value for member in enum)}")

    return validate


def timestamp_text(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def duration_text(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = int(value.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def shorten(text: str | None, width: int) -> str:
    if not text:
        return "-"
    compact = " ".join(text.split())
    return compact if len(compact) <= width else compact[: width - 1] + "…"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, like ``kubectl get``."""
    widths = [max(len(header), *(len(row[index]) for row in rows)) for index, header in enumerate(headers)]
    lines = [
        "   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    ]
    return "\n".join(lines)


def _echo_json(document: dict[str, Any]) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _render_page(page: RunPage) -> str:
    if not page.items:
        if page.total and page.offset >= page.total:
            return f"no runs at offset {page.offset} ({page.total} match)"
        return "no runs match"
    rows = [
        [
            run.namespace,
            run.name,
            run.state or "-",
            f"{run.action_type} {run.target_kind}/{run.target_name}",
            run.incident_name,
            str(run.attempt),
            timestamp_text(run.created_at),
            duration_text(run.duration),
            shorten(run.error_code, _ERROR_WIDTH),
        ]
        for run in page.items
    ]
    headers = ["NAMESPACE", "NAME", "STATE", "ACTION", "INCIDENT", "ATTEMPT", "CREATED", "DURATION", "ERROR"]
    first, last = page.offset + 1, page.offset + len(page.items)
    footer = f"runs {first}-{last} of {page.total}"
    if page.next_offset is not None:
        footer += f" (next page: --offset {page.next_offset})"
    return f"{render_table(headers, rows)}\n\n{footer}"


def _render_timeline(timeline: RunTimeline) -> str:
    run = timeline.run
    header = [
        f"Run:       {run.name}  (namespace {run.namespace}, uid {run.uid})",
        f"Incident:  {run.incident_name}",
        f"Action:    {run.action_type} {run.target_kind}/{run.target_name}  (risk {run.risk_level}, mode {run.mode})",
        f"State:     {run.state or '-'}  (attempt {run.attempt})",
        f"Trace:     {run.trace_id}",
    ]
    rows = [
        [
            timestamp_text(entry.at),
            entry.kind.value,
            entry.title,
            entry.result or "-",
            shorten(entry.detail, _DETAIL_WIDTH),
        ]
        for entry in timeline.entries
    ]
    return "\n".join(header) + "\n\n" + render_table(["TIME", "KIND", "EVENT", "RESULT", "DETAIL"], rows)


@click.command("history")
@_database_url_option
@click.option("-n", "--namespace", default=None, help="Only Runs in this namespace.")
@click.option(
    "--state",
    default=None,
    metavar="STATE",
    callback=_one_of(RunState),
    help=f"Only Runs in this state: {', '.join(state.value for state in RunState)} (any case).",
)
@click.option("--incident", default=None, metavar="NAME|UID", help="Only Runs remediating this Incident.")
@click.option(
    "--outcome",
    default=None,
    metavar="OUTCOME",
    callback=_one_of(RunOutcome),
    help=f"Only finished Runs that ended this way: {', '.join(outcome.value for outcome in RunOutcome)}.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_PAGE_SIZE),
    default=DEFAULT_PAGE_SIZE,
    show_default=True,
    help="Runs per page.",
)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, help="Runs to skip.")
@_output_option
def history_command(
    database_url: str | None,
    namespace: str | None,
    state: str | None,
    incident: str | None,
    outcome: str | None,
    limit: int,
    offset: int,
    output: str,
) -> None:
    """List recorded Runs, newest first, with filters and pagination."""
    with open_history_store(database_url) as store:
        page = store.list_runs(
            namespace=namespace, state=state, incident=incident, outcome=outcome, limit=limit, offset=offset
        )
    if output == "json":
        _echo_json(page.to_json())
    else:
        click.echo(_render_page(page))


@click.command("timeline")
@click.argument("run")
@_database_url_option
@click.option(
    "-n", "--namespace", default=None, help="Namespace of the Run (needed when the name is ambiguous)."
)
@_output_option
def timeline_command(run: str, database_url: str | None, namespace: str | None, output: str) -> None:
    """Print what happened to RUN (a name or a uid), oldest first.

    Creation, start, journal steps, approvals, notifications and completion.
    """
    with open_history_store(database_url) as store:
        timeline = store.timeline(run, namespace)
    if timeline is None:
        where = f" in namespace {namespace}" if namespace else ""
        raise click.ClickException(f"no run {run!r}{where} in the history database")
    if output == "json":
        _echo_json(timeline.to_json())
    else:
        click.echo(_render_timeline(timeline))


@click.group("db")
def db_group() -> None:
    """Manage the history database."""


@db_group.command("upgrade")
@_database_url_option
@click.option("--revision", default="head", show_default=True, help="Alembic revision to migrate to.")
def db_upgrade_command(database_url: str | None, revision: str) -> None:
    """Create or migrate the history database schema (harmless when already up to date)."""
    from flywheel.stores.history.migrate import upgrade

    url = _database_url(database_url)
    try:
        reached = upgrade(url, revision)
    except (DatabaseUnavailableError, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"history database {describe_database_url(url)} is at revision {reached or 'base'}")


__all__ = [
    "db_group",
    "duration_text",
    "history_command",
    "open_history_store",
    "render_table",
    "shorten",
    "timeline_command",
    "timestamp_text",
]
