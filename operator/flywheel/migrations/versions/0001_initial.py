"""Initial history schema: runs, run steps, approvals, audit events, repair executions,
incidents and knowledge entries.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 13:20:00

Written out in full rather than importing the models, so that this migration keeps creating
exactly this schema however the models evolve later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UID = 128
NAMESPACE = 63
NAME = 253
ENUM = 32
SHORT_TEXT = 255


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _json_document(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False)


def _string(name: str, length: int, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def _text(name: str, *, nullable: bool = True) -> sa.Column[Any]:
    return sa.Column(name, sa.Text(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "incidents",
        _string("uid", UID),
        _string("namespace", NAMESPACE),
        _string("name", NAME),
        _timestamp("created_at"),
        _string("alert_name", NAME, nullable=True),
        _string("service", NAME),
        _string("error_type", NAME, nullable=True),
        _string("severity", ENUM),
        _string("source", NAME),
        _text("summary"),
        _string("target_kind", ENUM),
        _string("target_name", NAME),
        _string("remediation_mode", ENUM),
        _string("phase", ENUM, nullable=True),
        _string("anomaly_key", 16, nullable=True),
        _string("escalation_level", ENUM, nullable=True),
        _string("decision_id", ENUM, nullable=True),
        _string("decision_source", ENUM, nullable=True),
        _string("decision_action", ENUM, nullable=True),
        _string("run_name", NAME, nullable=True),
        _string("run_uid", UID, nullable=True),
        _string("duplicate_of", NAME, nullable=True),
        _string("disposition", ENUM, nullable=True),
        _timestamp("resolved_at", nullable=True),
        _string("resource_version", SHORT_TEXT, nullable=True),
        _timestamp("projected_at"),
        sa.PrimaryKeyConstraint("uid", name="pk_incidents"),
    )
    op.create_index("ix_incidents_namespace_phase", "incidents", ["namespace", "phase"])
    op.create_index("ix_incidents_namespace_name", "incidents", ["namespace", "name"])
    op.create_index("ix_incidents_anomaly_key", "incidents", ["anomaly_key"])
    op.create_index("ix_incidents_created_at", "incidents", ["created_at"])

    op.create_table(
        "runs",
        _string("uid", UID),
        _string("namespace", NAMESPACE),
        _string("name", NAME),
        _timestamp("created_at"),
        _string("incident_name", NAME),
        _string("incident_uid", UID),
        _string("action_type", ENUM),
        _string("target_kind", ENUM),
        _string("target_name", NAME),
        _json_document("action_params"),
        _string("risk_level", ENUM),
        sa.Column("requires_approval", sa.Boolean(), nullable=False),
        _string("mode", ENUM),
        _string("trace_id", 32),
        _string("trigger_type", SHORT_TEXT, nullable=True),
        _string("trigger_ref", NAME, nullable=True),
        _string("state", ENUM, nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        _timestamp("started_at", nullable=True),
        _timestamp("completed_at", nullable=True),
        _string("error_code", 64, nullable=True),
        _text("error_detail"),
        _string("approval_name", NAME, nullable=True),
        _string("approval_uid", UID, nullable=True),
        _string("resource_version", SHORT_TEXT, nullable=True),
        _timestamp("projected_at"),
        sa.PrimaryKeyConstraint("uid", name="pk_runs"),
    )
    op.create_index("ix_runs_namespace_state_created_at", "runs", ["namespace", "state", "created_at"])
    op.create_index("ix_runs_namespace_name", "runs", ["namespace", "name"])
    op.create_index("ix_runs_namespace_incident_name", "runs", ["namespace", "incident_name"])
    op.create_index("ix_runs_incident_uid", "runs", ["incident_uid"])
    op.create_index("ix_runs_created_at", "runs", ["created_at"])

    op.create_table(
        "run_steps",
        _string("run_uid", UID),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        _string("name", NAME),
        _string("result", SHORT_TEXT),
        _timestamp("at"),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        _text("message"),
        sa.PrimaryKeyConstraint("run_uid", "seq", name="pk_run_steps"),
    )

    op.create_table(
        "approvals",
        _string("uid", UID),
        _string("namespace", NAMESPACE),
        _string("name", NAME),
        _timestamp("created_at"),
        _string("run_name", NAME),
        _string("run_uid", UID),
        _string("action_type", ENUM),
        _string("target_kind", ENUM),
        _string("target_name", NAME),
        _string("risk_level", ENUM),
        _string("escalation_level", ENUM, nullable=True),
        _text("reasoning"),
        _timestamp("expires_at"),
        _string("decision", ENUM, nullable=True),
        _text("reason"),
        _string("phase", ENUM, nullable=True),
        _string("decided_by", 1024, nullable=True),
        _timestamp("decided_at", nullable=True),
        _text("message"),
        _string("resource_version", SHORT_TEXT, nullable=True),
        _timestamp("projected_at"),
        sa.PrimaryKeyConstraint("uid", name="pk_approvals"),
    )
    op.create_index("ix_approvals_run_uid", "approvals", ["run_uid"])
    op.create_index("ix_approvals_namespace_phase", "approvals", ["namespace", "phase"])
    op.create_index("ix_approvals_created_at", "approvals", ["created_at"])

    op.create_table(
        "audit_events",
        _string("event_id", SHORT_TEXT),
        _string("kind", SHORT_TEXT),
        _timestamp("occurred_at"),
        _string("namespace", NAMESPACE, nullable=True),
        _string("run_uid", UID, nullable=True),
        _string("incident_uid", UID, nullable=True),
        _string("actor", 1024, nullable=True),
        _string("outcome", SHORT_TEXT, nullable=True),
        _text("summary", nullable=False),
        _json_document("payload"),
        _timestamp("recorded_at"),
        sa.PrimaryKeyConstraint("event_id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_run_uid_occurred_at", "audit_events", ["run_uid", "occurred_at"])
    op.create_index(
        "ix_audit_events_incident_uid_occurred_at", "audit_events", ["incident_uid", "occurred_at"]
    )
    op.create_index("ix_audit_events_kind_occurred_at", "audit_events", ["kind", "occurred_at"])
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"])

    op.create_table(
        "repair_executions",
        _string("run_uid", UID),
        sa.Column("attempt", sa.Integer(), autoincrement=False, nullable=False),
        _string("namespace", NAMESPACE),
        _string("incident_uid", UID),
        _string("anomaly_key", 16),
        _string("action", ENUM),
        _string("target_kind", ENUM),
        _string("target_name", NAME),
        sa.Column("shadow", sa.Boolean(), nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        _string("error_code", 64, nullable=True),
        _timestamp("started_at"),
        _timestamp("finished_at"),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        _timestamp("recorded_at"),
        sa.PrimaryKeyConstraint("run_uid", "attempt", name="pk_repair_executions"),
    )
    # Covering: success rates per (anomaly, action) are counted from the index alone.
    op.create_index(
        "ix_repair_executions_anomaly_key_action_succeeded",
        "repair_executions",
        ["anomaly_key", "action", "succeeded"],
    )
    op.create_index(
        "ix_repair_executions_finished_at_succeeded", "repair_executions", ["finished_at", "succeeded"]
    )

    op.create_table(
        "knowledge_entries",
        _string("incident_uid", UID),
        _string("namespace", NAMESPACE),
        _string("incident_name", NAME),
        _string("anomaly_key", 16, nullable=True),
        _string("action", ENUM, nullable=True),
        _string("outcome", ENUM),
        _string("disposition", ENUM, nullable=True),
        _text("root_cause"),
        _text("note"),
        _timestamp("resolved_at"),
        _timestamp("recorded_at"),
        sa.PrimaryKeyConstraint("incident_uid", name="pk_knowledge_entries"),
    )
    op.create_index("ix_knowledge_entries_anomaly_key", "knowledge_entries", ["anomaly_key"])
    op.create_index("ix_knowledge_entries_resolved_at", "knowledge_entries", ["resolved_at"])


def downgrade() -> None:
    for table in (
        "knowledge_entries",
        "repair_executions",
        "audit_events",
        "approvals",
        "run_steps",
        "runs",
        "incidents",
    ):
        # Dropping a table drops its indexes with it, on PostgreSQL and SQLite alike.
        op.drop_table(table)
