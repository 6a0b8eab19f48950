"""Care-alert tables (revision 0005): households and their contacts, devices, readings, alerts
and alert events.

Names, addresses and phones are SM4 text (`*_enc`) with a blind index for phones, like the rest
of the store. Household ids are the community's own pseudonymous codes (H001); readings and the
engine's state carry no names or numbers. Every alert transition is an `AlertEvent` row with
actor and time; the SLA deadlines live on the `Alert` row, so they survive restarts.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backend.infra.models import Base, Timestamps, utcnow

# open → notified → acknowledged → visited → closed; escalated when a deadline passes unanswered
# (from notified or acknowledged), and from escalated on to acknowledged / visited / closed.
ALERT_STATES = ("open", "notified", "escalated", "acknowledged", "visited", "closed")
ACTIVE_STATES = ("open", "notified", "escalated", "acknowledged", "visited")


class CareHousehold(Timestamps, Base):
    __tablename__ = "care_households"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)  # "H001" from the households file
    grid_id: Mapped[str] = mapped_column(String(32), index=True)
    address_enc: Mapped[str | None] = mapped_column(Text)
    senior_name_enc: Mapped[str] = mapped_column(Text)
    senior_gender: Mapped[str | None] = mapped_column(String(1))
    engine_state: Mapped[str | None] = mapped_column(Text)  # HouseholdState JSON, no personal data
    next_check_at: Mapped[datetime | None]


class CareContact(Base):
    """Someone to tell: the senior, family, grid worker … One row per person and role."""

    __tablename__ = "care_contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    household_id: Mapped[int] = mapped_column(ForeignKey("care_households.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer, default=0)
    name_enc: Mapped[str] = mapped_column(Text)
    phone_enc: Mapped[str | None] = mapped_column(Text)
    phone_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    relation: Mapped[str | None] = mapped_column(String(32))


class CareDevice(Base):
    """A sensor in a home. A device's token (stored as a keyed hash) may report readings for
    every device of its household: homes usually have one gateway forwarding for all sensors."""

    __tablename__ = "care_devices"

    id: Mapped[int] = mapped_column(primary_key=True)
    household_id: Mapped[int] = mapped_column(ForeignKey("care_households.id", ondelete="CASCADE"), index=True)
    device_uid: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    last_seen_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SensorReading(Base):
    __tablename__ = "sensor_readings"
    __table_args__ = (UniqueConstraint("device_id", "ts", name="uq_sensor_readings_device_ts"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    household_id: Mapped[int] = mapped_column(ForeignKey("care_households.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("care_devices.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[float] = mapped_column(Float)
    ts: Mapped[datetime]
    received_at: Mapped[datetime]


class UnknownReading(Base):
    """A reading from a device we do not know (or not of the token's home): kept aside for a
    person to look at, never run through the rules."""

    __tablename__ = "unknown_readings"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_device_id: Mapped[int | None] = mapped_column(ForeignKey("care_devices.id", ondelete="SET NULL"),
                                                        index=True)
    device_uid: Mapped[str] = mapped_column(String(64), index=True)
    household_code: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[float] = mapped_column(Float)
    ts: Mapped[datetime]
    reason: Mapped[str] = mapped_column(String(32))  # unknown_device / other_household
    received_at: Mapped[datetime]


class Alert(Timestamps, Base):
    __tablename__ = "care_alerts"
    __table_args__ = (Index("ix_care_alerts_household_key", "household_id", "alert_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    household_id: Mapped[int] = mapped_column(ForeignKey("care_households.id", ondelete="CASCADE"))
    rule: Mapped[str] = mapped_column(String(32))
    alert_key: Mapped[str] = mapped_column(String(100))  # the rule, or sensor_offline:<device>
    level: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON, no personal data
    raised_at: Mapped[datetime]
    notify_at: Mapped[datetime]
    notified_at: Mapped[datetime | None]
    notified_roles: Mapped[str] = mapped_column(String(300), default="[]")  # JSON list
    escalation_step: Mapped[int] = mapped_column(Integer, default=0)
    ack_due_at: Mapped[datetime | None]
    visit_due_at: Mapped[datetime | None]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    visited_at: Mapped[datetime | None]
    cleared_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]


class AlertEvent(Base):
    __tablename__ = "care_alert_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("care_alerts.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)  # JSON, contact ids not numbers
    at: Mapped[datetime]
