"""Residents in the case store: finding one by ID number or phone (a shared phone is never
guessed), creating or updating one from a case (only the verified resident changes stored
values; anyone else's differences wait as a pending correction), identify, and staff confirming
a pending correction."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from assistant.ports import (
    Person,
    ResidentRecord,
)
from assistant.privacy import mask_phone
from backend.affairs.core import PENDING_CORRECTION, StoreCore, clean_text, id_facts
from backend.infra.models import (
    Handoff,
    Resident,
)
from backend.infra.tx import UnitOfWork


class ResidentStore(StoreCore):
    """The resident side of StoreBackend."""

    def _residents_by_phone(self, session: Session, phone_hash: str) -> Sequence[Resident]:
        return session.scalars(
            select(Resident).where(Resident.phone_hash == phone_hash).order_by(Resident.id).limit(20)
        ).all()

    def _match_by_phone(
        self, session: Session, phone_hash: str, name: str | None, *, without_id: bool
    ) -> Resident | None:
        """The one resident a phone (and name, if known) points to. Old couples often share
        one phone, so an ambiguous match returns None rather than a guess."""
        candidates = [
            r for r in self._residents_by_phone(session, phone_hash)
            if not (without_id and r.id_hash)
        ]
        if name:
            named = [r for r in candidates if self._cipher.decrypt(r.name_enc) == name]
            if named:
                return named[0]
            candidates = [r for r in candidates if r.name_enc is None]
        return candidates[0] if len(candidates) == 1 else None

    def _existing_resident(self, session: Session, person: Person) -> Resident | None:
        """The stored resident a case is about: by ID number, else by phone (and name)."""
        id_hash, phone_hash = self._hash(person.id_number, "id_number"), self._hash(person.phone, "phone")
        resident = None
        if id_hash:
            resident = session.scalar(select(Resident).where(Resident.id_hash == id_hash))
        if resident is None and phone_hash:
            resident = self._match_by_phone(session, phone_hash, clean_text(person.name), without_id=bool(id_hash))
        return resident

    def _verified_for(self, resident: Resident | None, verified_phone: str | None) -> bool:
        """The caller proved to be this resident: their verified phone (caller ID, or a phone
        proven by a one-time code) is the phone on record."""
        verified_hash = self._hash(verified_phone, "phone")
        return bool(resident is not None and verified_hash and resident.phone_hash == verified_hash)

    def _upsert_resident(
        self, session: Session, person: Person, address: str | None, now: datetime,
        audits: list[dict[str, Any]], *, verified_phone: str | None = None,
        pending: dict[str, str] | None = None,
    ) -> Resident | None:
        """Creates or updates the resident. An existing resident's stored values are changed
        only by that verified resident; anyone else fills blanks at most, and what they said
        differently goes to `pending` (kept on the case for staff to confirm)."""
        id_number, phone, name = clean_text(person.id_number), clean_text(person.phone), clean_text(person.name)
        id_hash = self._hash(id_number, "id_number")
        phone_hash = self._hash(phone, "phone")
        if not id_hash and not phone_hash:
            return None  # nothing stable to find this person by again
        resident = self._existing_resident(session, person)
        created = resident is None
        trusted = created or self._verified_for(resident, verified_phone)
        if resident is None:
            resident = Resident(created_at=now, updated_at=now)
            session.add(resident)
        changed: list[str] = []

        def may_set(slot: str, value: str, stored: object) -> bool:
            if trusted or stored is None:
                return True
            if pending is not None:
                pending[slot] = value
            return False

        if id_number and id_hash and resident.id_hash != id_hash and may_set("id_number", id_number, resident.id_hash):
            resident.id_hash, resident.id_enc = id_hash, self._cipher.encrypt(id_number)
            resident.birth_date, resident.gender = id_facts(id_number)
            changed.append("id_number")
        if phone and phone_hash and resident.phone_hash != phone_hash and may_set("phone", phone, resident.phone_hash):
            resident.phone_hash, resident.phone_enc = phone_hash, self._cipher.encrypt(phone)
            changed.append("phone")
        stored_name = self._cipher.decrypt(resident.name_enc)
        if name and stored_name != name and may_set("name", name, stored_name):
            resident.name_enc = self._cipher.encrypt(name)
            changed.append("name")
        stored_address = self._cipher.decrypt(resident.address_enc)
        if address and stored_address != address and may_set("address", address, stored_address):
            resident.address_enc = self._cipher.encrypt(address)
            changed.append("address")
        if changed:
            resident.updated_at = now
            session.flush()
            audits.append(
                {
                    "action": "create" if created else "update",
                    "entity_type": "resident",
                    "entity_id": resident.id,
                    "detail": {"fields": changed},  # which fields, never their values
                }
            )
        return resident

    def find_resident(
        self, *, id_number: str | None = None, phone: str | None = None
    ) -> ResidentRecord | None:
        id_hash, phone_hash = self._hash(id_number, "id_number"), self._hash(phone, "phone")
        if id_hash is None and phone_hash is None:
            raise ValueError("find_resident needs an ID number or a phone")

        def work(unit: UnitOfWork) -> ResidentRecord | None:
            session = unit.session
            resident: Resident | None
            if id_hash is not None:
                by = "id_number"
                resident = session.scalar(select(Resident).where(Resident.id_hash == id_hash))
            else:
                by = "phone"
                matches = self._residents_by_phone(session, phone_hash or "")
                resident = matches[0] if len(matches) == 1 else None  # shared phone: no guess
            self._audit(
                unit,
                actor="assistant",
                action="read",
                entity_type="resident",
                entity_id=resident.id if resident else None,
                detail={"by": by, "found": resident is not None},
            )
            return None if resident is None else self._record(resident)

        return self._transaction(work)

    def _record(self, resident: Resident) -> ResidentRecord:
        extra: dict[str, Any] = {}
        if resident.gender:
            extra["gender"] = resident.gender
        resident_phone = self._cipher.decrypt(resident.phone_enc)
        if resident_phone:
            extra["phone_masked"] = mask_phone(resident_phone)  # enough to confirm by voice
        return ResidentRecord(
            name=self._cipher.decrypt(resident.name_enc),
            birth_date=resident.birth_date,
            address=self._cipher.decrypt(resident.address_enc),
            grid_id=resident.grid_id,
            extra=extra,
        )

    def identify(self, *, id_number: str, phone: str | None) -> ResidentRecord | None:
        """The record of the resident with this ID number, only when `phone` (a caller ID or a
        phone proven by a one-time code) is that resident's registered phone. None otherwise,
        the same for an unknown ID and for another phone: an ID number alone reveals nothing."""
        id_hash, phone_hash = self._hash(id_number, "id_number"), self._hash(phone, "phone")
        if id_hash is None or phone_hash is None:
            return None

        def work(unit: UnitOfWork) -> ResidentRecord | None:
            session = unit.session
            resident = session.scalar(select(Resident).where(Resident.id_hash == id_hash))
            verified = resident if resident is not None and resident.phone_hash == phone_hash else None
            self._audit(
                unit,
                actor="assistant",
                action="read",
                entity_type="resident",
                entity_id=verified.id if verified is not None else None,
                detail={"by": "id_number+phone", "found": verified is not None},
            )
            return self._record(verified) if verified is not None else None

        return self._transaction(work)

    def confirm_correction(self, reference: str, actor: str) -> list[str]:
        """Staff accept what a caller said differently from the resident record (held on the
        case as a pending correction): the record takes it and the case no longer holds it.
        Returns the fields changed (empty when nothing was pending)."""

        def work(unit: UnitOfWork) -> list[str]:
            session = unit.session
            row = self._find_by_reference(session, reference, lock=True)
            if row is None or isinstance(row, Handoff):
                raise LookupError(f"no case with reference {reference}")
            fields = dict(self._cipher.decrypt_json(row.fields_enc) or {})
            pending = fields.pop(PENDING_CORRECTION, None) or {}
            resident = session.get(Resident, row.resident_id) if row.resident_id else None
            if not pending or resident is None:
                return []
            now = unit.now
            audits: list[dict[str, Any]] = []
            person = Person(name=pending.get("name"), id_number=pending.get("id_number"),
                            phone=pending.get("phone"))
            changed = self._apply_to_resident(resident, person, pending.get("address"))
            row.fields_enc = self._cipher.encrypt_json(fields)
            row.updated_at = now
            if changed:
                resident.updated_at = now
            session.flush()
            audits.append({"action": "update", "entity_type": "resident", "entity_id": resident.id,
                           "detail": {"fields": changed, "reference": reference, "by": "staff_confirmed"}})
            for audit in audits:
                self._audit(unit, actor=actor[:64], **audit)
            return changed

        return self._transaction(work)

    def _apply_to_resident(self, resident: Resident, person: Person, address: str | None) -> list[str]:
        changed: list[str] = []
        id_number, phone, name = clean_text(person.id_number), clean_text(person.phone), clean_text(person.name)
        if id_number:
            resident.id_hash, resident.id_enc = self._hash(id_number, "id_number"), self._cipher.encrypt(id_number)
            resident.birth_date, resident.gender = id_facts(id_number)
            changed.append("id_number")
        if phone:
            resident.phone_hash, resident.phone_enc = self._hash(phone, "phone"), self._cipher.encrypt(phone)
            changed.append("phone")
        if name:
            resident.name_enc = self._cipher.encrypt(name)
            changed.append("name")
        if address:
            resident.address_enc = self._cipher.encrypt(address)
            changed.append("address")
        return changed
