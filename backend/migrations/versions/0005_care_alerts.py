"""Care alerts: households, contacts, devices, sensor readings (and unknown ones), alerts, events.

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "care_households",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("grid_id", sa.String(32), nullable=False),
        sa.Column("address_enc", sa.Text(), nullable=True),
        sa.Column("senior_name_enc", sa.Text(), nullable=False),
        sa.Column("senior_gender", sa.String(1), nullable=True),
        sa.Column("engine_state", sa.Text(), nullable=True),
        sa.Column("next_check_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_care_households")),
        sa.UniqueConstraint("code", name=op.f("uq_care_households_code")),
    )
    op.create_index(op.f("ix_care_households_grid_id"), "care_households", ["grid_id"])
    op.create_table(
        "care_contacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("household_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name_enc", sa.Text(), nullable=False),
        sa.Column("phone_enc", sa.Text(), nullable=True),
        sa.Column("phone_hash", sa.String(64), nullable=True),
        sa.Column("relation", sa.String(32), nullable=True),
        sa.ForeignKeyConstraint(["household_id"], ["care_households.id"], ondelete="CASCADE",
                                name=op.f("fk_care_contacts_household_id_care_households")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_care_contacts")),
    )
    op.create_index(op.f("ix_care_contacts_household_id"), "care_contacts", ["household_id"])
    op.create_index(op.f("ix_care_contacts_phone_hash"), "care_contacts", ["phone_hash"])
    op.create_table(
        "care_devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("household_id", sa.Integer(), nullable=False),
        sa.Column("device_uid", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=True),
        sa.Column("last_seen_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["household_id"], ["care_households.id"], ondelete="CASCADE",
                                name=op.f("fk_care_devices_household_id_care_households")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_care_devices")),
        sa.UniqueConstraint("device_uid", name=op.f("uq_care_devices_device_uid")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_care_devices_token_hash")),
    )
    op.create_index(op.f("ix_care_devices_household_id"), "care_devices", ["household_id"])
    op.create_table(
        "sensor_readings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("household_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("ts", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["care_devices.id"], ondelete="CASCADE",
                                name=op.f("fk_sensor_readings_device_id_care_devices")),
        sa.ForeignKeyConstraint(["household_id"], ["care_households.id"], ondelete="CASCADE",
                                name=op.f("fk_sensor_readings_household_id_care_households")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sensor_readings")),
        sa.UniqueConstraint("device_id", "ts", name="uq_sensor_readings_device_ts"),
    )
    op.create_index(op.f("ix_sensor_readings_household_id"), "sensor_readings", ["household_id"])
    op.create_table(
        "unknown_readings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_device_id", sa.Integer(), nullable=True),
        sa.Column("device_uid", sa.String(64), nullable=False),
        sa.Column("household_code", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("ts", _TS, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["token_device_id"], ["care_devices.id"], ondelete="SET NULL",
                                name=op.f("fk_unknown_readings_token_device_id_care_devices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unknown_readings")),
    )
    op.create_index(op.f("ix_unknown_readings_token_device_id"), "unknown_readings", ["token_device_id"])
    op.create_index(op.f("ix_unknown_readings_device_uid"), "unknown_readings", ["device_uid"])
    op.create_table(
        "care_alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("household_id", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("alert_key", sa.String(100), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("dedupe_key", sa.String(200), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("raised_at", _TS, nullable=False),
        sa.Column("notify_at", _TS, nullable=False),
        sa.Column("notified_at", _TS, nullable=True),
        sa.Column("notified_roles", sa.String(300), nullable=False),
        sa.Column("escalation_step", sa.Integer(), nullable=False),
        sa.Column("ack_due_at", _TS, nullable=True),
        sa.Column("visit_due_at", _TS, nullable=True),
        sa.Column("acknowledged_at", _TS, nullable=True),
        sa.Column("acknowledged_by", sa.String(64), nullable=True),
        sa.Column("visited_at", _TS, nullable=True),
        sa.Column("cleared_at", _TS, nullable=True),
        sa.Column("closed_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["household_id"], ["care_households.id"], ondelete="CASCADE",
                                name=op.f("fk_care_alerts_household_id_care_households")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_care_alerts")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_care_alerts_dedupe_key")),
    )
    op.create_index("ix_care_alerts_household_key", "care_alerts", ["household_id", "alert_key"])
    op.create_index(op.f("ix_care_alerts_state"), "care_alerts", ["state"])
    op.create_table(
        "care_alert_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["alert_id"], ["care_alerts.id"], ondelete="CASCADE",
                                name=op.f("fk_care_alert_events_alert_id_care_alerts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_care_alert_events")),
    )
    op.create_index(op.f("ix_care_alert_events_alert_id"), "care_alert_events", ["alert_id"])


def downgrade() -> None:
    for table in ("care_alert_events", "care_alerts", "unknown_readings", "sensor_readings", "care_devices",
                  "care_contacts", "care_households"):
        op.drop_table(table)
