"""Phone calls: call records and per-resident voice preferences.

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "call_records",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("call_sid", sa.String(64), nullable=False),
        sa.Column("caller_hash", sa.String(64), nullable=True),
        sa.Column("caller_enc", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("transcript_enc", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(24), nullable=True),
        sa.Column("handoff_reference", sa.String(8), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_records")),
        sa.UniqueConstraint("call_sid", name=op.f("uq_call_records_call_sid")),
    )
    op.create_index(op.f("ix_call_records_caller_hash"), "call_records", ["caller_hash"])
    op.create_table(
        "voice_preferences",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("phone_hash", sa.String(64), nullable=False),
        sa.Column("direct_to_human", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_voice_preferences")),
        sa.UniqueConstraint("phone_hash", name=op.f("uq_voice_preferences_phone_hash")),
    )


def downgrade() -> None:
    op.drop_table("voice_preferences")
    op.drop_index(op.f("ix_call_records_caller_hash"), table_name="call_records")
    op.drop_table("call_records")
