"""The history database on a real SQLite file and a real PostgreSQL server.

Every scenario runs on both backends unless it is about a PostgreSQL outage.

Scenarios:
- migrations from an empty database create every table and index and match the models;
  upgrading again is harmless;
- idempotent projections: the same Run body twice is one row with its steps once; a later body
  adds only its new steps, keeps steps the bounded status journal dropped, and its row wins;
  the same holds inside one batch (one transaction, one executemany per statement), which stores
  all of its items or none;
  Incidents, Approvals, audit events, repair executions and knowledge entries likewise;
- bodies that can never be stored are refused with InvalidInputError;
- secrets and email addresses are redacted before storage (checked in the raw rows);
- `history` filters (namespace, state, incident by name or uid, outcome) and pagination;
- the timeline: lookup by name or uid, ambiguity across namespaces, entries sorted by time with
  created/started/steps/approvals/notifications/completed;
- the HistoryWriter: stores in the background, coalesces by key, never raises on submit,
  copies what it is given, accepts submissions from other threads;
- outage (PostgreSQL for real: connections refused with ALLOW_CONNECTIONS false and existing
  backends terminated): items stay pending and are stored once the database is back, including
  a schema that could not be created while the operator started.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, Integer, cast, func, inspect, select

from flywheel.api.common import ObjectRef
from flywheel.api.enums import ActionType, ApprovalDecision, ApprovalPhase, IncidentPhase, RunState
from flywheel.api.run import RunStep
from flywheel.domain.redaction import REDACTED, REDACTED_EMAIL
from flywheel.errors import DatabaseUnavailableError, InvalidInputError
from flywheel.stores.history import (
    NOTIFICATION_KIND,
    AuditEvent,
    HistoryKind,
    HistoryStore,
    HistoryWriter,
    KnowledgeEntry,
    RepairExecution,
    RunOutcome,
    TimelineKind,
    build_history_writer,
    create_history_engine,
    current_revision,
    head_revision,
    upgrade,
)
from flywheel.stores.history.tables import (
    ALL_TABLES,
    AuditEventRow,
    HistoryBase,
    IncidentRow,
    KnowledgeEntryRow,
    RepairExecutionRow,
    RunRow,
    RunStepRow,
)
from tests.harness.history_bodies import (
    approval_body,
    incident_body,
    new_uid,
    restart_action,
    run_body,
    scale_action,
    steps,
)
from tests.harness.postgres import PostgresSwitch

pytestmark = pytest.mark.integration

BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NAMESPACE = "shop"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture()
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = create_history_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture()
def store(engine: Engine) -> HistoryStore:
    return HistoryStore(engine)


def count(engine: Engine, model: type[HistoryBase]) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(model)).scalar_one())


def raw_dump(engine: Engine) -> str:
    """Every stored value of every table as text: what an attacker with the database would read."""
    with engine.connect() as connection:
        return "\n".join(
            repr(tuple(row))
            for table in HistoryBase.metadata.sorted_tables
            for row in connection.execute(select(table))
        )


# --------------------------------------------------------------------------- migrations


def test_upgrade_from_empty_creates_every_table_and_index_matching_the_models(database_url: str) -> None:
    assert current_revision(database_url) is None
    assert upgrade(database_url) == head_revision()
    engine = create_history_engine(database_url)
    try:
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) == {*ALL_TABLES, "alembic_version"}
        assert set(ALL_TABLES) == {
            "runs",
            "run_steps",
            "approvals",
            "audit_events",
            "repair_executions",
            "incidents",
            "knowledge_entries",
            "notification_deliveries",
        }
        repair_indexes = {
            index["name"]: index["column_names"] for index in inspector.get_indexes("repair_executions")
        }
        assert repair_indexes["ix_repair_executions_anomaly_key_action_succeeded"] == [
            "anomaly_key",
            "action",
            "succeeded",
        ]
        run_indexes = {index["name"]: index["column_names"] for index in inspector.get_indexes("runs")}
        assert run_indexes["ix_runs_namespace_state_created_at"] == ["namespace", "state", "created_at"]
        assert run_indexes["ix_runs_incident_uid"] == ["incident_uid"]
        assert run_indexes["ix_runs_created_at"] == ["created_at"]
        with engine.connect() as connection:
            differences = compare_metadata(
                MigrationContext.configure(connection, opts={"compare_type": True}), HistoryBase.metadata
            )
        assert differences == []
    finally:
        engine.dispose()


def test_upgrading_twice_is_harmless_and_keeps_the_data(database_url: str) -> None:
    upgrade(database_url)
    engine = create_history_engine(database_url)
    try:
        HistoryStore(engine).upsert_run(run_body(name="r1", namespace=NAMESPACE, created_at=BASE))
        assert upgrade(database_url) == head_revision()
        assert count(engine, RunRow) == 1
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- idempotent projections


def test_the_same_run_body_twice_is_one_row_with_its_steps_once(store: HistoryStore, engine: Engine) -> None:
    body = run_body(
        name="r1",
        namespace=NAMESPACE,
        created_at=BASE,
        state=RunState.RUNNING,
        attempt=1,
        started_at=BASE + timedelta(seconds=1),
        journal=steps(BASE, ("admit", "Succeeded", None), ("execute", "Succeeded", "rollout restart of web")),
    )
    store.upsert_run(body)
    store.upsert_run(body)
    assert count(engine, RunRow) == 1
    assert count(engine, RunStepRow) == 2


def test_a_later_body_adds_only_its_new_steps_and_its_row_wins(store: HistoryStore, engine: Engine) -> None:
    uid = new_uid()
    first = steps(BASE, ("admit", "Succeeded", None), ("execute", "Succeeded", "first wording"))
    store.upsert_run(
        run_body(
            uid=uid, name="r1", namespace=NAMESPACE, created_at=BASE, state=RunState.RUNNING, journal=first
        )
    )
    # The journal only ever appends; a step re-sent with other text must not rewrite the record.
    rewritten = [first[0], first[1].model_copy(update={"message": "other wording"})]
    later = [*rewritten, RunStep(seq=3, name="verify", result="Succeeded", at=BASE + timedelta(seconds=3))]
    store.upsert_run(
        run_body(
            uid=uid,
            name="r1",
            namespace=NAMESPACE,
            created_at=BASE,
            state=RunState.SUCCEEDED,
            attempt=1,
            completed_at=BASE + timedelta(seconds=5),
            journal=later,
            resource_version=2,
        )
    )
    with engine.connect() as connection:
        run = connection.execute(select(RunRow.state, RunRow.resource_version, RunRow.completed_at)).one()
        journal = connection.execute(
            select(RunStepRow.seq, RunStepRow.name, RunStepRow.message).order_by(RunStepRow.seq)
        ).all()
    assert run == (RunState.SUCCEEDED.value, "2", BASE + timedelta(seconds=5))
    assert [tuple(step) for step in journal] == [
        (1, "admit", None),
        (2, "execute", "first wording"),
        (3, "verify", None),
    ]


def test_a_batch_stores_what_writing_the_items_in_turn_would_and_all_or_nothing(
    store: HistoryStore, engine: Engine
) -> None:
    uid = new_uid()
    first = steps(BASE, ("admit", "Succeeded", None), ("execute", "Succeeded", "first wording"))
    later = [first[0], first[1].model_copy(update={"message": "other wording"}),
             RunStep(seq=3, name="verify", result="Succeeded", at=BASE + timedelta(seconds=3))]
    with store.batch():
        store.upsert_run(run_body(uid=uid, name="r1", namespace=NAMESPACE, created_at=BASE, state=RunState.RUNNING,
                                  journal=first))
        store.upsert_run(run_body(uid=uid, name="r1", namespace=NAMESPACE, created_at=BASE,
                                  state=RunState.SUCCEEDED, journal=later, resource_version=2))
        store.upsert_run(run_body(name="r2", namespace=NAMESPACE, created_at=BASE, state=RunState.PENDING))
        store.upsert_incident(incident_body(name="i1", namespace=NAMESPACE, created_at=BASE))
        assert count(engine, RunRow) == 0, "nothing is written before the batch ends"
    with engine.connect() as connection:
        states = dict(connection.execute(select(RunRow.name, RunRow.state)).all())
        journal = connection.execute(
            select(RunStepRow.seq, RunStepRow.message).where(RunStepRow.run_uid == uid).order_by(RunStepRow.seq)
        ).all()
    assert states == {"r1": RunState.SUCCEEDED.value, "r2": RunState.PENDING.value}
    assert [tuple(step) for step in journal] == [(1, None), (2, "first wording"), (3, None)]
    assert count(engine, IncidentRow) == 1

    refused = run_body(name="r3", namespace=NAMESPACE, created_at=BASE)
    refused["spec"]["action"]["type"] = "Delete"
    with pytest.raises(InvalidInputError), store.batch():
        store.upsert_run(run_body(name="r4", namespace=NAMESPACE, created_at=BASE))
        store.upsert_run(refused)
    assert count(engine, RunRow) == 2, "a refused item leaves nothing of its batch behind"


def test_steps_dropped_from_the_bounded_status_journal_stay_in_history(
    store: HistoryStore, engine: Engine
) -> None:
    uid = new_uid()
    entries = [(f"probe-{index}", "Succeeded", None) for index in range(1, 61)]
    all_steps = steps(BASE, *entries)
    store.upsert_run(
        run_body(uid=uid, name="r1", namespace=NAMESPACE, created_at=BASE, journal=all_steps[:50])
    )
    # The status keeps the latest 50: steps 11..60.
    store.upsert_run(
        run_body(uid=uid, name="r1", namespace=NAMESPACE, created_at=BASE, journal=all_steps[10:])
    )
    with engine.connect() as connection:
        seqs = connection.execute(select(RunStepRow.seq).order_by(RunStepRow.seq)).scalars().all()
    assert seqs == list(range(1, 61))


def test_incident_and_approval_upserts_keep_one_row_per_uid(store: HistoryStore, engine: Engine) -> None:
    incident_uid = new_uid()
    store.upsert_incident(
        incident_body(uid=incident_uid, name="checkout-oom", namespace=NAMESPACE, created_at=BASE)
    )
    store.upsert_incident(
        incident_body(
            uid=incident_uid,
            name="checkout-oom",
            namespace=NAMESPACE,
            created_at=BASE,
            phase=IncidentPhase.RESOLVED,
        )
    )
    approval = approval_body(
        name="a1", namespace=NAMESPACE, run_name="r1", run_uid=new_uid(), created_at=BASE
    )
    store.upsert_approval(approval)
    store.upsert_approval(approval)
    with engine.connect() as connection:
        incident = connection.execute(select(IncidentRow.phase, IncidentRow.anomaly_key)).one()
    assert count(engine, IncidentRow) == 1
    assert incident.phase == IncidentPhase.RESOLVED.value
    # Computed from the signature when the status has none yet: same key as the Redis counters.
    assert incident.anomaly_key is not None and len(incident.anomaly_key) == 16
    assert store.timeline("nothing-here") is None


def test_records_are_stored_once_per_producer_key(store: HistoryStore, engine: Engine) -> None:
    run_uid = new_uid()
    execution = RepairExecution(
        run_uid=run_uid,
        attempt=1,
        namespace=NAMESPACE,
        incident_uid="inc-1",
        anomaly_key="0123456789abcdef",
        action=ActionType.ROLLOUT_RESTART,
        target_kind="Deployment",
        target_name="web",
        succeeded=False,
        started_at=BASE,
        finished_at=BASE + timedelta(seconds=30),
        error_code="E-VERIFY-TIMEOUT",
    )
    store.add_repair_execution(execution)
    store.add_repair_execution(execution)
    store.add_repair_execution(replace(execution, attempt=2, succeeded=True, error_code=None))
    event = AuditEvent(
        event_id=f"{run_uid}:notification:finished",
        kind=NOTIFICATION_KIND,
        occurred_at=BASE,
        summary="run finished",
        run_uid=run_uid,
    )
    store.add_audit_event(event)
    store.add_audit_event(event)
    entry = KnowledgeEntry(
        incident_uid="inc-1",
        namespace=NAMESPACE,
        incident_name="checkout-oom",
        outcome="succeeded",
        resolved_at=BASE,
        action=ActionType.ROLLOUT_RESTART,
    )
    store.add_knowledge_entry(entry)
    store.add_knowledge_entry(replace(entry, root_cause="memory leak in v2.3"))
    assert count(engine, RepairExecutionRow) == 2
    assert count(engine, AuditEventRow) == 1
    assert count(engine, KnowledgeEntryRow) == 1
    with engine.connect() as connection:
        assert connection.execute(select(KnowledgeEntryRow.root_cause)).scalar_one() == "memory leak in v2.3"
        rates = connection.execute(
            select(
                RepairExecutionRow.action, func.count(), func.sum(cast(RepairExecutionRow.succeeded, Integer))
            )
            .where(RepairExecutionRow.anomaly_key == "0123456789abcdef")
            .group_by(RepairExecutionRow.action)
        ).all()
    assert [tuple(rate) for rate in rates] == [("RolloutRestart", 2, 1)]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda body: body["metadata"].pop("uid"), "Run.metadata.uid"),
        (
            lambda body: body["metadata"].update(creationTimestamp="yesterday"),
            "Run.metadata.creationTimestamp",
        ),
        (lambda body: body["spec"]["action"].update(type="Delete"), "Run.spec.action.type"),
    ],
)
def test_bodies_that_can_never_be_stored_are_refused(store: HistoryStore, mutate: Any, field: str) -> None:
    body = run_body(name="r1", namespace=NAMESPACE, created_at=BASE)
    mutate(body)
    with pytest.raises(InvalidInputError) as caught:
        store.upsert_run(body)
    assert caught.value.field == field


def test_timestamps_come_back_as_aware_utc(store: HistoryStore) -> None:
    tokyo = timezone(timedelta(hours=9))
    store.upsert_run(
        run_body(
            name="r1",
            namespace=NAMESPACE,
            created_at=BASE.astimezone(tokyo),
            started_at=BASE.astimezone(tokyo),
        )
    )
    run = store.list_runs().items[0]
    assert run.created_at == BASE and run.created_at.tzinfo == UTC
    assert run.started_at == BASE


# --------------------------------------------------------------------------- redaction


def test_secrets_and_emails_are_redacted_before_storage(store: HistoryStore, engine: Engine) -> None:
    password, token, email = "hunter2-Zq9", "tok-8f7e6d5c4b3a", "alice.smith@corp.example.com"
    run_uid = new_uid()
    store.upsert_run(
        run_body(
            uid=run_uid,
            name="r1",
            namespace=NAMESPACE,
            created_at=BASE,
            state=RunState.FAILED,
            error_code="E-ACTION-FORBIDDEN",
            error_detail=f"PATCH failed using postgresql://svc:{password}@db/x for {email}",
            journal=steps(BASE, ("notify", "Failed", f"webhook refused Authorization: Bearer {token}")),
        )
    )
    store.upsert_approval(
        approval_body(
            name="a1",
            namespace=NAMESPACE,
            run_name="r1",
            run_uid=run_uid,
            created_at=BASE,
            decision=ApprovalDecision.APPROVE,
            reason=f"ok, ping {email} if it fails",
            phase=ApprovalPhase.APPROVED,
            decided_by="alice",
            decided_at=BASE,
        )
    )
    store.upsert_incident(
        incident_body(
            name="checkout-oom", namespace=NAMESPACE, created_at=BASE, summary=f"token={token} leaked"
        )
    )
    store.add_audit_event(
        AuditEvent(
            event_id="evt-1",
            kind="approval.decided",
            occurred_at=BASE,
            summary=f"approved by {email}",
            actor="alice",
            payload={
                "approver": {"email": email, "groups": ["sre"]},
                "token": {"jti": "abc", "raw": token},
                "webhook": {"headers": {"Authorization": f"Bearer {token}"}, "attempts": 2},
                "note": f"password: {password}",
            },
        )
    )
    store.add_knowledge_entry(
        KnowledgeEntry(
            incident_uid="inc-1",
            namespace=NAMESPACE,
            incident_name="checkout-oom",
            outcome="succeeded",
            resolved_at=BASE,
            root_cause=f"secret={password} rotated",
            note=f"reported by {email}",
        )
    )
    stored = raw_dump(engine)
    for secret in (password, token, email):
        assert secret not in stored
    assert REDACTED in stored and REDACTED_EMAIL in stored
    with engine.connect() as connection:
        payload = connection.execute(select(AuditEventRow.payload)).scalar_one()
    # The payload keeps its shape, so a reviewer still sees what was there.
    assert payload == {
        "approver": {"email": REDACTED_EMAIL, "groups": ["sre"]},
        "token": REDACTED,
        "webhook": {"headers": {"Authorization": REDACTED}, "attempts": 2},
        "note": f"password: {REDACTED}",
    }


# --------------------------------------------------------------------------- history queries


@pytest.fixture()
def seeded(store: HistoryStore) -> HistoryStore:
    """Seven Runs over two namespaces and three Incidents, one minute apart (r1 oldest)."""
    plan = [
        ("r1", NAMESPACE, "inc-a", RunState.SUCCEEDED, None),
        ("r2", NAMESPACE, "inc-a", RunState.FAILED, "E-VERIFY-TIMEOUT"),
        ("r3", NAMESPACE, "inc-b", RunState.CANCELLED, "E-APPR-REJECTED"),
        ("r4", NAMESPACE, "inc-b", RunState.TIMED_OUT, "E-APPR-EXPIRED"),
        ("r5", NAMESPACE, "inc-c", RunState.RUNNING, None),
        ("r6", "payments", "inc-a", RunState.SUCCEEDED, None),
        ("r7", "payments", "inc-d", RunState.WAITING_APPROVAL, None),
    ]
    for minute, (name, namespace, incident, state, error_code) in enumerate(plan):
        created = BASE + timedelta(minutes=minute)
        finished = state in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT)
        store.upsert_run(
            run_body(
                name=name,
                namespace=namespace,
                created_at=created,
                incident_name=incident,
                incident_uid=f"uid-{namespace}-{incident}",
                state=state,
                attempt=1,
                started_at=created + timedelta(seconds=5),
                completed_at=created + timedelta(seconds=50) if finished else None,
                error_code=error_code,
                action=scale_action() if name == "r2" else restart_action(),
            )
        )
    return store


def names(store: HistoryStore, **filters: Any) -> list[str]:
    return [run.name for run in store.list_runs(**filters).items]


def test_history_lists_newest_first_and_filters(seeded: HistoryStore) -> None:
    assert names(seeded) == ["r7", "r6", "r5", "r4", "r3", "r2", "r1"]
    assert names(seeded, namespace=NAMESPACE) == ["r5", "r4", "r3", "r2", "r1"]
    assert names(seeded, state=RunState.SUCCEEDED) == ["r6", "r1"]
    assert names(seeded, namespace=NAMESPACE, state="succeeded") == ["r1"]
    assert names(seeded, incident="inc-a") == ["r6", "r2", "r1"]
    assert names(seeded, incident=f"uid-{NAMESPACE}-inc-a") == ["r2", "r1"]
    assert names(seeded, outcome=RunOutcome.FAILED) == ["r2"]
    assert names(seeded, outcome="cancelled") == ["r3"]
    assert names(seeded, outcome="timedout") == ["r4"]
    assert names(seeded, outcome="succeeded", namespace="payments") == ["r6"]
    assert names(seeded, state=RunState.RUNNING, outcome="succeeded") == []


def test_history_summaries_carry_what_a_reviewer_reads(seeded: HistoryStore) -> None:
    r2 = seeded.list_runs(outcome="failed").items[0]
    assert (r2.action_type, r2.target_name, r2.error_code) == ("Scale", "web", "E-VERIFY-TIMEOUT")
    assert r2.outcome is RunOutcome.FAILED
    assert r2.duration == timedelta(seconds=45)
    assert r2.to_json()["action"] == {"type": "Scale", "target": {"kind": "Deployment", "name": "web"}}
    running = seeded.list_runs(state="Running").items[0]
    assert running.outcome is None and running.duration is None


def test_history_pagination_covers_every_run_once(seeded: HistoryStore) -> None:
    pages = [seeded.list_runs(limit=3, offset=offset) for offset in (0, 3, 6, 9)]
    assert [page.total for page in pages] == [7, 7, 7, 7]
    assert [[run.name for run in page.items] for page in pages] == [
        ["r7", "r6", "r5"],
        ["r4", "r3", "r2"],
        ["r1"],
        [],
    ]
    assert [page.next_offset for page in pages] == [3, 6, None, None]
    filtered = seeded.list_runs(namespace=NAMESPACE, limit=2, offset=2)
    assert (filtered.total, [run.name for run in filtered.items]) == (5, ["r3", "r2"])


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"offset": -1}, "offset"),
        ({"state": "Sleeping"}, "state"),
        ({"outcome": "exploded"}, "outcome"),
    ],
)
def test_history_refuses_bad_filters(store: HistoryStore, filters: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        store.list_runs(**filters)
    assert caught.value.field == field


# --------------------------------------------------------------------------- timeline


def test_timeline_is_sorted_by_time_with_every_kind_of_entry(store: HistoryStore) -> None:
    run_uid = new_uid()
    # Projected out of order on purpose: the approval and the notification before the Run.
    store.upsert_approval(
        approval_body(
            name="r1-approval",
            namespace=NAMESPACE,
            run_name="r1",
            run_uid=run_uid,
            created_at=BASE + timedelta(seconds=2),
            decision=ApprovalDecision.APPROVE,
            reason="looks right",
            phase=ApprovalPhase.APPROVED,
            decided_by="bob",
            decided_at=BASE + timedelta(seconds=20),
        )
    )
    store.add_audit_event(
        AuditEvent(
            event_id=f"{run_uid}:notification:approval-requested",
            kind=NOTIFICATION_KIND,
            occurred_at=BASE + timedelta(seconds=3),
            summary="approval requested (slack)",
            outcome="Delivered",
            run_uid=run_uid,
        )
    )
    store.add_audit_event(
        AuditEvent(
            event_id=f"{run_uid}:approval.decided",
            kind="approval.decided",
            occurred_at=BASE + timedelta(seconds=20),
            summary="not a notification: left out of the timeline",
            run_uid=run_uid,
        )
    )
    journal = [
        steps(BASE, ("admit", "Succeeded", None))[0],
        steps(BASE + timedelta(seconds=18), ("approve by bob", "Succeeded", None))[0].model_copy(
            update={"seq": 2}
        ),
        steps(BASE + timedelta(seconds=24), ("execute", "Succeeded", "rollout restart"))[0].model_copy(
            update={"seq": 3, "latency_ms": 850}
        ),
        steps(BASE + timedelta(seconds=39), ("verify", "Succeeded", None))[0].model_copy(update={"seq": 4}),
    ]
    store.upsert_run(
        run_body(
            uid=run_uid,
            name="r1",
            namespace=NAMESPACE,
            created_at=BASE,
            state=RunState.SUCCEEDED,
            attempt=1,
            started_at=BASE + timedelta(seconds=21),
            completed_at=BASE + timedelta(seconds=40),
            journal=journal,
            approval=ObjectRef(name="r1-approval", uid=new_uid()),
        )
    )
    timeline = store.timeline("r1", NAMESPACE)
    assert timeline is not None
    assert [(entry.kind, entry.title, entry.result) for entry in timeline.entries] == [
        (TimelineKind.CREATED, "run created", None),
        (TimelineKind.STEP, "step 1: admit", "Succeeded"),
        (TimelineKind.APPROVAL, "approval requested: r1-approval", "Pending"),
        (TimelineKind.NOTIFICATION, "approval requested (slack)", "Delivered"),
        (TimelineKind.STEP, "step 2: approve by bob", "Succeeded"),
        (TimelineKind.APPROVAL, "approval approved: r1-approval", "Approved"),
        (TimelineKind.STARTED, "run started", None),
        (TimelineKind.STEP, "step 3: execute", "Succeeded"),
        (TimelineKind.STEP, "step 4: verify", "Succeeded"),
        (TimelineKind.COMPLETED, "run completed", "Succeeded"),
    ]
    times = [entry.at for entry in timeline.entries]
    assert times == sorted(times)
    decided = timeline.entries[5]
    assert decided.detail == "by bob; looks right"
    assert timeline.entries[7].detail == "rollout restart; 850 ms"


def test_timeline_lookup_by_uid_name_and_namespace(store: HistoryStore) -> None:
    older, newer, elsewhere = new_uid(), new_uid(), new_uid()
    # A name reused after the first Run was deleted, and the same name in another namespace.
    store.upsert_run(run_body(uid=older, name="r1", namespace=NAMESPACE, created_at=BASE))
    store.upsert_run(
        run_body(uid=newer, name="r1", namespace=NAMESPACE, created_at=BASE + timedelta(hours=1))
    )
    store.upsert_run(run_body(uid=elsewhere, name="r1", namespace="payments", created_at=BASE))

    def found(run: str, namespace: str | None = None) -> str | None:
        timeline = store.timeline(run, namespace)
        return timeline.run.uid if timeline else None

    assert found("r1", NAMESPACE) == newer
    assert found(older) == older
    assert found(older, "payments") is None
    assert found("r1", "payments") == elsewhere
    assert found("r1", "nowhere") is None
    with pytest.raises(InvalidInputError, match="payments, shop"):
        store.timeline("r1")


# --------------------------------------------------------------------------- the writer


def fast_writer(database_url: str, *, max_pending: int = 10_000) -> HistoryWriter:
    """A writer on its own engine that retries within tenths of a second (production: 0.5 s .. 30 s)."""
    return HistoryWriter(
        HistoryStore(create_history_engine(database_url)),
        max_pending=max_pending,
        retry_initial_seconds=0.05,
        retry_max_seconds=0.2,
    )


async def test_writer_stores_in_the_background_and_coalesces(database_url: str, engine: Engine) -> None:
    writer = fast_writer(database_url)
    uid = new_uid()
    journal = steps(
        BASE, ("admit", "Succeeded", None), ("execute", "Succeeded", None), ("verify", "Succeeded", None)
    )
    for version, state in enumerate((RunState.PENDING, RunState.RUNNING, RunState.SUCCEEDED), start=1):
        writer.submit(
            HistoryKind.RUN,
            run_body(
                uid=uid,
                name="r1",
                namespace=NAMESPACE,
                created_at=BASE,
                state=state,
                journal=journal[:version],
                resource_version=version,
            ),
        )
    writer.submit(
        "audit_event", AuditEvent(event_id="e1", kind="run.created", occurred_at=BASE, summary="created")
    )
    await writer.flush(timeout=30)
    await writer.close()
    assert writer.pending_count == 0 and writer.dropped_count == 0
    assert writer.database_available is True
    with engine.connect() as connection:
        assert connection.execute(select(RunRow.state)).scalar_one() == RunState.SUCCEEDED.value
    assert count(engine, RunStepRow) == 3
    assert count(engine, AuditEventRow) == 1


async def test_submit_never_raises_and_drops_what_can_never_be_stored(
    database_url: str, engine: Engine
) -> None:
    writer = fast_writer(database_url)
    writer.submit("run", {"metadata": {}})  # no uid: refused at once
    writer.submit("spaceship", {"metadata": {"uid": "x"}})  # unknown kind
    writer.submit(HistoryKind.AUDIT_EVENT, {"event_id": "not a record"})  # wrong payload type
    body = run_body(name="r1", namespace=NAMESPACE, created_at=BASE)
    body["spec"]["action"]["type"] = "Delete"  # refused by the store, in the worker
    writer.submit(HistoryKind.RUN, body)
    writer.submit(HistoryKind.RUN, run_body(name="r2", namespace=NAMESPACE, created_at=BASE))
    await writer.flush(timeout=30)
    await writer.close()
    assert writer.dropped_count == 4
    assert writer.stored_count == 1
    assert count(engine, RunRow) == 1


async def test_submitted_payloads_are_copied_so_later_changes_do_not_leak(
    database_url: str, engine: Engine
) -> None:
    writer = fast_writer(database_url)
    body = run_body(name="r1", namespace=NAMESPACE, created_at=BASE, state=RunState.PENDING)
    details: dict[str, Any] = {"channel": "webhook", "attempts": 1}
    writer.submit(HistoryKind.RUN, body)
    writer.submit(
        HistoryKind.AUDIT_EVENT,
        AuditEvent(event_id="e1", kind=NOTIFICATION_KIND, occurred_at=BASE, summary="sent", payload=details),
    )
    body["status"]["state"] = RunState.FAILED.value
    details["attempts"] = 2
    await writer.flush(timeout=30)
    await writer.close()
    with engine.connect() as connection:
        assert connection.execute(select(RunRow.state)).scalar_one() == RunState.PENDING.value
        assert connection.execute(select(AuditEventRow.payload)).scalar_one() == {
            "channel": "webhook",
            "attempts": 1,
        }


async def test_submissions_from_other_threads_are_stored(database_url: str, engine: Engine) -> None:
    writer = fast_writer(database_url)
    writer.start()

    def submit_from_thread(index: int) -> None:
        writer.submit(HistoryKind.RUN, run_body(name=f"r{index}", namespace=NAMESPACE, created_at=BASE))

    threads = [threading.Thread(target=submit_from_thread, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        await asyncio.to_thread(thread.join)
    await writer.flush(timeout=30)
    await writer.close()
    assert count(engine, RunRow) == 8


# --------------------------------------------------------------------------- PostgreSQL outage



@pytest.fixture()
def switch(postgres_url: str) -> Iterator[PostgresSwitch]:
    switch = PostgresSwitch(postgres_url)
    yield switch
    switch.close()


async def wait_until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_outage_keeps_items_pending_and_stores_them_when_the_database_is_back(
    postgres_url: str, switch: PostgresSwitch
) -> None:
    upgrade(postgres_url)
    writer = fast_writer(postgres_url)
    uid = new_uid()
    journal = steps(
        BASE, ("admit", "Succeeded", None), ("execute", "Succeeded", None), ("verify", "Succeeded", None)
    )
    writer.submit(
        HistoryKind.RUN,
        run_body(
            uid=uid,
            name="r1",
            namespace=NAMESPACE,
            created_at=BASE,
            state=RunState.RUNNING,
            journal=journal[:1],
        ),
    )
    await writer.flush(timeout=30)

    switch.refuse_connections()
    reader = HistoryStore(create_history_engine(postgres_url))
    with pytest.raises(DatabaseUnavailableError, match="not currently accepting connections"):
        reader.list_runs()
    reader.close()
    # Three newer versions of the same Run coalesce into one pending item; the event is another.
    for version in (2, 3):
        writer.submit(
            HistoryKind.RUN,
            run_body(
                uid=uid,
                name="r1",
                namespace=NAMESPACE,
                created_at=BASE,
                state=RunState.VERIFYING,
                journal=journal[:version],
            ),
        )
    writer.submit(
        HistoryKind.RUN,
        run_body(
            uid=uid,
            name="r1",
            namespace=NAMESPACE,
            created_at=BASE,
            state=RunState.SUCCEEDED,
            journal=journal,
            completed_at=BASE + timedelta(seconds=4),
        ),
    )
    writer.submit(
        HistoryKind.AUDIT_EVENT,
        AuditEvent(
            event_id=f"{uid}:finished",
            kind=NOTIFICATION_KIND,
            occurred_at=BASE,
            summary="run finished",
            run_uid=uid,
        ),
    )
    await wait_until(lambda: writer.database_available is False)
    await asyncio.sleep(0.5)  # several retries with the fast backoff, all refused
    assert writer.pending_count == 2
    with pytest.raises(TimeoutError):
        await writer.flush(timeout=0.3)

    switch.accept_connections()
    await writer.flush(timeout=30)
    assert writer.pending_count == 0 and writer.database_available is True
    await writer.close()

    engine = create_history_engine(postgres_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(select(RunRow.state)).scalar_one() == RunState.SUCCEEDED.value
            assert connection.execute(select(RunStepRow.seq).order_by(RunStepRow.seq)).scalars().all() == [
                1,
                2,
                3,
            ]
        assert count(engine, AuditEventRow) == 1
    finally:
        engine.dispose()


async def test_an_operator_started_during_an_outage_creates_the_schema_once_the_database_is_back(
    postgres_url: str, switch: PostgresSwitch
) -> None:
    switch.refuse_connections()
    # The operator's own wiring: migrate before the first write, retried like a write.
    writer = build_history_writer(postgres_url, retry_initial_seconds=0.05, retry_max_seconds=0.2)
    writer.submit(
        HistoryKind.INCIDENT, incident_body(name="checkout-oom", namespace=NAMESPACE, created_at=BASE)
    )
    writer.submit(HistoryKind.RUN, run_body(name="r1", namespace=NAMESPACE, created_at=BASE))
    await wait_until(lambda: writer.database_available is False)
    assert writer.pending_count == 2

    switch.accept_connections()
    await writer.flush(timeout=30)
    await writer.close()
    assert current_revision(postgres_url) == head_revision()
    engine = create_history_engine(postgres_url)
    try:
        assert (count(engine, IncidentRow), count(engine, RunRow)) == (1, 1)
    finally:
        engine.dispose()


async def test_the_pending_queue_is_bounded_and_drops_the_oldest(
    postgres_url: str, switch: PostgresSwitch
) -> None:
    upgrade(postgres_url)
    switch.refuse_connections()
    writer = fast_writer(postgres_url, max_pending=2)
    for name in ("r1", "r2", "r3"):
        writer.submit(HistoryKind.RUN, run_body(name=name, namespace=NAMESPACE, created_at=BASE))
    await wait_until(lambda: writer.database_available is False)
    assert (writer.dropped_count, writer.pending_count) == (1, 2)

    switch.accept_connections()
    await writer.flush(timeout=30)
    await writer.close()
    engine = create_history_engine(postgres_url)
    try:
        with engine.connect() as connection:
            stored = set(connection.execute(select(RunRow.name)).scalars())
    finally:
        engine.dispose()
    assert stored == {"r2", "r3"}
