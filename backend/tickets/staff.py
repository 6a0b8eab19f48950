"""The staff side of tickets: actions along the state machine (route, accept, start, resolve with
a photo, reject, reopen, close), audited views with private fields, search for the console and
Open311."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from backend.affairs.references import is_valid_reference
from backend.infra.models import StatusEvent, Ticket, TicketMedia
from backend.infra.tx import UnitOfWork
from backend.tickets.core import TicketCore
from backend.tickets.model import OPEN_STATUSES, TicketView


class TicketStaffWorkflow(TicketCore):
    """Staff actions and views."""

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

    def departments(self) -> list[str]:
        """Every department a ticket can be routed to: the taxonomy's and the grids' (config.yml)."""
        return sorted({d for c in self.taxonomy.categories if (d := self.taxonomy.department(c))}
                      | {d for grid in self.settings.grid_departments.values() for d in grid.values()})

    def search(self, *, status: Sequence[str] | None = None, department: str | None = None,
             service_code: str | None = None, since: datetime | None = None, until: datetime | None = None,
             triage: bool = False, limit: int = 100,
             scope: ColumnElement[bool] | None = None, by_deadline: bool = False) -> list[TicketView]:
        """Newest first, or (`by_deadline`) open tickets by their deadline, the most overdue first,
        then the rest newest first. `scope` is the acting staff member's predicate
        (StaffQueries.ticket_scope), applied in the same query so that the limit counts only what
        they may see."""
        with self._sessions() as session:
            query = select(Ticket) if scope is None else select(Ticket).where(scope)
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
            order = [Ticket.created_at.desc(), Ticket.id.desc()]
            if by_deadline:
                open_first = case((Ticket.status.in_(list(OPEN_STATUSES)), 0), else_=1)
                order = [open_first, Ticket.due_at.is_(None), Ticket.due_at.asc(), *order]
            rows = session.scalars(query.order_by(*order).limit(limit)).all()
            # Photos and originals of the whole page in two queries, not two per row.
            media = self._media_of(session, [t.id for t in rows])
            wanted = sorted({t.duplicate_of_id for t in rows if t.duplicate_of_id})
            originals = {i: ref for i, ref in session.execute(
                select(Ticket.id, Ticket.reference).where(Ticket.id.in_(wanted)))} if wanted else {}
            return [self._view(session, t, private=False, media=media.get(t.id, ()),
                               original=originals.get(t.duplicate_of_id or 0)) for t in rows]

    @staticmethod
    def _media_of(session: Session, ids: Sequence[int]) -> dict[int, tuple[tuple[str, str], ...]]:
        found: dict[int, list[tuple[str, str]]] = {}
        if ids:
            for ticket_id, sha, role in session.execute(
                    select(TicketMedia.ticket_id, TicketMedia.sha256, TicketMedia.role)
                    .where(TicketMedia.ticket_id.in_(list(ids)), TicketMedia.state == "stored")
                    .order_by(TicketMedia.ticket_id, TicketMedia.position)):
                if sha:
                    found.setdefault(ticket_id, []).append((sha, role))
        return {k: tuple(v) for k, v in found.items()}

    def _view(self, session: Session, ticket: Ticket, *, private: bool,
              media: tuple[tuple[str, str], ...] | None = None, original: str | None = None) -> TicketView:
        if media is None:  # one ticket: look its photos and original up here
            media = self._media_of(session, [ticket.id]).get(ticket.id, ())
            if ticket.duplicate_of_id:
                original = session.scalar(select(Ticket.reference).where(Ticket.id == ticket.duplicate_of_id))
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
            rating=ticket.rating, duplicate_of=original, media=media, private=details, events=events,
            due_at=ticket.due_at, due_state=self.due_state(ticket), escalated=ticket.escalated_at is not None,
        )

    def description(self, reference: str) -> str | None:
        """Open311's `description` is public there; tickets filed by residents keep theirs private
        unless they came in through Open311 itself."""
        with self._sessions() as session:
            ticket = session.scalar(select(Ticket).where(Ticket.reference == reference))
            if ticket is None or ticket.channel != "open311":
                return None
            return self._cipher.decrypt(ticket.description_enc)


