"""The staff side of the case store: moving a case along its statuses (notes masked) and reading
a whole case decrypted with its history, both audited."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from assistant.ports import (
    Person,
    ProgressItem,
)
from assistant.privacy import mask_text
from backend.affairs.core import KIND_ENTITY, StoreCore
from backend.affairs.references import reference_kind
from backend.infra.models import (
    CASE_MODELS,
    STATUSES,
    Handoff,
    Resident,
    StatusEvent,
    Ticket,
)
from backend.infra.tx import UnitOfWork


@dataclass(frozen=True)
class StatusEventView:
    from_status: str | None
    to_status: str
    actor: str
    note: str | None
    at: datetime


@dataclass(frozen=True)
class CaseDetail:
    """A case decrypted for staff (the console); reading one is audited."""

    reference: str
    kind: str
    entity_type: str
    category: str
    status: str
    channel: str
    created_at: datetime
    updated_at: datetime
    subject: Person
    fields: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[StatusEventView, ...] = ()


class StaffCases(StoreCore):
    """Case status changes and case reads for staff."""

    def set_status(
        self,
        entity_type: str,
        reference: str,
        to_status: str,
        actor: str,
        note: str | None = None,
    ) -> ProgressItem:
        """Moves a case to `to_status` (a no-op when it is already there). The note is stored
        with ID and phone numbers masked: it is free text typed by staff."""
        if entity_type not in STATUSES:
            raise ValueError(f"unknown entity type {entity_type!r}")
        if to_status not in STATUSES[entity_type]:
            raise ValueError(f"{entity_type} has no status {to_status!r}")
        expected_kind = {k for k, e in KIND_ENTITY.items() if e == entity_type} | {entity_type}
        if reference_kind(reference) not in expected_kind:
            raise LookupError(f"{reference} is not a {entity_type} reference")

        def work(unit: UnitOfWork) -> ProgressItem:
            session = unit.session
            row = self._find_by_reference(session, reference, lock=True)
            if row is None:
                raise LookupError(f"no {entity_type} with reference {reference}")
            from_status = row.status
            if from_status == to_status:
                return self._progress_item(row)
            now = unit.now
            row.status, row.updated_at = to_status, now
            if isinstance(row, Handoff) and to_status == "taken":
                row.taken_by = actor[:64]
            self._status_event(
                session, entity_type, row.id, from_status, to_status, actor[:64], now,
                mask_text(note) if note else None,
            )
            session.flush()
            self._audit(
                unit,
                actor=actor[:64],
                action="update",
                entity_type=entity_type,
                entity_id=row.id,
                detail={"reference": reference, "from": from_status, "to": to_status},
            )
            return self._progress_item(row)

        return self._transaction(work)

    def get_case(self, reference: str, *, actor: str = "staff") -> CaseDetail | None:
        """The whole case decrypted, with its status history. An audited read."""

        def work(unit: UnitOfWork) -> CaseDetail | None:
            session = unit.session
            row = self._find_by_reference(session, reference)
            if row is None:
                return None
            entity_type = next(e for e, m in CASE_MODELS.items() if isinstance(row, m))
            resident = session.get(Resident, row.resident_id) if row.resident_id else None
            subject = Person(
                name=self._cipher.decrypt(resident.name_enc) if resident else None,
                id_number=self._cipher.decrypt(resident.id_enc) if resident else None,
                phone=self._cipher.decrypt(resident.phone_enc) if resident else None,
            )
            fields: dict[str, Any]
            if isinstance(row, Handoff):
                fields = {
                    "reason": row.reason,
                    "urgent": row.urgent,
                    "form_name": row.form_name,
                    "form_slots": self._cipher.decrypt_json(row.form_slots_enc) or {},
                    "transcript": [tuple(t) for t in self._cipher.decrypt_json(row.transcript_enc) or []],
                    "taken_by": row.taken_by,
                }
            else:
                fields = dict(self._cipher.decrypt_json(row.fields_enc) or {})
                if isinstance(row, Ticket):
                    for slot, token in (("description", row.description_enc), ("location", row.location_enc)):
                        if token is not None:
                            fields[slot] = self._cipher.decrypt(token)
            events = session.scalars(
                select(StatusEvent)
                .where(StatusEvent.entity_type == entity_type, StatusEvent.entity_id == row.id)
                .order_by(StatusEvent.id)
            ).all()
            self._audit(
                unit,
                actor=actor[:64],
                action="read",
                entity_type=entity_type,
                entity_id=row.id,
                detail={"reference": row.reference, "view": "case"},
            )
            return CaseDetail(
                reference=row.reference,
                kind=reference_kind(row.reference) or "",
                entity_type=entity_type,
                category=self._category(row),
                status=row.status,
                channel=row.channel,
                created_at=row.created_at,
                updated_at=row.updated_at,
                subject=subject,
                fields=fields,
                events=tuple(
                    StatusEventView(e.from_status, e.to_status, e.actor, e.note, e.at) for e in events
                ),
            )

        return self._transaction(work)
