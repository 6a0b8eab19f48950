"""Database schema (SQLAlchemy 2 typed models) and the tamper-evident audit chain.

Personal data never sits in clear: `*_enc` columns hold SM4 text from backend.crypto,
`*_hash` columns hold blind indexes for equality lookups. Changing a model means a new
Alembic revision in backend/migrations/versions (tests compare the two).
"""
from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    DDL,
    Boolean,
    Date,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

from backend.crypto import hmac_sm3_hex, sm3_hex

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
    """Background work (backend.jobs): at-least-once, so every handler is idempotent. Payloads
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


# --- Audit chain -------------------------------------------------------------------------------
class AuditEntry(Base):
    """Append-only; each row's hash covers the previous row's hash, so an edited, deleted or
    reordered row breaks the chain from that row on.

    key_version 0: legacy plain SM3 link (rows written before audit keys; anyone can recompute
    them, so they are accepted only as the chain's prefix). key_version ≥ 1: HMAC-SM3 link with
    that version of the audit key, which a database writer without the key cannot forge."""

    __tablename__ = "audit_entries"

    # Assigned under the audit_head lock (last_id + 1), not by the database, because the id is
    # part of the hashed content and must be known before insert.
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # create / read / update
    entity_type: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON, never personal data in clear
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    key_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    def compute_hash(self, keys: Mapping[int, bytes] | None = None) -> str:
        """Raises AuditKeyMissing for a keyed entry whose key version is not loaded."""
        return entry_hash({"id": self.id, "at": self.at, "actor": self.actor, "action": self.action,
                           "entity_type": self.entity_type, "entity_id": self.entity_id, "detail": self.detail,
                           "prev_hash": self.prev_hash, "key_version": self.key_version or 0}, keys)


class AuditKeyMissing(LookupError):
    """A keyed audit entry whose key version is not loaded: it cannot be checked."""


def entry_hash(row: Mapping[str, Any], keys: Mapping[int, bytes] | None = None) -> str:
    """The link of one entry: over the previous hash and the entry's canonical JSON (its detail
    already canonical). Version 0: plain SM3 (legacy). Else HMAC-SM3 with that audit key, the
    version itself inside the MAC so it cannot be swapped."""
    version = int(row.get("key_version") or 0)
    content = {
        "id": row["id"], "at": row["at"].astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": row["actor"], "action": row["action"], "entity_type": row["entity_type"],
        "entity_id": row["entity_id"], "detail": row["detail"],
    }
    if version == 0:
        return sm3_hex((row["prev_hash"] + canonical_json(content)).encode("utf-8"))
    key = (keys or {}).get(version)
    if key is None:
        raise AuditKeyMissing(version)
    message = "audit-entry\0" + row["prev_hash"] + canonical_json({**content, "key_version": version})
    return hmac_sm3_hex(key, message.encode("utf-8"))


@dataclass(frozen=True)
class AuditBinding:
    """Audit keys (and an optional checkpoint hook) of one engine, set by backend.audit.bind."""

    keys: Mapping[int, bytes]
    active: int
    # Called after commit with (last_id, last_hash) of a committed append, at most every
    # `interval` seconds per process (signed checkpoints outside the database).
    on_commit: Callable[[int, str], None] | None = None
    interval: float = 300.0
    last_call: list[float] = field(default_factory=lambda: [float("-inf")], compare=False)


# Keyed by engine, not global: tests and tools open several stores with different keys in one
# process. An engine without a binding writes legacy (version 0) links.
_AUDIT_BINDINGS: weakref.WeakKeyDictionary[Engine, AuditBinding] = weakref.WeakKeyDictionary()


def bind_audit_keys(engine: Engine, binding: AuditBinding | None) -> None:
    if binding is None:
        _AUDIT_BINDINGS.pop(engine, None)
    else:
        _AUDIT_BINDINGS[engine] = binding


def audit_binding(session: Session) -> AuditBinding | None:
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else getattr(bind, "engine", None)
    return _AUDIT_BINDINGS.get(engine) if engine is not None else None


class AuditHead(Base):
    """Exactly one row (id 1): the chain's tip. Appenders lock it, which serialises appends,
    and verification compares it with the last entry, so a truncated tail is detected too."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_id: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))


# Seed the head row when tables are made with metadata.create_all (the migration seeds it too).
event.listen(
    AuditHead.__table__,
    "after_create",
    DDL(f"INSERT INTO audit_head (id, last_id, last_hash) VALUES (1, 0, '{ZERO_HASH}')"),
)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class AppendedAudit:
    id: int
    hash: str


_AUDIT_ENTRIES = AuditEntry.__table__
_AUDIT_HEAD = AuditHead.__table__
# Core statements built once: this runs in every write of personal data, and the ORM unit of work
# (identity map, flush) cost more than the SQL itself while the head lock is held.
_LOCK_HEAD = (select(_AUDIT_HEAD.c.last_id, _AUDIT_HEAD.c.last_hash)
              .where(_AUDIT_HEAD.c.id == 1).with_for_update())
_INSERT_ENTRY = insert(_AUDIT_ENTRIES)
_MOVE_HEAD = update(_AUDIT_HEAD).where(_AUDIT_HEAD.c.id == 1)


def append_audit(
    session: Session,
    *,
    at: datetime,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: int | None,
    detail: Mapping[str, Any],
) -> AppendedAudit:
    """Appends one entry inside the caller's transaction.

    The head row is taken with SELECT … FOR UPDATE (Postgres row lock; SQLite ignores it, but
    there every transaction starts with BEGIN IMMEDIATE, see backend.db). Call it last in a unit
    of work so the lock is held only until commit and lock order is always data → head.
    """
    return append_audits(session, at, [dict(actor=actor, action=action, entity_type=entity_type,
                                            entity_id=entity_id, detail=detail)])[-1]


def append_audits(session: Session, at: datetime, entries: Sequence[Mapping[str, Any]]) -> list[AppendedAudit]:
    """Several entries under one take of the head lock (a unit of work's audits, in order)."""
    session.flush()  # the data these entries describe is written first (lock order data → head)
    conn = session.connection()
    binding = audit_binding(session)
    version = binding.active if binding is not None else 0
    keys = binding.keys if binding is not None else None
    last_id, last_hash = conn.execute(_LOCK_HEAD).one()
    at = at.astimezone(UTC)
    rows, appended = [], []
    for entry in entries:
        last_id += 1
        row = {"id": last_id, "at": at, "actor": entry["actor"], "action": entry["action"],
               "entity_type": entry["entity_type"], "entity_id": entry["entity_id"],
               "detail": canonical_json(dict(entry["detail"])), "prev_hash": last_hash, "key_version": version}
        last_hash = row["hash"] = entry_hash(row, keys)
        rows.append(row)
        appended.append(AppendedAudit(last_id, last_hash))
    if rows:
        conn.execute(_INSERT_ENTRY, rows)
        conn.execute(_MOVE_HEAD, {"last_id": last_id, "last_hash": last_hash})
        if binding is not None and binding.on_commit is not None \
                and time.monotonic() - binding.last_call[0] >= binding.interval:
            # Only a committed head may be signed: handed to the after_commit listener below.
            session.info["audit_checkpoint"] = (binding, last_id, last_hash)
    return appended


@event.listens_for(Session, "after_commit")
def _checkpoint_after_commit(session: Session) -> None:
    pending = session.info.pop("audit_checkpoint", None)
    if pending is None:
        return
    binding, last_id, last_hash = pending
    binding.last_call[0] = time.monotonic()
    try:
        binding.on_commit(last_id, last_hash)
    except Exception:  # the data is committed; a failed checkpoint must not fail the request
        logging.getLogger(__name__).exception("could not write the audit checkpoint")


@event.listens_for(Session, "after_rollback")
def _drop_checkpoint(session: Session) -> None:
    session.info.pop("audit_checkpoint", None)


def verify_audit_chain(session: Session, keys: Mapping[int, bytes] | None = None) -> int | None:
    """Id of the first broken entry, or None when the whole chain checks out.

    Broken means: recomputed hash differs (edited, or re-chained with a wrong key), the entry's
    key version is not loaded, a legacy (version 0) entry follows a keyed one (re-chained with
    plain SM3), prev_hash does not match the previous row or the id is not the next one
    (deleted or reordered), or the head disagrees with the last row (tail deleted: the id
    returned is the first missing one). `keys` default to the engine's binding.
    """
    if keys is None:
        binding = audit_binding(session)
        keys = binding.keys if binding is not None else {}
    expected_id, expected_prev, keyed = 1, ZERO_HASH, False
    result = session.execute(
        select(AuditEntry)
        .order_by(AuditEntry.id)
        # read what is stored now, not rows this session may hold from earlier
        .execution_options(yield_per=1000, populate_existing=True)
    )
    try:
        for entry in result.scalars():
            if (
                entry.id != expected_id
                or entry.prev_hash != expected_prev
                or (keyed and not entry.key_version)
                or entry.key_version not in (0, *keys)
                or entry.hash != entry.compute_hash(keys)
            ):
                return min(entry.id, expected_id)
            expected_id, expected_prev, keyed = entry.id + 1, entry.hash, keyed or bool(entry.key_version)
    finally:
        result.close()  # may stop early: release the (server-side) cursor
    head = session.get(AuditHead, 1, populate_existing=True)
    last_id = expected_id - 1
    if head is None:
        return None if last_id == 0 else expected_id
    if head.last_id > last_id:
        return last_id + 1
    if head.last_id < last_id:
        return head.last_id + 1
    if head.last_hash != expected_prev:
        return max(last_id, 1)
    return None
