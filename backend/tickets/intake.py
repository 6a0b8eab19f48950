"""Ticket intake inside the caller's transaction: photo reports and their texts from the SMS/MMS
webhook, the resident's answer to "where?", cancelling and rating by SMS, and tickets created
through Open311."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select

from backend.affairs.references import new_reference
from backend.infra.jobs import enqueue_in
from backend.infra.models import StatusEvent, Ticket, TicketMedia, idempotency_digest
from backend.infra.tx import UnitOfWork
from backend.tickets.core import TicketCore
from backend.tickets.gazetteer import Location
from backend.tickets.model import (
    OPEN_STATUSES,
    IncomingMedia,
    IntakeResult,
    public_place,
)

# Prebuilt Core statements for the webhook's hot path (compiled once, cached by SQLAlchemy).
_INSERT_TICKET = insert(Ticket.__table__).returning(Ticket.__table__.c.id)
_INSERT_EVENT = insert(StatusEvent.__table__)
_INSERT_MEDIA = insert(TicketMedia.__table__)
_t = Ticket.__table__.c
_OPEN_REPORT = (select(_t.id).where(_t.phone_hash == bindparam("phone_hash"), _t.channel == "sms",
                                    _t.status == "received", _t.intake_until > bindparam("now"))
                .order_by(_t.id.desc()).limit(1))


class TicketIntake(TicketCore):
    """How a ticket comes in and what the resident's later messages do to it."""

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
            place=public_place(text), grid=None, lat=None, lon=None, detail=text.strip()[:200])
        self._set_location(ticket, location, "reply")
        ticket.awaiting, ticket.updated_at = None, unit.now
        self._schedule(unit, ticket, unit.now)
        unit.audit("resident:sms", "update", ticket.id, reference=ticket.reference, location="reply")
        return IntakeResult(ticket.id, ticket.reference, self.text("location_thanks", ref=ticket.reference))

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
                location = self.gazetteer.parse(address) or Location(public_place(address), None, None, None,
                                                                     address[:200])
                self._set_location(ticket, location, "open311")
            self._schedule(unit, ticket, unit.now)
            unit.audit("open311", "create", ticket.id, reference=ticket.reference, service_code=service_code)
            return ticket.reference

        return self.run(work)

