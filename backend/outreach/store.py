"""Outreach tables (revision 0010): check-in schedules and days, community notices and their
deliveries, outbound calls, and residents' contact preferences (language, channel, opt-outs).

Phones are SM4 text with a blind index, like the rest of the store; notices' texts are public
announcements, stored in clear. A delivery is unique per notice and phone, and a check-in day per
household and date, so a job run twice creates nothing twice.
"""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Boolean, Date, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backend.infra.models import Base, Timestamps

# A check-in day: planned → calling (attempts under way) → one final state.
CHECKIN_FINAL = ("ok", "help", "missed", "skipped")
# A notice's delivery: pending → sending → one final state.
DELIVERY_FINAL = ("delivered", "listened", "failed", "opted_out")


class ContactPreference(Timestamps, Base):
    """How a resident wants to be reached, by phone (blind index): spoken language, notices by
    SMS or voice, and the calls they asked us not to make (不要再打)."""

    __tablename__ = "contact_preferences"

    id: Mapped[int] = mapped_column(primary_key=True)
    phone_hash: Mapped[str] = mapped_column(String(64), unique=True)
    language: Mapped[str] = mapped_column(String(8), default="zh")  # zh | yue
    written_cantonese: Mapped[bool] = mapped_column(Boolean, default=False)  # SMS in 粤语 only if asked
    notice_channel: Mapped[str | None] = mapped_column(String(8))  # sms | voice | None: the notice's own
    no_notice_calls: Mapped[bool] = mapped_column(Boolean, default=False)
    set_by: Mapped[str] = mapped_column(String(64), default="resident")


class CheckinSchedule(Timestamps, Base):
    __tablename__ = "checkin_schedules"

    id: Mapped[int] = mapped_column(primary_key=True)
    household_id: Mapped[int] = mapped_column(ForeignKey("care_households.id", ondelete="CASCADE"), unique=True)
    window_start: Mapped[str] = mapped_column(String(5))  # local "09:00"
    window_end: Mapped[str] = mapped_column(String(5))
    days: Mapped[str] = mapped_column(String(7), default="1234567")  # ISO weekdays
    channel: Mapped[str] = mapped_column(String(8), default="voice")  # voice | sms
    sms_fallback: Mapped[bool] = mapped_column(Boolean, default=True)
    question: Mapped[str | None] = mapped_column(String(60))  # 今天吃药了吗
    retry_minutes: Mapped[int] = mapped_column(Integer, default=20)
    attempts: Mapped[int] = mapped_column(Integer, default=3)
    skip_if_active: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    enrolled_by: Mapped[str] = mapped_column(String(64))


class CheckinDay(Timestamps, Base):
    __tablename__ = "checkin_days"
    __table_args__ = (UniqueConstraint("household_id", "day", name="uq_checkin_days_household_day"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    household_id: Mapped[int] = mapped_column(ForeignKey("care_households.id", ondelete="CASCADE"), index=True)
    day: Mapped[date] = mapped_column(Date, index=True)
    state: Mapped[str] = mapped_column(String(16), default="planned")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    channel: Mapped[str] = mapped_column(String(8), default="voice")  # what the next attempt uses
    next_at: Mapped[datetime | None]
    answer: Mapped[str | None] = mapped_column(String(32))  # ok / help / question: yes|no
    alert_id: Mapped[int | None] = mapped_column(Integer)
    handoff_reference: Mapped[str | None] = mapped_column(String(8))
    finished_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(String(200))  # why skipped, what failed (no personal data)


class Notice(Timestamps, Base):
    __tablename__ = "notices"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(40))
    body: Mapped[str] = mapped_column(Text)
    audience: Mapped[str] = mapped_column(Text)  # JSON {"kind": "grid"|"building"|"list"|"all", …}
    channel: Mapped[str] = mapped_column(String(8))  # sms | voice | preference
    state: Mapped[str] = mapped_column(String(16), default="scheduled")  # scheduled|sending|sent|cancelled
    send_at: Mapped[datetime]
    segments: Mapped[int] = mapped_column(Integer)
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)  # a flood or typhoon warning: quiet hours do not hold it
    created_by: Mapped[str] = mapped_column(String(64))


class NoticeDelivery(Timestamps, Base):
    __tablename__ = "notice_deliveries"
    __table_args__ = (UniqueConstraint("notice_id", "phone_hash", name="uq_notice_deliveries_notice_phone"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    notice_id: Mapped[int] = mapped_column(ForeignKey("notices.id", ondelete="CASCADE"), index=True)
    phone_hash: Mapped[str] = mapped_column(String(64))
    phone_enc: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sms_id: Mapped[int | None] = mapped_column(Integer)  # its sms_outbox row
    repeats: Mapped[int] = mapped_column(Integer, default=0)  # pressed 9 / 再听一遍
    asked_person: Mapped[bool] = mapped_column(Boolean, default=False)  # pressed 0
    note: Mapped[str | None] = mapped_column(String(200))


class OutboundCall(Timestamps, Base):
    """One call we place. `placing` is committed before Twilio is asked, so a worker killed in
    between leaves a trace: the next run asks Twilio whether the call exists before placing it."""

    __tablename__ = "outbound_calls"

    id: Mapped[int] = mapped_column(primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))  # checkin | notice | callback
    ref_id: Mapped[int] = mapped_column(Integer, index=True)  # checkin_days / notice_deliveries id
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    dedupe_key: Mapped[str] = mapped_column(String(80), unique=True)
    to_hash: Mapped[str] = mapped_column(String(64), index=True)
    to_enc: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(String(8), default="zh")
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued|placing|placed|ended|failed
    call_sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[str | None] = mapped_column(String(16))  # Twilio's last CallStatus
    answered_by: Mapped[str | None] = mapped_column(String(24))
    outcome: Mapped[str | None] = mapped_column(String(16))  # what the callee did: ok, help, listened …
    placing_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
