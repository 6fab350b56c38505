"""The reviewer's commands, `history`, `timeline` and `db upgrade`, on a real SQLite file.

Scenarios:
- `db upgrade` creates the schema in a new file and is harmless when run again;
- `history`: a table with the columns a reviewer reads and a pagination footer; filters by
  namespace, state, incident and outcome; JSON output; invalid filters refused by click;
- `timeline`: run header and entries oldest first, JSON output, lookup by uid, a clear error
  for an unknown Run and for a name found in several namespaces;
- a missing SQLite file and an unreachable PostgreSQL server give one-line errors, not tracebacks.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from flywheel.api.common import ObjectRef
from flywheel.api.enums import ApprovalDecision, ApprovalPhase, RunState
from flywheel.cli_history import db_group, history_command, timeline_command
from flywheel.stores.history import (
    NOTIFICATION_KIND,
    AuditEvent,
    HistoryStore,
    create_history_engine,
    head_revision,
    upgrade,
)
from tests.harness.history_bodies import approval_body, new_uid, run_body, scale_action, steps

pytestmark = pytest.mark.integration

BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
RUN_UID = "7d4f5a8e-1111-4222-8333-944455556666"


@pytest.fixture()
def database_url(tmp_path: Path) -> str:
    """A history file with six Runs (r1 oldest) and a full timeline for r1."""
    url = f"sqlite:///{tmp_path / 'flywheel.db'}"
    upgrade(url)
    store = HistoryStore(create_history_engine(url))
    try:
        store.upsert_run(
            run_body(
                uid=RUN_UID,
                name="r1",
                namespace="shop",
                created_at=BASE,
                incident_name="checkout-oom",
                state=RunState.SUCCEEDED,
                attempt=1,
                started_at=BASE + timedelta(seconds=30),
                completed_at=BASE + timedelta(seconds=95),
                approval=ObjectRef(name="r1-approval", uid=new_uid()),
                journal=[
                    *steps(BASE, ("admit", "Succeeded", "waiting for approval")),
                    *[
                        step.model_copy(update={"seq": seq})
                        for seq, step in enumerate(
                            steps(
                                BASE + timedelta(seconds=28),
                                ("approve by bob", "Succeeded", None),
                                ("execute", "Succeeded", "rollout restart of deployment/web"),
                                ("verify", "Succeeded", "3/3 replicas available"),
                            ),
                            start=2,
                        )
                    ],
                ],
            )
        )
        store.upsert_approval(
            approval_body(
                name="r1-approval",
                namespace="shop",
                run_name="r1",
                run_uid=RUN_UID,
                created_at=BASE + timedelta(seconds=2),
                decision=ApprovalDecision.APPROVE,
                reason="matches the runbook",
                phase=ApprovalPhase.APPROVED,
                decided_by="bob",
                decided_at=BASE + timedelta(seconds=29),
            )
        )
        store.add_audit_event(
            AuditEvent(
                event_id=f"{RUN_UID}:notification:finished",
                kind=NOTIFICATION_KIND,
                occurred_at=BASE + timedelta(seconds=96),
                summary="run finished (webhook)",
                outcome="Delivered",
                run_uid=RUN_UID,
            )
        )
        others = [
            ("r2", "shop", "checkout-oom", RunState.FAILED, "E-VERIFY-TIMEOUT"),
            ("r3", "shop", "cart-latency", RunState.CANCELLED, "E-APPR-REJECTED"),
            ("r4", "shop", "cart-latency", RunState.RUNNING, None),
            ("r5", "payments", "ledger-5xx", RunState.SUCCEEDED, None),
            ("r1", "payments", "ledger-5xx", RunState.TIMED_OUT, "E-APPR-EXPIRED"),
        ]
        for minute, (name, namespace, incident, state, error_code) in enumerate(others, start=1):
            created = BASE + timedelta(minutes=minute)
            store.upsert_run(
                run_body(
                    name=name,
                    namespace=namespace,
                    created_at=created,
                    incident_name=incident,
                    state=state,
                    attempt=1,
                    started_at=created,
                    completed_at=None
                    if state is RunState.RUNNING
                    else created + timedelta(minutes=2, seconds=5),
                    error_code=error_code,
                    action=scale_action(replicas=3) if name == "r2" else None,
                )
            )
    finally:
        store.close()
    return url


def invoke(command: click.Command, *args: str) -> Result:
    return CliRunner().invoke(command, list(args), catch_exceptions=False)


def table_rows(output: str) -> list[list[str]]:
    """The rows of a table printed by the CLI, split on its column gaps (headers excluded)."""
    lines = [line for line in output.splitlines() if line.strip()]
    header_index = next(index for index, line in enumerate(lines) if line.startswith(("NAMESPACE", "TIME")))
    rows = []
    for line in lines[header_index + 1 :]:
        if line.startswith("runs "):
            break
        rows.append([cell.strip() for cell in line.split("   ") if cell.strip()])
    return rows


# --------------------------------------------------------------------------- db upgrade


def test_db_upgrade_creates_the_schema_and_is_harmless_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    for _ in range(2):
        result = invoke(db_group, "upgrade", "--database-url", url)
        assert result.exit_code == 0, result.output
        assert f"history database {url} is at revision {head_revision()}" in result.output
    assert invoke(history_command, "--database-url", url).output.strip() == "no runs match"


# --------------------------------------------------------------------------- history


def test_history_prints_a_table_newest_first_with_a_pagination_footer(database_url: str) -> None:
    result = invoke(history_command, "--database-url", database_url, "--limit", "4")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "NAMESPACE",
        "NAME",
        "STATE",
        "ACTION",
        "INCIDENT",
        "ATTEMPT",
        "CREATED",
        "DURATION",
        "ERROR",
    ]
    assert [row[:3] for row in table_rows(result.output)] == [
        ["payments", "r1", "TimedOut"],
        ["payments", "r5", "Succeeded"],
        ["shop", "r4", "Running"],
        ["shop", "r3", "Cancelled"],
    ]
    assert table_rows(result.output)[0] == [
        "payments",
        "r1",
        "TimedOut",
        "RolloutRestart Deployment/web",
        "ledger-5xx",
        "1",
        "2025-03-01 12:05:00Z",
        "2m05s",
        "E-APPR-EXPIRED",
    ]
    assert table_rows(result.output)[2][7] == "-"  # still running: no duration yet
    assert lines[-1] == "runs 1-4 of 6 (next page: --offset 4)"

    second = invoke(history_command, "--database-url", database_url, "--limit", "4", "--offset", "4")
    assert [row[1] for row in table_rows(second.output)] == ["r2", "r1"]
    assert second.output.splitlines()[-1] == "runs 5-6 of 6"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["-n", "shop"], ["r4", "r3", "r2", "r1"]),
        (["--namespace", "payments"], ["r1", "r5"]),
        (["--state", "Succeeded"], ["r5", "r1"]),
        (["--state", "succeeded", "-n", "shop"], ["r1"]),
        (["--incident", "cart-latency"], ["r4", "r3"]),
        (["--outcome", "failed"], ["r2"]),
        (["--outcome", "timedout"], ["r1"]),
        (["--outcome", "cancelled", "-n", "payments"], []),
    ],
)
def test_history_filters(database_url: str, filters: list[str], expected: list[str]) -> None:
    result = invoke(history_command, "--database-url", database_url, "-o", "json", *filters)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [item["name"] for item in document["items"]] == expected
    assert document["total"] == len(expected)


def test_history_json_carries_the_details(database_url: str) -> None:
    result = invoke(history_command, "--database-url", database_url, "-o", "json", "--outcome", "failed")
    document = json.loads(result.stdout)
    assert document["limit"] == 20 and document["offset"] == 0 and document["nextOffset"] is None
    run = document["items"][0]
    assert run["action"] == {"type": "Scale", "target": {"kind": "Deployment", "name": "web"}}
    assert (run["state"], run["outcome"], run["errorCode"]) == ("Failed", "failed", "E-VERIFY-TIMEOUT")
    assert run["incident"]["name"] == "checkout-oom"
    assert run["createdAt"] == "2025-03-01T12:01:00Z"
    assert run["durationSeconds"] == 125.0


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--outcome", "exploded"], "'exploded' is not one of"),
        (["--state", "Sleeping"], "'Sleeping' is not one of"),
        (["--limit", "0"], "0 is not in the range"),
        (["--offset", "-1"], "-1 is not in the range"),
    ],
)
def test_history_refuses_invalid_filters(database_url: str, arguments: list[str], complaint: str) -> None:
    result = invoke(history_command, "--database-url", database_url, *arguments)
    assert result.exit_code == 2
    assert complaint in result.output


def test_history_without_a_database_file_says_where_it_looked(tmp_path: Path) -> None:
    missing = tmp_path / "absent.db"
    result = invoke(history_command, "--database-url", f"sqlite:///{missing}")
    assert result.exit_code == 1
    assert f"no history database at {missing}" in result.output
    assert not missing.exists()


def test_history_with_an_unreachable_server_fails_in_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    url = f"postgresql://reviewer:s3cret@127.0.0.1:{closed_port}/flywheel"
    result = invoke(history_command, "--database-url", url)
    assert result.exit_code == 1
    assert result.output.startswith("Error: history database postgresql+psycopg://reviewer:***@127.0.0.1")
    assert "s3cret" not in result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- timeline


def test_timeline_prints_the_run_and_its_entries_oldest_first(database_url: str) -> None:
    result = invoke(timeline_command, "r1", "-n", "shop", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"Run:       r1  (namespace shop, uid {RUN_UID})"
    assert lines[1] == "Incident:  checkout-oom"
    assert lines[3] == "State:     Succeeded  (attempt 1)"
    assert [row[:4] for row in table_rows(result.output)] == [
        ["2025-03-01 12:00:00Z", "created", "run created", "-"],
        ["2025-03-01 12:00:01Z", "step", "step 1: admit", "Succeeded"],
        ["2025-03-01 12:00:02Z", "approval", "approval requested: r1-approval", "Pending"],
        # Same instant: the decision is shown before the journal step that records it.
        ["2025-03-01 12:00:29Z", "approval", "approval approved: r1-approval", "Approved"],
        ["2025-03-01 12:00:29Z", "step", "step 2: approve by bob", "Succeeded"],
        ["2025-03-01 12:00:30Z", "started", "run started", "-"],
        ["2025-03-01 12:00:30Z", "step", "step 3: execute", "Succeeded"],
        ["2025-03-01 12:00:31Z", "step", "step 4: verify", "Succeeded"],
        ["2025-03-01 12:01:35Z", "completed", "run completed", "Succeeded"],
        ["2025-03-01 12:01:36Z", "notification", "run finished (webhook)", "Delivered"],
    ]
    assert "by bob; matches the runbook" in result.output


def test_timeline_json_and_lookup_by_uid(database_url: str) -> None:
    result = invoke(timeline_command, RUN_UID, "--database-url", database_url, "-o", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["run"]["uid"] == RUN_UID
    kinds = [entry["kind"] for entry in document["timeline"]]
    assert kinds[0] == "created" and kinds[-1] == "notification"
    assert {"started", "step", "approval", "completed"} <= set(kinds)
    times = [entry["at"] for entry in document["timeline"]]
    assert times == sorted(times)


def test_timeline_of_an_unknown_run(database_url: str) -> None:
    result = invoke(timeline_command, "r9", "-n", "shop", "--database-url", database_url)
    assert result.exit_code == 1
    assert "no run 'r9' in namespace shop in the history database" in result.output


def test_timeline_asks_for_a_namespace_when_the_name_is_ambiguous(database_url: str) -> None:
    result = invoke(timeline_command, "r1", "--database-url", database_url)
    assert result.exit_code == 2
    assert "exists in namespaces payments, shop" in result.output
