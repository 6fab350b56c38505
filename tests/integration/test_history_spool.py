"""History records outlive a database outage *and* the operator: the spool, on a real PostgreSQL.

Scenarios:
- a writer process with a spool directory submits audit events, repair executions and
  knowledge entries while PostgreSQL refuses connections, and is killed with SIGKILL; a new
  writer on the same spool directory, once the database is back, stores every record exactly
  once (and a second replay adds nothing);
- records round-trip through the spool file unchanged (datetimes with offsets, enums, payloads);
- a record replaced while its older version is being written is not forgotten;
- without a spool directory, records past the memory bound are dropped *visibly*: counted by
  reason, logged, and reported to ``on_drop`` with the object it concerned;
- a spool directory that cannot be used is a configuration error naming the setting;
- ``holds``: true only once the last projected resourceVersion of every object is committed and
  nothing about it waits; unreachable database → DatabaseUnavailableError.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from flywheel.api.enums import ActionType
from flywheel.errors import ConfigurationError, DatabaseUnavailableError
from flywheel.stores.history import (
    AuditEvent,
    HistoryKind,
    KnowledgeEntry,
    RepairExecution,
    build_history_writer,
    create_history_engine,
    upgrade,
)
from flywheel.stores.history.outbox import DroppedItem, DropReason
from flywheel.stores.history.spool import FileSpool, decode_record, encode_record
from flywheel.stores.history.tables import AuditEventRow, HistoryBase, KnowledgeEntryRow, RepairExecutionRow
from tests.harness.history_bodies import new_uid, run_body
from tests.harness.postgres import PostgresSwitch

pytestmark = pytest.mark.integration

BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
RECORDS_PER_KIND = 5


@pytest.fixture()
def switch(postgres_url: str) -> Iterator[PostgresSwitch]:
    switch = PostgresSwitch(postgres_url)
    yield switch
    switch.close()


@pytest.fixture()
def engine(postgres_url: str) -> Iterator[Engine]:
    upgrade(postgres_url)
    engine = create_history_engine(postgres_url)
    yield engine
    engine.dispose()


def count(engine: Engine, model: type[HistoryBase]) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(model)).scalar_one())


# The operator's side of the scenario, in its own process so that SIGKILL is a real crash:
# records are submitted during the outage, then the process waits to be killed.
_CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime, timedelta
    from flywheel.api.enums import ActionType
    from flywheel.stores.history import AuditEvent, HistoryKind, KnowledgeEntry, RepairExecution
    from flywheel.stores.history import build_history_writer

    database_url, spool_dir, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    base = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    async def main():
        writer = build_history_writer(database_url, spool_dir=spool_dir, retry_initial_seconds=0.05,
                                      retry_max_seconds=0.2)
        writer.start()
        for index in range(count):
            run_uid = f"run-{index}"
            writer.submit(HistoryKind.AUDIT_EVENT, AuditEvent(
                event_id=f"approval-{index}:approved", kind="approval.approved", occurred_at=base,
                summary="approved by alice", actor="alice", run_uid=run_uid, payload={"decision": "approve"}))
            writer.submit(HistoryKind.REPAIR_EXECUTION, RepairExecution(
                run_uid=run_uid, attempt=1, namespace="shop", incident_uid=f"incident-{index}",
                anomaly_key="0123456789abcdef", action=ActionType.ROLLOUT_RESTART, target_kind="Deployment",
                target_name="checkout", succeeded=True, started_at=base, finished_at=base + timedelta(seconds=9),
                latency_ms=9000))
            writer.submit(HistoryKind.KNOWLEDGE_ENTRY, KnowledgeEntry(
                incident_uid=f"incident-{index}", namespace="shop", incident_name=f"checkout-oom-{index}",
                outcome="Resolved", resolved_at=base, action=ActionType.ROLLOUT_RESTART))
        while writer.database_available is not False:
            await asyncio.sleep(0.05)
        print("submitted", writer.spooled_count, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def _submit_then_die(postgres_url: str, spool_dir: Path) -> None:
    """Run the crashing writer until it has spooled everything during the outage, then SIGKILL it."""
    process = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, postgres_url, str(spool_dir), str(RECORDS_PER_KIND)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        # The process logs to stdout too: read up to its marker line.
        line = next((line for line in process.stdout if line.startswith("submitted")), "")
        assert line.split() == ["submitted", str(3 * RECORDS_PER_KIND)], line
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode == -signal.SIGKILL


async def test_records_spooled_during_an_outage_survive_a_kill_and_are_stored_exactly_once(
    postgres_url: str, switch: PostgresSwitch, engine: Engine, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    switch.refuse_connections()
    await asyncio.to_thread(_submit_then_die, postgres_url, spool_dir)

    switch.accept_connections()
    for replay in range(2):  # a second start (or a record stored just before the kill) adds nothing
        writer = build_history_writer(postgres_url, spool_dir=str(spool_dir))
        writer.start()
        assert writer.spool_durable
        await writer.flush(timeout=30)
        assert writer.spooled_count == 0 and writer.dropped_count == 0
        await writer.close()
        assert (count(engine, AuditEventRow), count(engine, RepairExecutionRow), count(engine, KnowledgeEntryRow)) == (
            RECORDS_PER_KIND, RECORDS_PER_KIND, RECORDS_PER_KIND), f"after replay {replay + 1}"
    with engine.connect() as connection:
        actor, latency = connection.execute(
            select(AuditEventRow.actor, RepairExecutionRow.latency_ms).where(
                AuditEventRow.run_uid == RepairExecutionRow.run_uid, AuditEventRow.run_uid == "run-3")
        ).one()
    assert (actor, latency) == ("alice", 9000), "what only the records carried is stored"


def test_records_round_trip_through_the_spool_file(tmp_path: Path) -> None:
    records = [
        AuditEvent(event_id="e1", kind="approval.expired", occurred_at=BASE.astimezone(timezone(timedelta(hours=2))),
                   summary="expired", payload={"nested": {"list": [1, "two", None]}}, namespace="shop",
                   run_uid="r", incident_uid="i", actor=None, outcome="expired"),
        RepairExecution(run_uid="r", attempt=2, namespace="shop", incident_uid="i", anomaly_key="k",
                        action=ActionType.SCALE, target_kind="Deployment", target_name="web", succeeded=False,
                        started_at=BASE, finished_at=BASE + timedelta(seconds=1), error_code="E-VERIFY-TIMEOUT",
                        shadow=True, latency_ms=None),
        KnowledgeEntry(incident_uid="i", namespace="shop", incident_name="web-oom", outcome="Closed",
                       resolved_at=BASE, anomaly_key=None, action=None, root_cause="leak", note="n"),
    ]
    kinds = ["audit_event", "repair_execution", "knowledge_entry"]
    for kind, record in zip(kinds, records, strict=True):
        assert decode_record(kind, encode_record(record)) == record
    spool = FileSpool(tmp_path)
    for kind, record in zip(kinds, records, strict=True):
        spool.put(kind, "key", record)
    spool.close()
    reopened = FileSpool(tmp_path)
    assert [entry.record for entry in reopened.oldest(10)] == records
    assert reopened.concerns(["r"]) and reopened.concerns(["i"]) and not reopened.concerns(["other"])
    reopened.close()


def test_a_record_replaced_while_its_older_version_is_written_stays_spooled(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    first = KnowledgeEntry(incident_uid="i", namespace="shop", incident_name="web", outcome="Resolved",
                           resolved_at=BASE)
    spool.put("knowledge_entry", "i", first)
    (taken,) = spool.oldest(10)
    spool.put("knowledge_entry", "i", replace(first, root_cause="a leak"))
    spool.remove([taken])  # the older version was committed
    (left,) = spool.oldest(10)
    assert left.record.root_cause == "a leak"  # type: ignore[union-attr]
    spool.close()


async def test_without_a_spool_an_overflow_is_counted_logged_and_reported(
    postgres_url: str, switch: PostgresSwitch, engine: Engine
) -> None:
    switch.refuse_connections()
    reported: list[DroppedItem] = []
    writer = build_history_writer(postgres_url, max_pending=2, on_drop=reported.append,
                                  retry_initial_seconds=0.05, retry_max_seconds=0.2)
    writer.start()
    for index in range(3):
        writer.submit(HistoryKind.AUDIT_EVENT, AuditEvent(
            event_id=f"e{index}", kind="approval.approved", occurred_at=BASE, summary="approved",
            namespace="shop", run_uid=f"run-{index}"))
    for name in ("r1", "r2", "r3"):
        writer.submit(HistoryKind.RUN, run_body(name=name, namespace="shop", created_at=BASE))
    assert not writer.spool_durable
    assert writer.dropped_by_reason[DropReason.OVERFLOW] == 2
    assert [(item.kind, item.key, item.reason) for item in reported] == [
        ("audit_event", "e0", DropReason.OVERFLOW),
        (HistoryKind.RUN, reported[1].key, DropReason.OVERFLOW),
    ]
    assert (reported[1].namespace, reported[1].name) == ("shop", "r1")
    switch.accept_connections()
    await writer.flush(timeout=30)
    await writer.close()
    assert count(engine, AuditEventRow) == 2


def test_an_unusable_spool_directory_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="FLYWHEEL_HISTORY_SPOOL_DIR"):
        FileSpool(blocker / "spool")


async def test_holds_means_the_last_version_is_committed_and_nothing_waits(
    postgres_url: str, switch: PostgresSwitch, engine: Engine, tmp_path: Path
) -> None:
    writer = build_history_writer(postgres_url, spool_dir=str(tmp_path), retry_initial_seconds=0.05,
                                  retry_max_seconds=0.2)
    writer.start()
    run_uid = new_uid()
    writer.submit(HistoryKind.RUN, run_body(uid=run_uid, name="r1", namespace="shop", created_at=BASE,
                                            resource_version=7))
    await writer.flush(timeout=30)
    assert await writer.holds(HistoryKind.RUN, {run_uid: "7"})
    assert not await writer.holds(HistoryKind.RUN, {run_uid: "8"}), "a newer version is not in the history yet"
    assert not await writer.holds(HistoryKind.RUN, {run_uid: "7", new_uid(): "1"}), "one object missing"

    switch.refuse_connections()
    writer.submit(HistoryKind.REPAIR_EXECUTION, RepairExecution(
        run_uid=run_uid, attempt=1, namespace="shop", incident_uid="i", anomaly_key="k",
        action=ActionType.ROLLOUT_RESTART, target_kind="Deployment", target_name="web", succeeded=True,
        started_at=BASE, finished_at=BASE))
    assert not await writer.holds(HistoryKind.RUN, {run_uid: "7"}), "its repair execution still waits"
    with pytest.raises(DatabaseUnavailableError):
        await writer.holds(HistoryKind.RUN, {new_uid(): "1"})
    switch.accept_connections()
    await writer.flush(timeout=30)
    assert await writer.holds(HistoryKind.RUN, {run_uid: "7"})
    await writer.close()
