"""The ticket desk's plumbing shared by its parts: the store, clock and outbox it works on,
one transaction runner (backend.infra.tx), the state machine's `move` with its status SMS, and the
location fields every part sets."""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from assistant.ports import Clock
from assistant.privacy import mask_text
from backend.infra.crypto import FieldCipher
from backend.infra.jobs import enqueue_in
from backend.infra.models import StatusEvent, Ticket
from backend.infra.tx import TransactionRunner, UnitOfWork
from backend.messaging.outbox import Outbox
from backend.messaging.sms_format import segments
from backend.tickets.gazetteer import Gazetteer, Location
from backend.tickets.media import MediaStore
from backend.tickets.model import (
    OPEN_STATUSES,
    PUBLIC_STEPS,
    TRANSITIONS,
    LoopSettings,
    Taxonomy,
    TransitionError,
    shorten,
)
from backend.tickets.ocr import TextReader

T = TypeVar("T")


class TicketCore:
    """What the intake, routing and staff parts of TicketDesk share."""

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
        self._tx = TransactionRunner(sessions, clock)

    # --- plumbing ------------------------------------------------------------------------------
    def now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def run(self, work: Callable[[UnitOfWork], T], attempts: int = 5) -> T:
        """`work` in one transaction, audits appended last; what a second try can fix (a unique
        clash, a Postgres deadlock or serialisation failure) runs it again from the start
        (backend.infra.tx; a busy SQLite is not retried, so a saturated store answers in time)."""
        return self._tx.run(work, attempts)

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

    def due_state(self, ticket: Ticket, now: datetime | None = None) -> str | None:
        """"overdue" / "due_soon" for an open ticket with a deadline, else None."""
        if ticket.due_at is None or ticket.status not in OPEN_STATUSES:
            return None
        now = now or self.now()
        if ticket.due_at <= now:
            return "overdue"
        return "due_soon" if ticket.due_at - now <= self.settings.due_soon else None

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
            values = {"department": self._department_label(ticket), "note": shorten(masked or "已处理", 24)}
            self._notify(unit, ticket, PUBLIC_STEPS[to], f"{to}:{event_count}", **values)
            if to == "resolved":  # those whose reports were merged into this one hear it too
                for dup in unit.session.scalars(select(Ticket).where(Ticket.duplicate_of_id == ticket.id,
                                                                     Ticket.status == "duplicate")):
                    self._notify(unit, dup, "resolved", f"original-resolved:{ticket.id}:{event_count}", **values)
        unit.audit(actor, "update", ticket.id, reference=ticket.reference, **{"from": from_status, "to": to})

    def _set_location(self, ticket: Ticket, location: Location, source: str) -> None:
        ticket.place, ticket.location_source = location.place or None, source
        ticket.location_enc = self._cipher.encrypt(location.detail)
        if location.grid:
            ticket.grid_id = location.grid
        if location.lat is not None and location.lon is not None and ticket.latitude is None:
            ticket.latitude, ticket.longitude = location.lat, location.lon

    def _schedule(self, unit: UnitOfWork, ticket: Ticket, run_at: datetime, *, new: bool = False) -> None:
        enqueue_in(unit.session, "ticket.process", {"ticket_id": ticket.id}, run_at,
                   dedupe_key=f"ticket.process:{ticket.id}", now=unit.now, new=new)

