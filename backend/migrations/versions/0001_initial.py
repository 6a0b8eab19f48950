"""Initial schema: residents, cases (applications, bookings, tickets, handoffs), status
events and the audit chain.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ZERO_HASH = "0" * 64
CASE_TABLES = ("applications", "bookings", "tickets", "handoffs")


def _ts() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def _case_columns(table: str) -> list[sa.Column]:
    """Columns shared by every case table (models.CaseColumns)."""
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(8), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column(
            "resident_id",
            sa.Integer(),
            sa.ForeignKey(
                "residents.id", name=f"fk_{table}_resident_id_residents", ondelete="SET NULL"
            ),
            nullable=True,
        ),
        sa.Column("phone_hash", sa.String(64), nullable=True),
        sa.Column("submitted_by_hash", sa.String(64), nullable=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("sender_hash", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        *_ts(),
    ]


def _case_constraints(table: str) -> list[sa.Constraint]:
    return [
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
        sa.UniqueConstraint("reference", name=f"uq_{table}_reference"),
        sa.UniqueConstraint("idempotency_key", name=f"uq_{table}_idempotency_key"),
    ]


def _case_indexes(table: str) -> None:
    for column in ("status", "resident_id", "phone_hash", "submitted_by_hash", "sender_hash"):
        op.create_index(f"ix_{table}_{column}", table, [column])


def upgrade() -> None:
    op.create_table(
        "residents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("id_hash", sa.String(64), nullable=True),
        sa.Column("id_enc", sa.Text(), nullable=True),
        sa.Column("phone_hash", sa.String(64), nullable=True),
        sa.Column("phone_enc", sa.Text(), nullable=True),
        sa.Column("name_enc", sa.Text(), nullable=True),
        sa.Column("birth_date", sa.Date(), nullable=True),
        sa.Column("gender", sa.String(1), nullable=True),
        sa.Column("address_enc", sa.Text(), nullable=True),
        sa.Column("grid_id", sa.String(32), nullable=True),
        *_ts(),
        sa.PrimaryKeyConstraint("id", name="pk_residents"),
        sa.UniqueConstraint("id_hash", name="uq_residents_id_hash"),
    )
    op.create_index("ix_residents_phone_hash", "residents", ["phone_hash"])
    op.create_index("ix_residents_grid_id", "residents", ["grid_id"])

    op.create_table(
        "applications",
        *_case_columns("applications"),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("fields_enc", sa.Text(), nullable=True),
        *_case_constraints("applications"),
    )
    op.create_table(
        "bookings",
        *_case_columns("bookings"),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("fields_enc", sa.Text(), nullable=True),
        *_case_constraints("bookings"),
    )
    op.create_table(
        "tickets",
        *_case_columns("tickets"),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("description_enc", sa.Text(), nullable=True),
        sa.Column("location_enc", sa.Text(), nullable=True),
        sa.Column("fields_enc", sa.Text(), nullable=True),
        sa.Column("grid_id", sa.String(32), nullable=True),
        sa.Column("department", sa.String(64), nullable=True),
        *_case_constraints("tickets"),
    )
    op.create_index("ix_tickets_grid_id", "tickets", ["grid_id"])
    op.create_table(
        "handoffs",
        *_case_columns("handoffs"),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("transcript_enc", sa.Text(), nullable=True),
        sa.Column("form_name", sa.String(64), nullable=True),
        sa.Column("form_slots_enc", sa.Text(), nullable=True),
        sa.Column("taken_by", sa.String(64), nullable=True),
        *_case_constraints("handoffs"),
    )
    for table in CASE_TABLES:
        _case_indexes(table)

    op.create_table(
        "status_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("entity_type", sa.String(32), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column("from_status", sa.String(32), nullable=True),
        sa.Column("to_status", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_status_events"),
    )
    op.create_index("ix_status_events_entity", "status_events", ["entity_type", "entity_id"])

    op.create_table(
        "audit_entries",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("entity_type", sa.String(32), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_entries"),
    )
    audit_head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
    )
    op.bulk_insert(audit_head, [{"id": 1, "last_id": 0, "last_hash": ZERO_HASH}])


def downgrade() -> None:
    for table in ("audit_head", "audit_entries", "status_events", *reversed(CASE_TABLES)):
        op.drop_table(table)
    op.drop_table("residents")
