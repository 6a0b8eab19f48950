"""Database schema (SQLAlchemy 2 typed models) of residents, cases, tickets, SMS and jobs.

Personal data never sits in clear: `*_enc` columns hold SM4 text from backend.infra.crypto,
`*_hash` columns hold blind indexes for equality lookups. The audit chain's tables are in
backend.infra.audit_chain. Changing a model means a new Alembic revision in
backend/migrations/versions (tests compare the two).
"""
from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ZERO_HASH = "0" * 64

# Stable constraint names, so Alembic revisions can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Statuses per case table; the first one is where a new case starts.
STATUSES: dict[str, tuple[str, ...]] = {
    "application": (
        "submitted", "accepted", "in_review", "need_more_info",
        "approved", "rejected", "completed", "cancelled",
    ),
    "booking": ("booked", "confirmed", "in_service", "completed", "cancelled", "no_show"),
    # The report → route → handle → feedback loop; transitions in backend.tickets.TRANSITIONS.
    "ticket": (
        "received", "categorised", "routed", "accepted", "in_progress", "resolved",
        "rated", "closed", "rejected", "duplicate", "reopened", "cancelled",
    ),
    "handoff": ("waiting", "taken", "closed"),
}
# What residents and staff see for each status code.
STATUS_LABELS_ZH: dict[str, str] = {
    "submitted": "已提交",
    "accepted": "已受理",
    "in_review": "审核中",
    "need_more_info": "需补充材料",
    "approved": "已通过",
    "rejected": "未通过",
    "completed": "已办结",
    "cancelled": "已取消",
    "booked": "已预约",
    "confirmed": "已确认",
    "in_service": "服务中",
    "no_show": "未到场",
    "received": "已收到",
    "categorised": "已分类",
    "routed": "已派单",
    "rated": "已评价",
    "duplicate": "已合并",
    "reopened": "重新处理",
    "in_progress": "处理中",
    "resolved": "已解决",
    "closed": "已结束",
    "waiting": "等待人工接听",
    "taken": "工作人员已接入",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Always timezone-aware UTC in Python. SQLite has no time zones, so it stores naive UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware value")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, date: Date}


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Resident(Timestamps, Base):
    __tablename__ = "residents"

    id: Mapped[int] = mapped_column(primary_key=True)
    id_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    id_enc: Mapped[str | None] = mapped_column(Text)
    phone_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    phone_enc: Mapped[str | None] = mapped_column(Text)
    name_enc: Mapped[str | None] = mapped_column(Text)
    # Derived from the ID number; kept in clear for age rules (allowances start at 80 etc.).
    birth_date: Mapped[date | None]
    gender: Mapped[str | None] = mapped_column(String(1))  # "M" / "F"
    address_enc: Mapped[str | None] = mapped_column(Text)
    grid_id: Mapped[str | None] = mapped_column(String(32), index=True)


class CaseColumns(Timestamps):
    """Columns every case table shares (applications, bookings, tickets, handoffs)."""

    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(String(8), unique=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    resident_id: Mapped[int | None] = mapped_column(
        ForeignKey("residents.id", ondelete="SET NULL"), index=True
    )
    phone_hash: Mapped[str | None] = mapped_column(String(64), index=True)  # of the subject
    submitted_by_hash: Mapped[str | None] = mapped_column(String(64), index=True)  # proxy phone
    channel: Mapped[str] = mapped_column(String(32))
    sender_hash: Mapped[str] = mapped_column(String(64), index=True)
    # Always idempotency_digest(...) of the caller's key: raw keys name the sender (an SMS
    # sender is a phone number), and this column is neither encrypted nor masked.
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)


IDEMPOTENCY_PREFIX = "k1:"


def idempotency_digest(cipher: Any, key: str) -> str:
    """What is stored for an idempotency key: a keyed SM3 hash (the blind index of purpose
    "idempotency"), so equal keys still meet but the column never holds a phone or an ID.
    The prefix tells these from the `legacy:<id>` keys migration 0007 left on older rows."""
    return IDEMPOTENCY_PREFIX + cipher.blind_index(key, "idempotency")


class Application(CaseColumns, Base):
    """Affairs: apply_senior_card, apply_residence_certificate, apply_elderly_allowance,
    apply_disability_subsidy, family_proxy …"""

    __tablename__ = "applications"

    category: Mapped[str] = mapped_column(String(64))
    fields_enc: Mapped[str | None] = mapped_column(Text)


class Booking(CaseColumns, Base):
    """book_meal, book_home_service, book_escort."""

    __tablename__ = "bookings"

    category: Mapped[str] = mapped_column(String(64))
    fields_enc: Mapped[str | None] = mapped_column(Text)


class Ticket(CaseColumns, Base):
    """report_issue (conversation) and 拍一拍 photo reports (SMS/MMS, Open311).

    `category` is how it came in (the form name, "photo_report", "open311"); `service_code`
    is the taxonomy category it was sorted into (config.yml `tickets.taxonomy`).
    """

    __tablename__ = "tickets"

    category: Mapped[str] = mapped_column(String(64))
    description_enc: Mapped[str | None] = mapped_column(Text)
    location_enc: Mapped[str | None] = mapped_column(Text)
    fields_enc: Mapped[str | None] = mapped_column(Text)
    grid_id: Mapped[str | None] = mapped_column(String(32), index=True)
    department: Mapped[str | None] = mapped_column(String(64))
    service_code: Mapped[str | None] = mapped_column(String(32), index=True)
    # Where the problem is (not where the resident lives): public, so Open311 and duplicate
    # detection can use it. `place` is coarse (小区 + 楼), never a room number.
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    place: Mapped[str | None] = mapped_column(String(120))
    location_source: Mapped[str | None] = mapped_column(String(16))  # exif / text / reply / staff
    contact_enc: Mapped[str | None] = mapped_column(Text)  # the number status SMS go to
    ocr_text_enc: Mapped[str | None] = mapped_column(Text)
    duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="SET NULL"))
    rating: Mapped[int | None]
    awaiting: Mapped[str | None] = mapped_column(String(16))  # "location": a question is out
    intake_until: Mapped[datetime | None]  # photos sent one by one join this report until then
    status_note: Mapped[str | None] = mapped_column(Text)  # public, masked (Open311 status_notes)
    due_at: Mapped[datetime | None] = mapped_column(index=True)  # category SLA (config.yml tickets.sla_hours)
    escalated_at: Mapped[datetime | None] = mapped_column()  # the overdue job told the department head


class TicketMedia(Base):
    """A photo of a report (role "report") or of the fix (role "resolution").

    The file lives content-addressed under DATA_DIR/media/<sha256[:2]>/<sha256>.<ext> with its
    EXIF removed; the GPS read from it before stripping is kept here.
    """

    __tablename__ = "ticket_media"
    __table_args__ = (UniqueConstraint("ticket_id", "position", name="uq_ticket_media_ticket_position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16), default="report")
    source_url_enc: Mapped[str | None] = mapped_column(Text)  # provider URLs are capabilities
    declared_type: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16))  # pending / stored / rejected
    error: Mapped[str | None] = mapped_column(String(32))
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    content_type: Mapped[str | None] = mapped_column(String(32))
    size: Mapped[int | None]
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    ocr_text_enc: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SmsInbound(Base):
    """Every accepted inbound SMS/MMS, keyed by Twilio's MessageSid: a redelivered webhook
    finds its row and gets the stored answer, creating nothing new."""

    __tablename__ = "sms_inbound"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_sid: Mapped[str] = mapped_column(String(64), unique=True)
    from_hash: Mapped[str] = mapped_column(String(64), index=True)
    body_enc: Mapped[str | None] = mapped_column(Text)
    num_media: Mapped[int] = mapped_column(Integer, default=0)
    route: Mapped[str] = mapped_column(String(16))  # conversation / report / keyword / location / rejected
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="SET NULL"), index=True)
    reply_enc: Mapped[str | None] = mapped_column(Text)  # JSON list of SMS segments answered
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SmsOutbox(Base):
    """Durable outbound SMS. A worker drains due rows (send_state pending, next_attempt_at
    passed, or a `sending` lease that expired because its worker died) with back-off."""

    __tablename__ = "sms_outbox"
    __table_args__ = (Index("ix_sms_outbox_due", "send_state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    to_hash: Mapped[str] = mapped_column(String(64), index=True)
    to_enc: Mapped[str] = mapped_column(Text)
    body_enc: Mapped[str] = mapped_column(Text)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="SET NULL"), index=True)
    send_state: Mapped[str] = mapped_column(String(16))  # pending / sending / sent / failed / suppressed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    locked_until: Mapped[datetime | None]
    provider_sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    delivery_status: Mapped[str | None] = mapped_column(String(16))  # Twilio MessageStatus
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SmsOptOut(Base):
    """TD/退订 honoured per number; 开通 turns messages back on. Changes are audited."""

    __tablename__ = "sms_optouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    phone_hash: Mapped[str] = mapped_column(String(64), unique=True)
    opted_out: Mapped[bool] = mapped_column(Boolean)
    message_sid: Mapped[str | None] = mapped_column(String(64))
    changed_at: Mapped[datetime]


class Job(Base):
    """Background work (backend.infra.jobs): at-least-once, so every handler is idempotent. Payloads
    carry row ids only, never personal data."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_due", "state", "run_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))  # queued / running / done / failed
    run_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None]
    locked_by: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Handoff(CaseColumns, Base):
    """A conversation waiting for a human (status waiting / taken / closed)."""

    __tablename__ = "handoffs"

    reason: Mapped[str] = mapped_column(String(32))
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    transcript_enc: Mapped[str | None] = mapped_column(Text)
    form_name: Mapped[str | None] = mapped_column(String(64))
    form_slots_enc: Mapped[str | None] = mapped_column(Text)
    taken_by: Mapped[str | None] = mapped_column(String(64))


CASE_MODELS: dict[str, type[Application | Booking | Ticket | Handoff]] = {
    "application": Application,
    "booking": Booking,
    "ticket": Ticket,
    "handoff": Handoff,
}


class StatusEvent(Base):
    """One row per status transition of a case, creation included (from_status None)."""

    __tablename__ = "status_events"
    __table_args__ = (Index("ix_status_events_entity", "entity_type", "entity_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[int] = mapped_column(Integer)
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)
