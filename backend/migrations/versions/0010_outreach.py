"""Outreach: check-in schedules and days (平安电话), community notices and their deliveries,
outbound calls, and residents' contact preferences (language, notice channel, no more calls).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "contact_preferences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("phone_hash", sa.String(length=64), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("written_cantonese", sa.Boolean(), nullable=False),
        sa.Column("notice_channel", sa.String(length=8), nullable=True),
        sa.Column("no_notice_calls", sa.Boolean(), nullable=False),
        sa.Column("set_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_preferences")),
        sa.UniqueConstraint("phone_hash", name=op.f("uq_contact_preferences_phone_hash")),
    )
    op.create_table(
        "notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=40), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("audience", sa.Text(), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("send_at", _TS, nullable=False),
        sa.Column("segments", sa.Integer(), nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notices")),
    )
    op.create_table(
        "outbound_calls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("ref_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=80), nullable=False),
        sa.Column("to_hash", sa.String(length=64), nullable=False),
        sa.Column("to_enc", sa.Text(), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("call_sid", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("answered_by", sa.String(length=24), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("placing_at", _TS, nullable=True),
        sa.Column("ended_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbound_calls")),
        sa.UniqueConstraint("call_sid", name=op.f("uq_outbound_calls_call_sid")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_outbound_calls_dedupe_key")),
    )
    op.create_index(op.f("ix_outbound_calls_ref_id"), "outbound_calls", ["ref_id"], unique=False)
    op.create_index(op.f("ix_outbound_calls_to_hash"), "outbound_calls", ["to_hash"], unique=False)
    op.create_table(
        "checkin_days",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("household_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("next_at", _TS, nullable=True),
        sa.Column("answer", sa.String(length=32), nullable=True),
        sa.Column("alert_id", sa.Integer(), nullable=True),
        sa.Column("handoff_reference", sa.String(length=8), nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("note", sa.String(length=200), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["household_id"],
            ["care_households.id"],
            name=op.f("fk_checkin_days_household_id_care_households"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkin_days")),
        sa.UniqueConstraint("household_id", "day", name="uq_checkin_days_household_day"),
    )
    op.create_index(op.f("ix_checkin_days_day"), "checkin_days", ["day"], unique=False)
    op.create_index(op.f("ix_checkin_days_household_id"), "checkin_days", ["household_id"], unique=False)
    op.create_table(
        "checkin_schedules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("household_id", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.String(length=5), nullable=False),
        sa.Column("window_end", sa.String(length=5), nullable=False),
        sa.Column("days", sa.String(length=7), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("sms_fallback", sa.Boolean(), nullable=False),
        sa.Column("question", sa.String(length=60), nullable=True),
        sa.Column("retry_minutes", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("skip_if_active", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("enrolled_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["household_id"],
            ["care_households.id"],
            name=op.f("fk_checkin_schedules_household_id_care_households"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkin_schedules")),
        sa.UniqueConstraint("household_id", name=op.f("uq_checkin_schedules_household_id")),
    )
    op.create_table(
        "notice_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("notice_id", sa.Integer(), nullable=False),
        sa.Column("phone_hash", sa.String(length=64), nullable=False),
        sa.Column("phone_enc", sa.Text(), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("sms_id", sa.Integer(), nullable=True),
        sa.Column("repeats", sa.Integer(), nullable=False),
        sa.Column("asked_person", sa.Boolean(), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["notice_id"], ["notices.id"], name=op.f("fk_notice_deliveries_notice_id_notices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notice_deliveries")),
        sa.UniqueConstraint("notice_id", "phone_hash", name="uq_notice_deliveries_notice_phone"),
    )
    op.create_index(op.f("ix_notice_deliveries_notice_id"), "notice_deliveries", ["notice_id"], unique=False)
    op.create_index(op.f("ix_notice_deliveries_state"), "notice_deliveries", ["state"], unique=False)


def downgrade() -> None:
    for table in (
        "notice_deliveries",
        "checkin_schedules",
        "checkin_days",
        "outbound_calls",
        "notices",
        "contact_preferences",
    ):
        op.drop_table(table)
