"""StoreBackend: the assistant's ServiceBackend on SQLAlchemy, plus staff-side helpers.

Every unit of work is one transaction run by backend.infra.tx's TransactionRunner, ending with its
audit entries (see audit_chain.append_audit), so the audit chain and the data it describes commit
together. This package's entry point owns filing cases (submit_case, create_handoff) and progress; the parts
live in core (plumbing), residents (residents, identify, corrections) and
cases (staff status changes and case reads).
"""
from __future__ import annotations

import re
from typing import Any

from sqlalchemy import or_, select

from assistant.ports import (
    CaseReceipt,
    CaseRequest,
    HandoffRequest,
    ProgressItem,
)
from backend.affairs.cases import CaseDetail, StaffCases, StatusEventView
from backend.affairs.core import (
    HOME_ADDRESS_SLOT,
    KIND_ENTITY,
    OPEN_APPLICATION_STATUSES,
    PENDING_CORRECTION,
    PROGRESS_LIMIT,
    CaseRow,
    StoreCore,
    clean_text,
)
from backend.affairs.references import is_valid_reference, new_reference
from backend.affairs.residents import ResidentStore
from backend.infra.jobs import enqueue_in
from backend.infra.models import (
    CASE_MODELS,
    STATUSES,
    Application,
    Booking,
    Handoff,
    Resident,
    Ticket,
    idempotency_digest,
)
from backend.infra.tx import UnitOfWork

__all__ = ["KIND_ENTITY", "OPEN_APPLICATION_STATUSES", "PENDING_CORRECTION", "PROGRESS_LIMIT", "CaseDetail",
           "CaseRow", "StatusEventView", "StoreBackend", "StoreCore"]


class StoreBackend(ResidentStore, StaffCases):
    """Implements assistant.ports.ServiceBackend. Thread-safe: one session per call. Residents
    live in residents, the staff side in cases, plumbing in core."""

    def submit_case(self, request: CaseRequest) -> CaseReceipt:
        try:
            entity_type = KIND_ENTITY[request.kind]
        except KeyError:
            raise ValueError(f"unknown case kind {request.kind!r}") from None
        model = CASE_MODELS[entity_type]
        actor = f"resident:{request.channel}"[:64]
        key = idempotency_digest(self._cipher, request.idempotency_key)
        sender_hash = self._hash(request.sender_id, "sender") or ""

        def work(unit: UnitOfWork) -> CaseReceipt:
            session = unit.session
            existing = session.scalar(select(model).where(model.idempotency_key == key))
            if existing is not None:
                return self._receipt(existing)
            now = unit.now
            if request.kind == "application":
                duplicate = self._open_duplicate(unit, request, sender_hash)
                if duplicate is not None:
                    return duplicate
            fields = dict(request.fields)
            home = fields.get(HOME_ADDRESS_SLOT) if entity_type != "ticket" else None
            audits: list[dict[str, Any]] = []
            pending: dict[str, str] = {}
            resident = self._upsert_resident(
                session, request.subject, home if isinstance(home, str) else None, now, audits,
                verified_phone=request.verified_phone, pending=pending,
            )
            if pending:
                fields[PENDING_CORRECTION] = pending
            status = STATUSES[entity_type][0]
            common: dict[str, Any] = {
                "reference": new_reference(request.kind),
                "status": status,
                "resident_id": resident.id if resident else None,
                "phone_hash": self._hash(request.subject.phone, "phone")
                or (resident.phone_hash if resident else None),
                "submitted_by_hash": self._hash(request.submitted_by_phone, "phone"),
                "channel": request.channel,
                "sender_hash": sender_hash,
                "idempotency_key": key,
                "created_at": now,
                "updated_at": now,
                "category": request.category,
            }
            row: CaseRow
            if model is Ticket:
                description, location = fields.pop("description", None), fields.pop("location", None)
                row = Ticket(
                    **common,
                    description_enc=self._cipher.encrypt(None if description is None else str(description)),
                    location_enc=self._cipher.encrypt(None if location is None else str(location)),
                    fields_enc=self._cipher.encrypt_json(fields),
                    grid_id=resident.grid_id if resident else None,
                    # Status SMS of the ticket loop go to the number the resident gave.
                    contact_enc=self._cipher.encrypt(clean_text(request.subject.phone)),
                )
            else:
                row = model(**common, fields_enc=self._cipher.encrypt_json(fields))
            session.add(row)
            session.flush()  # unique clash on reference / idempotency key surfaces here
            self._status_event(session, entity_type, row.id, None, status, actor, now)
            if isinstance(row, Ticket):
                # Into the categorise → route loop (backend.tickets), committed with the ticket.
                enqueue_in(session, "ticket.process", {"ticket_id": row.id}, now,
                           dedupe_key=f"ticket.process:{row.id}", now=now)
            audits.append(
                {
                    "action": "create",
                    "entity_type": entity_type,
                    "entity_id": row.id,
                    "detail": {
                        "reference": row.reference,
                        "kind": request.kind,
                        "category": request.category,
                        "channel": request.channel,
                        "slots": sorted(request.fields),
                        # which fields wait for staff, never their values
                        **({PENDING_CORRECTION: sorted(pending)} if pending else {}),
                    },
                }
            )
            # Audit last: the head lock is then always taken after all data rows, so two
            # transactions can never wait on each other in opposite order.
            for audit in audits:
                self._audit(unit, actor=actor, **audit)
            return self._receipt(row)

        return self._transaction(work)

    def _open_duplicate(
        self, unit: UnitOfWork, request: CaseRequest, sender_hash: str
    ) -> CaseReceipt | None:
        """The same application of the same resident, still open: answered with that case
        instead of a second one. Its reference is told only to whoever may know it (the
        verified resident, or the sender who filed it); anyone else hears that it exists.
        Only an ID number says "the same resident": a shared phone may be a spouse's."""
        session = unit.session
        id_hash = self._hash(request.subject.id_number, "id_number")
        resident = session.scalar(select(Resident).where(Resident.id_hash == id_hash)) if id_hash else None
        if resident is None:
            return None
        row = session.scalar(
            select(Application)
            .where(Application.resident_id == resident.id, Application.category == request.category,
                   Application.status.in_(OPEN_APPLICATION_STATUSES))
            .order_by(Application.id.desc())
            .limit(1)
        )
        if row is None:
            return None
        disclosed = row.sender_hash == sender_hash or self._verified_for(resident, request.verified_phone)
        self._audit(
            unit,
            actor=f"resident:{request.channel}"[:64],
            action="read",
            entity_type="application",
            entity_id=row.id,
            detail={"by": "duplicate_check", "category": request.category, "disclosed": disclosed},
        )
        receipt = self._receipt(row)
        return CaseReceipt(reference=receipt.reference if disclosed else "", kind=receipt.kind,
                           category=receipt.category, status=receipt.status, created_at=receipt.created_at,
                           duplicate=True)

    def create_handoff(self, request: HandoffRequest) -> CaseReceipt:
        actor = f"resident:{request.channel}"[:64]
        key = idempotency_digest(self._cipher, request.idempotency_key)

        def work(unit: UnitOfWork) -> CaseReceipt:
            session = unit.session
            existing = session.scalar(select(Handoff).where(Handoff.idempotency_key == key))
            if existing is not None:
                return self._receipt(existing)
            now = unit.now
            phone_hash = self._hash(request.phone, "phone")
            # Link to a known resident for the staff screen, but never create one from a call.
            resident = (
                self._match_by_phone(session, phone_hash, None, without_id=False)
                if phone_hash
                else None
            )
            row = Handoff(
                reference=new_reference("handoff"),
                status="waiting",
                resident_id=resident.id if resident else None,
                phone_hash=phone_hash,
                channel=request.channel,
                sender_hash=self._hash(request.sender_id, "sender") or "",
                idempotency_key=key,
                reason=request.reason,
                urgent=request.urgent,
                transcript_enc=self._cipher.encrypt_json([list(t) for t in request.transcript]),
                form_name=request.form_name,
                form_slots_enc=self._cipher.encrypt_json(dict(request.form_slots)),
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            self._status_event(session, "handoff", row.id, None, "waiting", actor, now)
            self._audit(
                unit,
                actor=actor,
                action="create",
                entity_type="handoff",
                entity_id=row.id,
                detail={
                    "reference": row.reference,
                    "reason": request.reason,
                    "urgent": request.urgent,
                    "channel": request.channel,
                },
            )
            return self._receipt(row)

        return self._transaction(work)

    def progress(
        self, *, phone: str | None = None, reference: str | None = None
    ) -> list[ProgressItem]:
        """By reference (exact, any case table) when given, else by phone: cases about that
        phone's owner or submitted from it, most recently updated first, at most 5."""
        reference = re.sub(r"\s+", "", clean_text(reference) or "") or None
        phone_hash = self._hash(phone, "phone")
        if reference is None and phone_hash is None:
            raise ValueError("progress needs a phone or a reference")

        def work(unit: UnitOfWork) -> list[ProgressItem]:
            session = unit.session
            rows: list[CaseRow] = []
            if reference is not None:
                by = "reference"
                found = self._find_by_reference(session, reference) if is_valid_reference(reference) else None
                rows = [found] if found is not None else []
            else:
                by = "phone"
                for model in (Application, Booking, Ticket):
                    rows.extend(
                        session.scalars(
                            select(model)
                            .where(or_(model.phone_hash == phone_hash, model.submitted_by_hash == phone_hash))
                            .order_by(model.updated_at.desc(), model.id.desc())
                            .limit(PROGRESS_LIMIT)
                        )
                    )
                rows.sort(key=lambda r: (r.updated_at, r.created_at), reverse=True)
                rows = rows[:PROGRESS_LIMIT]
            self._audit(
                unit,
                actor="assistant",
                action="read",
                entity_type="case",
                entity_id=rows[0].id if len(rows) == 1 else None,
                detail={"by": by, "references": [r.reference for r in rows]},
            )
            return [self._progress_item(r) for r in rows]

        return self._transaction(work)

    def precheck(self, proxy_phone: str | None, kind: str) -> None:
        """The plain store keeps no family grants (ProxyAwareBackend does): nothing to check."""
        return None
