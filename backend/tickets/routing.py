"""The background job for a new ticket: fetch and check its photos, read their GPS and text,
categorise, locate, link duplicates, route to a department. Idempotent (at-least-once jobs):
each step looks at what is already stored and every SMS has a dedupe key."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from backend.infra.jobs import PermanentJobError
from backend.infra.models import Ticket, TicketMedia
from backend.infra.tx import UnitOfWork
from backend.tickets.core import TicketCore
from backend.tickets.gazetteer import Location, distance_m
from backend.tickets.media import MediaError
from backend.tickets.model import (
    MEDIA_ERROR_WORDS,
    OPEN_STATUSES,
    Category,
    public_place,
    shorten,
)

log = logging.getLogger(__name__)


class TicketRouting(TicketCore):
    """`process(ticket_id)`, the job handler, and its steps."""

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
            category = self.taxonomy.get(ticket.service_code) or self._understood_category(ticket) \
                or self.taxonomy.categorise(" ".join((description, location_text, ocr_text)))
            ticket.service_code = category.code
            ticket.due_at = ticket.created_at + self.settings.deadline(category)  # the category's 时限
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
        department = department or self.taxonomy.department(category)
        if not department:
            self._notify(unit, ticket, "triage", "triage")
            unit.audit("system", "update", ticket.id, reference=ticket.reference, queue="triage")
            return
        ticket.department = department
        self.move(unit, ticket, "routed", "system:router", department, notify=False)
        place = ticket.place or shorten(location_text, 16) or "已记录"
        self._notify(unit, ticket, "routed", "routed", category=category.name, place=place,
                     department=department)

    def _understood_category(self, ticket: Ticket) -> Category | None:
        """The category the conversation's NLU chose (its area first, then keywords within it)."""
        fields = self._cipher.decrypt_json(ticket.fields_enc) if ticket.fields_enc else None
        order = fields.get("work_order") if isinstance(fields, dict) else None
        return self.taxonomy.get(order.get("category_code")) if isinstance(order, dict) else None

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
            self._set_location(ticket, Location(public_place(existing), None, None, None, existing), "text")
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

