"""Ticket loop: photo reports (media, place, routing, rating), SMS inbound/outbox/opt-outs,
and the jobs table behind backend.infra.jobs.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-25
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TICKET_COLUMNS = (
    ("service_code", sa.String(32)),
    ("latitude", sa.Float()),
    ("longitude", sa.Float()),
    ("place", sa.String(120)),
    ("location_source", sa.String(16)),
    ("contact_enc", sa.Text()),
    ("ocr_text_enc", sa.Text()),
    ("duplicate_of_id", sa.Integer()),
    ("rating", sa.Integer()),
    ("awaiting", sa.String(16)),
    ("intake_until", sa.DateTime(timezone=True)),
    ("status_note", sa.Text()),
)


def upgrade() -> None:
    # Batch mode: SQLite cannot add a foreign key to an existing table in place.
    with op.batch_alter_table("tickets") as batch:
        for name, type_ in TICKET_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
        batch.create_index("ix_tickets_service_code", ["service_code"])
        batch.create_foreign_key(
            "fk_tickets_duplicate_of_id_tickets", "tickets", ["duplicate_of_id"], ["id"], ondelete="SET NULL"
        )

    op.create_table(
        "ticket_media",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("source_url_enc", sa.Text(), nullable=True),
        sa.Column("declared_type", sa.String(100), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.String(32), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("content_type", sa.String(32), nullable=True),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("ocr_text_enc", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ticket_media"),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_ticket_media_ticket_id_tickets",
                                ondelete="CASCADE"),
        sa.UniqueConstraint("ticket_id", "position", name="uq_ticket_media_ticket_position"),
    )
    op.create_index("ix_ticket_media_ticket_id", "ticket_media", ["ticket_id"])
    op.create_index("ix_ticket_media_sha256", "ticket_media", ["sha256"])

    op.create_table(
        "sms_inbound",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_sid", sa.String(64), nullable=False),
        sa.Column("from_hash", sa.String(64), nullable=False),
        sa.Column("body_enc", sa.Text(), nullable=True),
        sa.Column("num_media", sa.Integer(), nullable=False),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=True),
        sa.Column("reply_enc", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sms_inbound"),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_sms_inbound_ticket_id_tickets",
                                ondelete="SET NULL"),
        sa.UniqueConstraint("message_sid", name="uq_sms_inbound_message_sid"),
    )
    op.create_index("ix_sms_inbound_from_hash", "sms_inbound", ["from_hash"])
    op.create_index("ix_sms_inbound_ticket_id", "sms_inbound", ["ticket_id"])

    op.create_table(
        "sms_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dedupe_key", sa.String(200), nullable=False),
        sa.Column("to_hash", sa.String(64), nullable=False),
        sa.Column("to_enc", sa.Text(), nullable=False),
        sa.Column("body_enc", sa.Text(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=True),
        sa.Column("send_state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("provider_sid", sa.String(64), nullable=True),
        sa.Column("delivery_status", sa.String(16), nullable=True),
        sa.Column("last_error", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sms_outbox"),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_sms_outbox_ticket_id_tickets",
                                ondelete="SET NULL"),
        sa.UniqueConstraint("dedupe_key", name="uq_sms_outbox_dedupe_key"),
        sa.UniqueConstraint("provider_sid", name="uq_sms_outbox_provider_sid"),
    )
    op.create_index("ix_sms_outbox_to_hash", "sms_outbox", ["to_hash"])
    op.create_index("ix_sms_outbox_ticket_id", "sms_outbox", ["ticket_id"])
    op.create_index("ix_sms_outbox_due", "sms_outbox", ["send_state", "next_attempt_at"])

    op.create_table(
        "sms_optouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("phone_hash", sa.String(64), nullable=False),
        sa.Column("opted_out", sa.Boolean(), nullable=False),
        sa.Column("message_sid", sa.String(64), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sms_optouts"),
        sa.UniqueConstraint("phone_hash", name="uq_sms_optouts_phone_hash"),
    )

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("locked_by", sa.String(64), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("dedupe_key", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("dedupe_key", name="uq_jobs_dedupe_key"),
    )
    op.create_index("ix_jobs_due", "jobs", ["state", "run_at"])


def downgrade() -> None:
    for table in ("jobs", "sms_optouts", "sms_outbox", "sms_inbound", "ticket_media"):
        op.drop_table(table)
    with op.batch_alter_table("tickets") as batch:
        batch.drop_constraint("fk_tickets_duplicate_of_id_tickets", type_="foreignkey")
        batch.drop_index("ix_tickets_service_code")
        for name, _ in reversed(TICKET_COLUMNS):
            batch.drop_column(name)
