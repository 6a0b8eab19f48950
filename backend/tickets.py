"""The ticket loop: report → categorise → route → handle → feedback.

State machine (every transition a StatusEvent row with actor and time, and an audit entry):

    received → categorised → routed → accepted → in_progress → resolved → rated → closed
    (+ rejected, duplicate, cancelled; reopened from resolved/rated/rejected; low ratings reopen)

Categories and departments come from config.yml (`tickets.taxonomy`, `grid_departments`);
places from the gazetteer, EXIF GPS or one question back. The resident gets an SMS (through
the durable outbox, in the same transaction as the change) at each public step.

`process` is the background job for a new ticket: fetch and check photos, read their GPS and
text, categorise, locate, link duplicates, route. It is idempotent (at-least-once jobs): each
step looks at what is already stored and every SMS has a dedupe key.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

try:
    import fcntl
except ImportError:  # not on Windows: SQLite's own busy handler then does the waiting
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from assistant.ports import Clock
from assistant.privacy import mask_text
from backend.crypto import FieldCipher
from backend.gazetteer import Gazetteer, Location, ServiceArea, distance_m
from backend.jobs import PermanentJobError, enqueue_in
from backend.media import MediaError, MediaPolicy, MediaStore
from backend.models import STATUS_LABELS_ZH, StatusEvent, Ticket, TicketMedia, append_audits, idempotency_digest
from backend.ocr import TextReader
from backend.outbox import Outbox
from backend.references import is_valid_reference, new_reference
from backend.sms_format import segments
from backend.sms_texts import DEFAULT_TEXTS

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSITIONS: dict[str, frozenset[str]] = {
    "received": frozenset({"categorised", "rejected", "duplicate", "cancelled"}),
    "categorised": frozenset({"routed", "rejected", "duplicate", "cancelled"}),
    "routed": frozenset({"routed", "accepted", "rejected", "cancelled"}),
    "accepted": frozenset({"in_progress", "resolved", "rejected"}),
    "in_progress": frozenset({"resolved", "rejected"}),
    "resolved": frozenset({"rated", "closed", "reopened"}),
    "rated": frozenset({"closed", "reopened"}),
    "reopened": frozenset({"routed", "accepted", "in_progress", "resolved", "rejected"}),
    "rejected": frozenset({"reopened"}),
    "duplicate": frozenset({"reopened"}),
    "closed": frozenset(),
    "cancelled": frozenset(),
}
# Still being worked on: duplicates link to these, residents can cancel them.
OPEN_STATUSES = frozenset({"received", "categorised", "routed", "accepted", "in_progress", "reopened"})
# Steps the resident is told about by SMS when they happen (routed/duplicate come from `process`).
PUBLIC_STEPS = {"accepted": "accepted", "in_progress": "in_progress", "resolved": "resolved",
                "rejected": "rejected", "reopened": "reopened", "cancelled": "cancelled"}
MEDIA_ERROR_WORDS = {"host_not_allowed": "链接不可信", "too_large": "照片太大", "bad_type": "格式不支持",
                     "not_image": "不是照片", "fetch_failed": "下载失败"}


# Prebuilt Core statements for the webhook's hot path (compiled once, cached by SQLAlchemy).
_INSERT_TICKET = insert(Ticket.__table__).returning(Ticket.__table__.c.id)
_INSERT_EVENT = insert(StatusEvent.__table__)
_INSERT_MEDIA = insert(TicketMedia.__table__)
_t = Ticket.__table__.c
_OPEN_REPORT = (select(_t.id).where(_t.phone_hash == bindparam("phone_hash"), _t.channel == "sms",
                                    _t.status == "received", _t.intake_until > bindparam("now"))
                .order_by(_t.id.desc()).limit(1))


class TransitionError(ValueError):
    """The ticket cannot go there from where it is (e.g. resolve a closed ticket)."""


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    keywords: tuple[str, ...]
    department: str | None


class Taxonomy:
    def __init__(self, categories: Sequence[Category]) -> None:
        if not categories:
            raise ValueError("tickets.taxonomy is empty")
        self.categories = tuple(categories)
        self._by_code = {c.code: c for c in categories}
        self.fallback = self._by_code.get("other") or categories[-1]

    @classmethod
    def from_config(cls, items: Sequence[Mapping[str, Any]] | None) -> Taxonomy:
        return cls([Category(str(i["code"]), str(i["name"]), tuple(i.get("keywords") or ()), i.get("department"))
                    for i in items or ()])

    def get(self, code: str | None) -> Category | None:
        return self._by_code.get(code or "")

    def categorise(self, text: str) -> Category:
        """The category whose keywords cover most characters of the text; none → fallback.

        Each character counts once, for the longest (then earliest) keyword over it, so in
        "楼道灯不亮" 楼道灯 (property) wins over the overlapping 灯不亮 (street light)."""
        hits = sorted(
            ((-len(k), m.start(), k, c) for c in self.categories for k in c.keywords if k
             for m in re.finditer(re.escape(k), text)),
            key=lambda h: (h[0], h[1]),
        )
        taken: set[int] = set()
        scores: dict[str, int] = {}
        for negative_length, start, _keyword, category in hits:
            span = set(range(start, start - negative_length))
            if span & taken:
                continue
            taken |= span
            scores[category.code] = scores.get(category.code, 0) - negative_length
        if not scores:
            return self.fallback
        best = max(scores.values())
        return next(c for c in self.categories if scores.get(c.code) == best)


@dataclass(frozen=True)
class LoopSettings:
    report_window: timedelta = timedelta(seconds=120)
    location_answer: timedelta = timedelta(hours=24)
    max_text_chars: int = 500
    service_area: ServiceArea | None = None
    duplicate_radius_m: float = 100.0
    duplicate_window: timedelta = timedelta(hours=48)
    triage_queue: str = "人工分拣"
    grid_departments: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    texts: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TEXTS))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], texts: Mapping[str, str]) -> LoopSettings:
        sms = config.get("sms") or {}
        tickets = config.get("tickets") or {}
        return cls(
            report_window=timedelta(seconds=float(sms.get("report_window_seconds", 120))),
            location_answer=timedelta(hours=float(sms.get("location_answer_hours", 24))),
            max_text_chars=int(sms.get("max_text_chars", 500)),
            service_area=ServiceArea.from_config(sms.get("service_area")),
            duplicate_radius_m=float(tickets.get("duplicate_radius_m", 100)),
            duplicate_window=timedelta(hours=float(tickets.get("duplicate_hours", 48))),
            triage_queue=str(tickets.get("triage_queue", "人工分拣")),
            grid_departments={str(g): dict(m) for g, m in (tickets.get("grid_departments") or {}).items()},
            texts=texts,
        )


def media_policy_from_config(config: Mapping[str, Any], env: Mapping[str, str]) -> MediaPolicy:
    from backend.media import parse_hosts

    media = config.get("media") or {}
    default = MediaPolicy()
    return MediaPolicy(
        allowed_hosts=parse_hosts(env.get("MEDIA_ALLOWED_HOSTS"), default.allowed_hosts),
        allowed_types=tuple(media.get("allowed_types") or default.allowed_types),
        max_bytes=int(media.get("max_bytes", default.max_bytes)),
        max_per_report=int(media.get("max_per_report", default.max_per_report)),
    )


@dataclass(frozen=True)
class IncomingMedia:
    url: str
    content_type: str


@dataclass(frozen=True)
class IntakeResult:
    ticket_id: int
    reference: str
    reply: str


@dataclass(frozen=True)
class TicketView:
    """A ticket for staff and for Open311 (public fields only unless `private` is filled)."""

    reference: str
    status: str
    service_code: str | None
    category_name: str | None
    department: str | None
    place: str | None
    latitude: float | None
    longitude: float | None
    channel: str
    created_at: datetime
    updated_at: datetime
    status_note: str | None
    rating: int | None
    duplicate_of: str | None
    media: tuple[tuple[str, str], ...]  # (sha256, role) of stored photos
    private: Mapping[str, Any] = field(default_factory=dict)  # description, location, contact …
    events: tuple[tuple[str | None, str, str, datetime], ...] = ()


class UnitOfWork:
    """One transaction's session plus the audit entries to append at its end (audit last keeps
    the lock order data → audit head, see models.append_audit)."""

    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now
        self.audits: list[dict[str, Any]] = []

    def audit(self, actor: str, action: str, entity_id: int | None, *, entity_type: str = "ticket",
              **detail: Any) -> None:
        self.audits.append({"actor": actor[:64], "action": action, "entity_type": entity_type,
                            "entity_id": entity_id, "detail": detail})


class WriteGate:
    """Queues this process's SQLite writers on an OS file lock before BEGIN IMMEDIATE.

    SQLite's busy handler waits for the write lock by sleeping (1, 2, 5 … 100 ms), so two busy
    server processes spend most of a webhook's latency asleep; a waiter here retries the file lock
    within a millisecond of the holder letting go. Postgres needs none of this (row locks), so there it is a no-op.
    """

    timeout = 4.0  # seconds; then BEGIN IMMEDIATE may wait SQLite's busy_timeout (backend.db)

    def __init__(self, path: str | None) -> None:
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing the fd
        self._fd: int | None = None
        if path:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @classmethod
    def for_sessions(cls, sessions: sessionmaker[Session]) -> WriteGate:
        bind = sessions.kw.get("bind")
        url = getattr(bind, "url", None)
        if url is None or url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") \
                or fcntl is None:
            return cls(None)
        return cls(f"{url.database}.writelock")

    def __enter__(self) -> None:
        if self._fd is None:
            return
        deadline = time.monotonic() + self.timeout
        if not self._thread_lock.acquire(timeout=self.timeout):
            raise TimeoutError("database write lock busy")
        pause = 0.0001
        # Bounded, so a saturated store still lets the webhook answer "busy" inside Twilio's 15 s
        # (this wait + SQLite's busy_timeout stay under 13 s). Polling (0.1 → 1 ms; a poll is one
        # syscall) instead of a blocking flock, which cannot be given a deadline.
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._thread_lock.release()
                    raise TimeoutError("database write lock busy") from None
                time.sleep(pause)
                pause = min(pause * 1.5, 0.001)

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()


class TicketDesk:
    def __init__(self, sessions: sessionmaker[Session], cipher: FieldCipher, clock: Clock, outbox: Outbox,
                 settings: LoopSettings, taxonomy: Taxonomy, gazetteer: Gazetteer, media: MediaStore,
                 reader: TextReader) -> None:
        self._sessions = sessions
        self._cipher = cipher
        self._clock = clock
        self.outbox = outbox
        self.settings = settings
        self.taxonomy = taxonomy
        self.gazetteer = gazetteer
        self.media = media
        self.reader = reader
        self._gate = WriteGate.for_sessions(sessions)

    # --- plumbing ------------------------------------------------------------------------------
    def now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def run(self, work: Callable[[UnitOfWork], T], attempts: int = 5) -> T:
        """`work` in one transaction, audits appended last; unique clashes and Postgres
        deadlocks run it again from the start."""
        for attempt in range(attempts):
            try:
                with self._gate, self._sessions() as session, session.begin():
                    unit = UnitOfWork(session, self.now())
                    result = work(unit)
                    append_audits(session, unit.now, unit.audits)
                    return result
            except (IntegrityError, OperationalError) as exc:
                sqlstate = getattr(exc.orig, "sqlstate", None)
                retry = isinstance(exc, IntegrityError) or sqlstate in {"40001", "40P01"}
                if not retry or attempt + 1 == attempts:
                    raise
        raise AssertionError("unreachable")

    def text(self, key: str, **values: Any) -> str:
        return self.settings.texts[key].format(**values)

    def phone_hash(self, phone: str) -> str:
        return self._cipher.blind_index(phone, "phone")

    def _notify(self, unit: UnitOfWork, ticket: Ticket, key: str, dedupe: str, **values: Any) -> None:
        contact = self._cipher.decrypt(ticket.contact_enc)
        if not contact:
            return
        body = self.text(key, ref=ticket.reference, **values)
        # Long names (a department, a place) can push a sentence past one SMS: send it as
        # numbered ≤70-character messages rather than trusting old phones to join segments.
        for i, part in enumerate(segments(body)):
            suffix = f":{i}" if i else ""
            self.outbox.enqueue_in(unit.session, contact, part, f"ticket:{ticket.id}:{dedupe}{suffix}", ticket.id)


    def _department_label(self, ticket: Ticket) -> str:
        return ticket.department or self.settings.triage_queue

    def _category_name(self, ticket: Ticket) -> str:
        category = self.taxonomy.get(ticket.service_code)
        return category.name if category else "报修"

    # --- state machine -------------------------------------------------------------------------
    def move(self, unit: UnitOfWork, ticket: Ticket, to: str, actor: str, note: str | None = None,
             *, notify: bool = True) -> None:
        if to not in TRANSITIONS.get(ticket.status, frozenset()):
            raise TransitionError(f"{ticket.reference}: {ticket.status} → {to} is not allowed")
        from_status = ticket.status
        ticket.status, ticket.updated_at = to, unit.now
        masked = mask_text(note)[:500] if note else None
        if masked:
            ticket.status_note = masked
        unit.session.add(StatusEvent(entity_type="ticket", entity_id=ticket.id, from_status=from_status,
                                     to_status=to, actor=actor[:64], note=masked, at=unit.now))
        unit.session.flush()
        if notify and to in PUBLIC_STEPS:
            event_count = unit.session.scalar(
                select(func.count()).select_from(StatusEvent)
                .where(StatusEvent.entity_type == "ticket", StatusEvent.entity_id == ticket.id)
            )
            values = {"department": self._department_label(ticket), "note": _short(masked or "已处理", 24)}
            self._notify(unit, ticket, PUBLIC_STEPS[to], f"{to}:{event_count}", **values)
            if to == "resolved":  # those whose reports were merged into this one hear it too
                for dup in unit.session.scalars(select(Ticket).where(Ticket.duplicate_of_id == ticket.id,
                                                                     Ticket.status == "duplicate")):
                    self._notify(unit, dup, "resolved", f"original-resolved:{ticket.id}:{event_count}", **values)
        unit.audit(actor, "update", ticket.id, reference=ticket.reference, **{"from": from_status, "to": to})

    # --- intake (SMS/MMS webhook, inside its transaction) --------------------------------------------
    def open_report(self, unit: UnitOfWork, phone_hash: str) -> Ticket | None:
        """The photo report this number is still sending photos to, if any. (A Core query first:
        most messages find none, and this runs inside the webhook's write transaction.)"""
        ticket_id = unit.session.connection().execute(
            _OPEN_REPORT, {"phone_hash": phone_hash, "now": unit.now}).scalar()
        return None if ticket_id is None else unit.session.get(Ticket, ticket_id, with_for_update=True)

    def awaiting_location(self, unit: UnitOfWork, phone_hash: str) -> Ticket | None:
        return unit.session.scalar(
            select(Ticket)
            .where(Ticket.phone_hash == phone_hash, Ticket.awaiting == "location",
                   Ticket.status.in_(OPEN_STATUSES),
                   Ticket.updated_at > unit.now - self.settings.location_answer)
            .order_by(Ticket.id.desc()).limit(1).with_for_update()
        )

    def _schedule(self, unit: UnitOfWork, ticket: Ticket, run_at: datetime, *, new: bool = False) -> None:
        enqueue_in(unit.session, "ticket.process", {"ticket_id": ticket.id}, run_at,
                   dedupe_key=f"ticket.process:{ticket.id}", now=unit.now, new=new)

    def intake_photos(self, unit: UnitOfWork, phone: str, message_sid: str, body: str,
                      media: Sequence[IncomingMedia], *, phone_hash: str | None = None) -> IntakeResult:
        """An MMS: starts a report or joins the one whose window is open. Media URLs are only
        checked here (host, declared type); fetching happens in the job.

        The hot path of the webhook: a new report is written with Core inserts (no ORM unit of
        work), because on SQLite every millisecond here is spent holding the write lock."""
        policy = self.media.policy
        phone_hash = phone_hash or self.phone_hash(phone)
        ticket = self.open_report(unit, phone_hash)
        joined = ticket is not None
        intake_until = unit.now + self.settings.report_window
        have = 0
        if ticket is None:
            ticket_id, ref = self._insert_ticket(unit, phone, phone_hash, f"sms:{message_sid}", body, intake_until)
        else:
            ticket_id, ref = ticket.id, ticket.reference
            if body:
                self._append_description(ticket, body)
            ticket.intake_until, ticket.updated_at = intake_until, unit.now
            have = unit.session.scalar(
                select(func.count()).select_from(TicketMedia)
                .where(TicketMedia.ticket_id == ticket_id, TicketMedia.role == "report")) or 0
        rows: list[dict[str, Any]] = []
        refused, over = 0, 0
        for item in media:
            if not policy.type_allowed(item.content_type) or not policy.host_allowed(item.url):
                refused += 1
            elif have + len(rows) >= policy.max_per_report:
                over += 1
            else:
                rows.append({"ticket_id": ticket_id, "position": have + len(rows), "role": "report",
                             "source_url_enc": self._cipher.encrypt(item.url),
                             "declared_type": item.content_type[:100], "state": "pending",
                             "created_at": unit.now, "updated_at": unit.now})
        if rows:
            unit.session.connection().execute(_INSERT_MEDIA, rows)
        # Process once the window closes (each photo pushes it on); the job is re-armed, not doubled.
        enqueue_in(unit.session, "ticket.process", {"ticket_id": ticket_id}, intake_until,
                   dedupe_key=f"ticket.process:{ticket_id}", now=unit.now, new=not joined)
        accepted, count = len(rows), have + len(rows)
        if over:
            reply = self.text("ack_too_many", max=policy.max_per_report, count=count, ref=ref)
        elif refused and not accepted:
            reply = self.text("ack_media_refused_ref", ref=ref)
        elif joined:
            reply = self.text("ack_more", count=count, ref=ref) if accepted else self.text("ack_text_added", ref=ref)
        else:
            reply = self.text("ack_report", ref=ref)
        if refused and accepted:
            reply += self.text("ack_media_refused_ref", ref=ref).split("。")[0] + "。"
        unit.audit("resident:sms", "update" if joined else "create", ticket_id, reference=ref,
                   media_accepted=accepted, media_refused=refused + over)
        return IntakeResult(ticket_id, ref, reply)

    def _insert_ticket(self, unit: UnitOfWork, phone: str, phone_hash: str, idempotency_key: str, body: str,
                       intake_until: datetime) -> tuple[int, str]:
        # A reference already taken fails the insert; run() then starts over with a new one.
        reference = new_reference("ticket")
        conn = unit.session.connection()
        ticket_id = conn.execute(_INSERT_TICKET, {
            "reference": reference, "status": "received", "phone_hash": phone_hash, "channel": "sms",
            "sender_hash": phone_hash, "idempotency_key": idempotency_digest(self._cipher, idempotency_key),
            "category": "photo_report",
            "description_enc": self._cipher.encrypt(body[: self.settings.max_text_chars] or None),
            "contact_enc": self._cipher.encrypt(phone), "intake_until": intake_until,
            "created_at": unit.now, "updated_at": unit.now,
        }).scalar_one()
        conn.execute(_INSERT_EVENT, {"entity_type": "ticket", "entity_id": ticket_id, "from_status": None,
                                     "to_status": "received", "actor": "resident:sms", "note": None,
                                     "at": unit.now})
        return ticket_id, reference

    def add_text(self, unit: UnitOfWork, ticket: Ticket, text: str) -> IntakeResult:
        """A text sent while the photo window is open describes the photos."""
        self._append_description(ticket, text)
        ticket.updated_at = unit.now
        self._schedule(unit, ticket, ticket.intake_until or unit.now)
        return IntakeResult(ticket.id, ticket.reference, self.text("ack_text_added", ref=ticket.reference))

    def _append_description(self, ticket: Ticket, text: str) -> None:
        old = self._cipher.decrypt(ticket.description_enc) or ""
        new = (old + " " + text).strip() if old else text.strip()
        ticket.description_enc = self._cipher.encrypt(new[: self.settings.max_text_chars])

    def _create(self, unit: UnitOfWork, contact: str | None, phone_hash: str | None, idempotency_key: str,
                category: str, channel: str, description: str | None, **extra: Any) -> Ticket:
        ticket = Ticket(
            # A reference already taken fails the insert; run() then starts over with a new one.
            reference=new_reference("ticket"), status="received", phone_hash=phone_hash,
            channel=channel, sender_hash=phone_hash or "", idempotency_key=idempotency_digest(self._cipher, idempotency_key),
            category=category, description_enc=self._cipher.encrypt(description or None),
            contact_enc=self._cipher.encrypt(contact) if contact else None,
            created_at=unit.now, updated_at=unit.now, **extra,
        )
        unit.session.add(ticket)
        unit.session.flush()
        unit.session.add(StatusEvent(entity_type="ticket", entity_id=ticket.id, from_status=None,
                                     to_status="received", actor=f"resident:{channel}", at=unit.now))
        return ticket

    def answer_location(self, unit: UnitOfWork, ticket: Ticket, text: str) -> IntakeResult:
        """The resident's reply to "在哪个小区哪栋楼？". A place we do not know is still taken:
        asking again and again would only tire the resident; staff can fix it."""
        location = self.gazetteer.parse(text) or Location(
            place=_public_place(text), grid=None, lat=None, lon=None, detail=text.strip()[:200])
        self._set_location(ticket, location, "reply")
        ticket.awaiting, ticket.updated_at = None, unit.now
        self._schedule(unit, ticket, unit.now)
        unit.audit("resident:sms", "update", ticket.id, reference=ticket.reference, location="reply")
        return IntakeResult(ticket.id, ticket.reference, self.text("location_thanks", ref=ticket.reference))

    def _set_location(self, ticket: Ticket, location: Location, source: str) -> None:
        ticket.place, ticket.location_source = location.place or None, source
        ticket.location_enc = self._cipher.encrypt(location.detail)
        if location.grid:
            ticket.grid_id = location.grid
        if location.lat is not None and location.lon is not None and ticket.latitude is None:
            ticket.latitude, ticket.longitude = location.lat, location.lon

    def cancel_recent(self, unit: UnitOfWork, phone_hash: str, reference: str | None) -> IntakeResult | None:
        """取消: the resident withdraws their latest open report (or the one named)."""
        query = select(Ticket).where(Ticket.phone_hash == phone_hash,
                                     Ticket.status.in_({"received", "categorised", "routed"}))
        if reference:
            query = query.where(Ticket.reference == reference)
        ticket = unit.session.scalar(query.order_by(Ticket.id.desc()).limit(1).with_for_update())
        if ticket is None:
            return None
        ticket.awaiting = None
        self.move(unit, ticket, "cancelled", "resident:sms", notify=False)
        return IntakeResult(ticket.id, ticket.reference, self.text("cancelled", ref=ticket.reference))

    def rate(self, unit: UnitOfWork, phone_hash: str, score: int, reference: str | None) -> str:
        query = select(Ticket).where(Ticket.phone_hash == phone_hash, Ticket.status == "resolved")
        if reference:
            query = query.where(Ticket.reference == reference)
        ticket = unit.session.scalar(query.order_by(Ticket.updated_at.desc(), Ticket.id.desc()).limit(1)
                                     .with_for_update())
        if ticket is None:
            return self.text("rate_none")
        ticket.rating = score
        self.move(unit, ticket, "rated", "resident:sms", f"评价{score}分", notify=False)
        if score <= 2:
            self.move(unit, ticket, "reopened", "resident:sms", f"评价{score}分，重新处理", notify=False)
            return self.text("rated_low", score=score, ref=ticket.reference)
        self.move(unit, ticket, "closed", "system", notify=False)
        return self.text("rated", score=score, ref=ticket.reference)

    # --- creation from the conversation core and Open311 ------------------------------------------
    def create_open311(self, *, service_code: str, description: str | None, lat: float | None,
                       lon: float | None, address: str | None, phone: str | None,
                       idempotency_key: str) -> str:
        if self.taxonomy.get(service_code) is None:
            raise LookupError(service_code)

        def work(unit: UnitOfWork) -> str:
            existing = unit.session.scalar(select(Ticket).where(
                Ticket.idempotency_key == idempotency_digest(self._cipher, idempotency_key)))
            if existing is not None:
                return existing.reference
            phone_hash = self.phone_hash(phone) if phone else None
            ticket = self._create(unit, phone, phone_hash, idempotency_key, "open311", "open311", description,
                                  service_code=service_code)
            if lat is not None and lon is not None:
                ticket.latitude, ticket.longitude, ticket.location_source = lat, lon, "open311"
                near = self.gazetteer.nearest(lat, lon)
                if near is not None:
                    ticket.grid_id, ticket.place = near.grid, near.name
            if address:
                location = self.gazetteer.parse(address) or Location(_public_place(address), None, None, None,
                                                                     address[:200])
                self._set_location(ticket, location, "open311")
            self._schedule(unit, ticket, unit.now)
            unit.audit("open311", "create", ticket.id, reference=ticket.reference, service_code=service_code)
            return ticket.reference

        return self.run(work)

    # --- the background job ------------------------------------------------------------------------
    def process(self, ticket_id: int) -> None:
        self._fetch_media(ticket_id)
        self._read_text(ticket_id)
        self.run(lambda unit: self._decide(unit, ticket_id))

    def _fetch_media(self, ticket_id: int) -> None:
        with self._sessions() as session:
            pending = [(m.id, self._cipher.decrypt(m.source_url_enc), m.declared_type) for m in session.scalars(
                select(TicketMedia).where(TicketMedia.ticket_id == ticket_id, TicketMedia.state == "pending"))]
        for media_id, url, declared in pending:
            update: dict[str, Any]
            try:
                data, served_type = self.media.fetch(url or "")
                stored = self.media.ingest(data, served_type or declared)
            except MediaError as exc:
                log.info("media %d of ticket %d refused: %s", media_id, ticket_id, exc.code)
                update = {"state": "rejected", "error": exc.code}
            else:
                update = {"state": "stored", "sha256": stored.sha256, "content_type": stored.content_type,
                          "size": stored.size, "latitude": stored.gps[0] if stored.gps else None,
                          "longitude": stored.gps[1] if stored.gps else None}
            with self._sessions() as session, session.begin():
                row = session.get(TicketMedia, media_id, with_for_update=True)
                if row is not None and row.state == "pending":
                    for key, value in update.items():
                        setattr(row, key, value)
                    row.updated_at = self.now()

    def _read_text(self, ticket_id: int) -> None:
        with self._sessions() as session:
            todo = [(m.id, m.sha256) for m in session.scalars(
                select(TicketMedia).where(TicketMedia.ticket_id == ticket_id, TicketMedia.state == "stored",
                                          TicketMedia.ocr_text_enc.is_(None)))]
        for media_id, sha in todo:
            path = self.media.find(sha or "")
            try:
                text = self.reader.read(path) if path else ""
            except Exception:  # OCR is a help, not a requirement
                log.warning("OCR failed for media %d", media_id, exc_info=True)
                text = ""
            with self._sessions() as session, session.begin():
                row = session.get(TicketMedia, media_id, with_for_update=True)
                if row is not None:
                    row.ocr_text_enc = self._cipher.encrypt(text[:1000])

    def _decide(self, unit: UnitOfWork, ticket_id: int) -> None:
        session = unit.session
        ticket = session.get(Ticket, ticket_id, with_for_update=True)
        if ticket is None:
            raise PermanentJobError(f"ticket {ticket_id} is gone")
        if ticket.status not in {"received", "categorised"} or ticket.awaiting == "location":
            return  # already decided (a re-run), or waiting for the resident's answer
        if ticket.intake_until is not None and ticket.intake_until > unit.now:
            return  # more photos may come; the job was re-armed for the window's end
        media = session.scalars(select(TicketMedia).where(TicketMedia.ticket_id == ticket.id,
                                                          TicketMedia.role == "report")
                                .order_by(TicketMedia.position)).all()
        description = self._cipher.decrypt(ticket.description_enc) or ""
        location_text = self._cipher.decrypt(ticket.location_enc) or ""
        ocr_text = " ".join(filter(None, (self._cipher.decrypt(m.ocr_text_enc) for m in media)))
        if ocr_text and ticket.ocr_text_enc is None:
            ticket.ocr_text_enc = self._cipher.encrypt(ocr_text[:1000])

        failed = [m for m in media if m.state == "rejected"]
        if failed:
            reason = MEDIA_ERROR_WORDS.get(failed[0].error or "", "无法读取")
            self._notify(unit, ticket, "media_failed", "media_failed", count=len(failed), reason=reason)

        if ticket.status == "received":
            category = self.taxonomy.get(ticket.service_code) or self.taxonomy.categorise(
                " ".join((description, location_text, ocr_text)))
            ticket.service_code = category.code
            self.move(unit, ticket, "categorised", "system:categoriser", category.name, notify=False)

        outside = False
        if ticket.location_source is None:
            outside = self._locate(ticket, media, description, ocr_text)
        if ticket.place is None and ticket.latitude is None:
            if ticket.channel == "sms":
                ticket.awaiting = "location"
                self._notify(unit, ticket, "ask_location_outside" if outside else "ask_location", "ask_location")
                unit.audit("system", "update", ticket.id, reference=ticket.reference, awaiting="location")
                return
            # The conversation asked for a place already; route on what we have.

        original = self._find_duplicate(unit, ticket)
        if original is not None:
            ticket.duplicate_of_id = original.id
            self.move(unit, ticket, "duplicate", "system:duplicates", f"同{original.reference}", notify=False)
            self._notify(unit, ticket, "duplicate", "duplicate", original=original.reference)
            return

        category = self.taxonomy.get(ticket.service_code) or self.taxonomy.fallback
        department = self.settings.grid_departments.get(ticket.grid_id or "", {}).get(category.code)
        department = department or category.department
        if not department:
            self._notify(unit, ticket, "triage", "triage")
            unit.audit("system", "update", ticket.id, reference=ticket.reference, queue="triage")
            return
        ticket.department = department
        self.move(unit, ticket, "routed", "system:router", department, notify=False)
        place = ticket.place or _short(location_text, 16) or "已记录"
        self._notify(unit, ticket, "routed", "routed", category=category.name, place=place,
                     department=department)

    def _locate(self, ticket: Ticket, media: Sequence[TicketMedia], description: str, ocr_text: str) -> bool:
        """EXIF GPS inside the service area, else a place named in the text or in the photos.
        Returns True when a photo's GPS was outside the service area (the resident is told)."""
        outside = False
        area = self.settings.service_area
        for m in media:
            if m.latitude is None or m.longitude is None:
                continue
            if area is not None and not area.contains(m.latitude, m.longitude):
                outside = True
                continue
            ticket.latitude, ticket.longitude, ticket.location_source = m.latitude, m.longitude, "exif"
            near = self.gazetteer.nearest(m.latitude, m.longitude)
            named = self.gazetteer.parse(description) or self.gazetteer.parse(ocr_text)
            if named is not None:
                ticket.place, ticket.grid_id = named.place, named.grid or (near.grid if near else None)
                ticket.location_enc = self._cipher.encrypt(named.detail)
            elif near is not None:
                ticket.place, ticket.grid_id = f"{near.name}附近", near.grid
            return False
        existing = self._cipher.decrypt(ticket.location_enc)
        for text, source in ((existing or "", "text"), (description, "text"), (ocr_text, "ocr")):
            location = self.gazetteer.parse(text)
            if location is not None:
                self._set_location(ticket, location, source)
                return outside
        if existing:  # the conversation's answer, not in the gazetteer: keep it as said
            self._set_location(ticket, Location(_public_place(existing), None, None, None, existing), "text")
        return outside

    def _find_duplicate(self, unit: UnitOfWork, ticket: Ticket) -> Ticket | None:
        if ticket.service_code is None or ticket.service_code == self.taxonomy.fallback.code:
            return None
        candidates = unit.session.scalars(
            select(Ticket)
            .where(Ticket.id != ticket.id, Ticket.service_code == ticket.service_code,
                   Ticket.status.in_(OPEN_STATUSES - {"received"}),
                   Ticket.created_at >= unit.now - self.settings.duplicate_window)
            .order_by(Ticket.id)
        ).all()
        for other in candidates:
            if other.duplicate_of_id is not None:
                continue
            if None not in (ticket.latitude, ticket.longitude, other.latitude, other.longitude):
                if distance_m(ticket.latitude, ticket.longitude, other.latitude, other.longitude) \
                        <= self.settings.duplicate_radius_m and (ticket.place == other.place or
                                                                  ticket.location_source == "exif"
                                                                  or other.location_source == "exif"):
                    return other
            elif ticket.place and ticket.place == other.place:
                return other
        return None

    # --- staff side ------------------------------------------------------------------------------
    def staff_action(self, reference: str, action: str, actor: str, *, note: str | None = None,
                     department: str | None = None, photo: bytes | None = None) -> TicketView:
        if not is_valid_reference(reference):
            raise LookupError(reference)
        stored = self.media.ingest(photo) if photo else None  # outside the transaction: file I/O

        def work(unit: UnitOfWork) -> TicketView:
            ticket = unit.session.scalar(select(Ticket).where(Ticket.reference == reference).with_for_update())
            if ticket is None:
                raise LookupError(reference)
            if action == "route":
                if not department:
                    raise ValueError("department is required")
                ticket.department = department[:64]
                if ticket.status == "received":
                    self.move(unit, ticket, "categorised", actor, notify=False)
                self.move(unit, ticket, "routed", actor, department, notify=False)
                self._notify(unit, ticket, "routed", f"routed:{unit.now.isoformat()}",
                             category=self._category_name(ticket), place=ticket.place or "已记录",
                             department=department)
            elif action == "accept":
                self.move(unit, ticket, "accepted", actor, note)
            elif action == "start":
                self.move(unit, ticket, "in_progress", actor, note)
            elif action == "resolve":
                if not note:
                    raise ValueError("a note is required to resolve")
                if stored is not None:
                    position = unit.session.scalar(select(func.count()).select_from(TicketMedia)
                                                   .where(TicketMedia.ticket_id == ticket.id)) or 0
                    unit.session.add(TicketMedia(ticket_id=ticket.id, position=position + 100, role="resolution",
                                                 state="stored", sha256=stored.sha256,
                                                 content_type=stored.content_type, size=stored.size,
                                                 created_at=unit.now, updated_at=unit.now))
                self.move(unit, ticket, "resolved", actor, note)
            elif action == "reject":
                if not note:
                    raise ValueError("a note is required to reject")
                self.move(unit, ticket, "rejected", actor, note)
            elif action == "reopen":
                self.move(unit, ticket, "reopened", actor, note)
            elif action == "close":
                self.move(unit, ticket, "closed", actor, note, notify=False)
            else:
                raise ValueError(f"unknown action {action!r}")
            return self._view(unit.session, ticket, private=False)

        return self.run(work)

    def view(self, reference: str, *, actor: str | None = None) -> TicketView | None:
        """Public view; with an actor (staff) also the decrypted private fields, audited."""

        def work(unit: UnitOfWork) -> TicketView | None:
            ticket = unit.session.scalar(select(Ticket).where(Ticket.reference == reference))
            if ticket is None:
                return None
            if actor:
                unit.audit(actor, "read", ticket.id, reference=reference, view="ticket")
            return self._view(unit.session, ticket, private=bool(actor))

        return self.run(work)

    def search(self, *, status: Sequence[str] | None = None, department: str | None = None,
             service_code: str | None = None, since: datetime | None = None, until: datetime | None = None,
             triage: bool = False, limit: int = 100) -> list[TicketView]:
        with self._sessions() as session:
            query = select(Ticket)
            if status:
                query = query.where(Ticket.status.in_(list(status)))
            if department:
                query = query.where(Ticket.department == department)
            if service_code:
                query = query.where(Ticket.service_code == service_code)
            if since:
                query = query.where(Ticket.created_at >= since)
            if until:
                query = query.where(Ticket.created_at <= until)
            if triage:
                query = query.where(Ticket.status == "categorised", Ticket.department.is_(None),
                                    Ticket.awaiting.is_(None))
            rows = session.scalars(query.order_by(Ticket.created_at.desc(), Ticket.id.desc()).limit(limit)).all()
            return [self._view(session, t, private=False) for t in rows]

    def _view(self, session: Session, ticket: Ticket, *, private: bool) -> TicketView:
        media = session.execute(select(TicketMedia.sha256, TicketMedia.role)
                                .where(TicketMedia.ticket_id == ticket.id, TicketMedia.state == "stored")
                                .order_by(TicketMedia.position)).all()
        original = session.get(Ticket, ticket.duplicate_of_id) if ticket.duplicate_of_id else None
        category = self.taxonomy.get(ticket.service_code)
        details: dict[str, Any] = {}
        events: tuple[tuple[str | None, str, str, datetime], ...] = ()
        if private:
            details = {"description": self._cipher.decrypt(ticket.description_enc),
                       "location": self._cipher.decrypt(ticket.location_enc),
                       "contact": self._cipher.decrypt(ticket.contact_enc),
                       "ocr_text": self._cipher.decrypt(ticket.ocr_text_enc)}
            events = tuple((e.from_status, e.to_status, e.actor, e.at) for e in session.scalars(
                select(StatusEvent).where(StatusEvent.entity_type == "ticket", StatusEvent.entity_id == ticket.id)
                .order_by(StatusEvent.id)))
        return TicketView(
            reference=ticket.reference, status=ticket.status, service_code=ticket.service_code,
            category_name=category.name if category else None, department=ticket.department, place=ticket.place,
            latitude=ticket.latitude, longitude=ticket.longitude, channel=ticket.channel,
            created_at=ticket.created_at, updated_at=ticket.updated_at, status_note=ticket.status_note,
            rating=ticket.rating, duplicate_of=original.reference if original else None,
            media=tuple((sha, role) for sha, role in media if sha), private=details, events=events,
        )

    def description(self, reference: str) -> str | None:
        """Open311's `description` is public there; tickets filed by residents keep theirs private
        unless they came in through Open311 itself."""
        with self._sessions() as session:
            ticket = session.scalar(select(Ticket).where(Ticket.reference == reference))
            if ticket is None or ticket.channel != "open311":
                return None
            return self._cipher.decrypt(ticket.description_enc)


def status_label(status: str) -> str:
    return STATUS_LABELS_ZH.get(status, status)


def _short(text: str, limit: int) -> str:
    text = re.sub(r"\s+", " ", text or "").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _public_place(text: str) -> str:
    """A resident's own words made fit for a public field: no room, phone or ID numbers."""
    text = mask_text(text or "")
    text = re.sub(r"\d{3,4}\s*(室|号房|房)?", "", text)
    return _short(text, 40)
