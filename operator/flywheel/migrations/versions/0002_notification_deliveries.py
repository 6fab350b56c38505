"""Notification deliveries (each delivery to the webhook, or its final failure) and the
permanent-fix description of an Incident.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 15:00:00

Written out in full rather than importing the models, like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UID = 128
NAMESPACE = 63
ENUM = 32
SHORT_TEXT = 255


def _timestamp(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _string(name: str, length: int, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "notification_deliveries",
        _string("delivery_id", SHORT_TEXT),
        _string("kind", ENUM),
        _string("reason", SHORT_TEXT),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        _string("namespace", NAMESPACE, nullable=True),
        _string("run_uid", UID, nullable=True),
        _string("incident_uid", UID, nullable=True),
        _string("channel", ENUM),
        _string("outcome", ENUM),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("occurred_at"),
        _timestamp("finished_at"),
        sa.Column("payload", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        _timestamp("recorded_at"),
        sa.PrimaryKeyConstraint("delivery_id", name="pk_notification_deliveries"),
    )
    op.create_index(
        "ix_notification_deliveries_run_uid_occurred_at", "notification_deliveries", ["run_uid", "occurred_at"]
    )
    op.create_index(
        "ix_notification_deliveries_incident_uid_occurred_at",
        "notification_deliveries",
        ["incident_uid", "occurred_at"],
    )
    op.create_index(
        "ix_notification_deliveries_kind_occurred_at", "notification_deliveries", ["kind", "occurred_at"]
    )
    # batch_alter_table: SQLite cannot add every kind of column in place; a nullable Text it can,
    # and on PostgreSQL the batch is a plain ALTER TABLE.
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("permanent_fix_description", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("permanent_fix_description")
    op.drop_table("notification_deliveries")
