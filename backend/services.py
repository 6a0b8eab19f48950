"""StoreBackend: the assistant's ServiceBackend on SQLAlchemy, plus staff-side helpers.

Every unit of work is one transaction that ends with its audit entries (see
models.append_audit), so the audit chain and the data it describes commit together.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from assistant.ports import (
    CaseReceipt,
    CaseRequest,
    Clock,
    HandoffRequest,
    Person,
    ProgressItem,
    ResidentRecord,
)
from assistant.privacy import mask_phone, mask_text
from backend.crypto import FieldCipher
from backend.jobs import enqueue_in
from backend.models import (
    CASE_MODELS,
    STATUSES,
    Application,
    Booking,
    Handoff,
    Resident,
    StatusEvent,
    Ticket,
    append_audit,
    idempotency_digest,
)
from backend.references import is_valid_reference, new_reference, reference_kind

CaseRow = Application | Booking | Ticket | Handoff
T = TypeVar("T")

# Case kind (as the core names it) -> entity type (table) it is stored in.
KIND_ENTITY: dict[str, str] = {
    "application": "application",
    "proxy_request": "application",  # a family member applying for the resident
    "booking": "booking",
    "ticket": "ticket",
}
PROGRESS_LIMIT = 5
# Postgres serialization failure / deadlock: the whole unit of work can simply run again.
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})
# Slots that describe the resident's home; copied onto the Resident for later prefill.
_HOME_ADDRESS_SLOT = "address"
# An application in one of these is still being handled: the same one again is a duplicate.
OPEN_APPLICATION_STATUSES = ("submitted", "accepted", "in_review", "need_more_info")
# Where a case keeps what the caller said that differs from the resident record (encrypted in
# fields_enc) until staff confirm it: an unverified caller must not rewrite someone's record.
PENDING_CORRECTION = "pending_correction"


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


def _retryable(exc: IntegrityError | OperationalError) -> bool:
    """Unique-constraint clashes and Postgres deadlock/serialization failures; other integrity
    errors (a NOT NULL or foreign key) are bugs and would fail the same way again."""
    sqlstate = getattr(exc.orig, "sqlstate", None)  # psycopg
    if sqlstate is not None:
        return sqlstate == "23505" or sqlstate in _RETRY_SQLSTATES
    return isinstance(exc, IntegrityError) and "UNIQUE constraint failed" in str(exc.orig)


def _system_clock() -> datetime:
    return datetime.now(UTC)


def _clean(value: str | None) -> str | None:
    """NFKC + trimmed; empty strings count as absent."""
    if value is None:
        return None
    value = unicodedata.normalize("NFKC", value).strip()
    return value or None


def _id_facts(id_number: str) -> tuple[date | None, str | None]:
    """Birth date and gender encoded in an 18-character ID (None when it does not parse)."""
    text = re.sub(r"\s+", "", unicodedata.normalize("NFKC", id_number))
    if not re.fullmatch(r"\d{17}[\dXx]", text):
        return None, None
    try:
        born = date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        born = None
    return born, ("M" if int(text[16]) % 2 else "F")


class StoreBackend:
    """Implements assistant.ports.ServiceBackend. Thread-safe: one session per call."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        cipher: FieldCipher,
        clock: Clock = _system_clock,
        *,
        max_attempts: int = 8,
    ) -> None:
        self._sessions = session_factory
        self._cipher = cipher
        self._clock = clock
        self._max_attempts = max_attempts

    @property
    def session_factory(self) -> Callable[[], Session]:
        return self._sessions

    @property
    def cipher(self) -> FieldCipher:
        return self._cipher

    # --- plumbing --------------------------------------------------------------------------
    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("clock must return a timezone-aware datetime")
        return now.astimezone(UTC)

    def _transaction(self, work: Callable[[Session], T]) -> T:
        """Runs `work` in a fresh transaction, retrying on unique-constraint clashes (a random
        reference already taken, or a concurrent insert of the same idempotency key/resident:
        the retry then finds the committed row)."""
        for attempt in range(self._max_attempts):
            try:
                with self._sessions() as session, session.begin():
                    return work(session)
            except (IntegrityError, OperationalError) as exc:
                if not _retryable(exc) or attempt + 1 == self._max_attempts:
                    raise
        raise AssertionError("unreachable")

    def _hash(self, value: str | None, purpose: str) -> str | None:
        value = _clean(value)
        return self._cipher.blind_index(value, purpose) if value else None

    def _status_event(
        self,
        session: Session,
        entity_type: str,
        entity_id: int,
        from_status: str | None,
        to_status: str,
        actor: str,
        at: datetime,
        note: str | None = None,
    ) -> None:
        session.add(
            StatusEvent(
                entity_type=entity_type,
                entity_id=entity_id,
                from_status=from_status,
                to_status=to_status,
                actor=actor,
                note=note,
                at=at,
            )
        )

    @staticmethod
    def _category(row: CaseRow) -> str:
        return row.reason if isinstance(row, Handoff) else row.category

    def _receipt(self, row: CaseRow) -> CaseReceipt:
        return CaseReceipt(
            reference=row.reference,
            kind=reference_kind(row.reference) or "",
            category=self._category(row),
            status=row.status,
            created_at=row.created_at,
        )

    def _progress_item(self, row: CaseRow) -> ProgressItem:
        return ProgressItem(
            reference=row.reference,
            kind=reference_kind(row.reference) or "",
            category=self._category(row),
            status=row.status,
            updated_at=row.updated_at,
        )

    # --- residents -------------------------------------------------------------------------
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
            resident = self._match_by_phone(session, phone_hash, _clean(person.name), without_id=bool(id_hash))
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
        id_number, phone, name = _clean(person.id_number), _clean(person.phone), _clean(person.name)
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
            resident.birth_date, resident.gender = _id_facts(id_number)
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

    # --- ServiceBackend ----------------------------------------------------------------------
    def submit_case(self, request: CaseRequest) -> CaseReceipt:
        try:
            entity_type = KIND_ENTITY[request.kind]
        except KeyError:
            raise ValueError(f"unknown case kind {request.kind!r}") from None
        model = CASE_MODELS[entity_type]
        actor = f"resident:{request.channel}"[:64]
        key = idempotency_digest(self._cipher, request.idempotency_key)
        sender_hash = self._hash(request.sender_id, "sender") or ""

        def work(session: Session) -> CaseReceipt:
            existing = session.scalar(select(model).where(model.idempotency_key == key))
            if existing is not None:
                return self._receipt(existing)
            now = self._now()
            if request.kind == "application":
                duplicate = self._open_duplicate(session, request, sender_hash, now)
                if duplicate is not None:
                    return duplicate
            fields = dict(request.fields)
            home = fields.get(_HOME_ADDRESS_SLOT) if entity_type != "ticket" else None
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
                    contact_enc=self._cipher.encrypt(_clean(request.subject.phone)),
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
                append_audit(session, at=now, actor=actor, **audit)
            return self._receipt(row)

        return self._transaction(work)

    def _open_duplicate(
        self, session: Session, request: CaseRequest, sender_hash: str, now: datetime
    ) -> CaseReceipt | None:
        """The same application of the same resident, still open: answered with that case
        instead of a second one. Its reference is told only to whoever may know it (the
        verified resident, or the sender who filed it); anyone else hears that it exists.
        Only an ID number says "the same resident": a shared phone may be a spouse's."""
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
        append_audit(
            session,
            at=now,
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

        def work(session: Session) -> CaseReceipt:
            existing = session.scalar(select(Handoff).where(Handoff.idempotency_key == key))
            if existing is not None:
                return self._receipt(existing)
            now = self._now()
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
            append_audit(
                session,
                at=now,
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

    def _find_by_reference(self, session: Session, reference: str, *, lock: bool = False) -> CaseRow | None:
        kind = reference_kind(reference)
        if kind is None:
            return None
        model = CASE_MODELS[KIND_ENTITY.get(kind, kind)]
        query = select(model).where(model.reference == reference)
        if lock:
            query = query.with_for_update()
        return session.scalar(query)

    def progress(
        self, *, phone: str | None = None, reference: str | None = None
    ) -> list[ProgressItem]:
        """By reference (exact, any case table) when given, else by phone: cases about that
        phone's owner or submitted from it, most recently updated first, at most 5."""
        reference = re.sub(r"\s+", "", _clean(reference) or "") or None
        phone_hash = self._hash(phone, "phone")
        if reference is None and phone_hash is None:
            raise ValueError("progress needs a phone or a reference")

        def work(session: Session) -> list[ProgressItem]:
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
            append_audit(
                session,
                at=self._now(),
                actor="assistant",
                action="read",
                entity_type="case",
                entity_id=rows[0].id if len(rows) == 1 else None,
                detail={"by": by, "references": [r.reference for r in rows]},
            )
            return [self._progress_item(r) for r in rows]

        return self._transaction(work)

    def find_resident(
        self, *, id_number: str | None = None, phone: str | None = None
    ) -> ResidentRecord | None:
        id_hash, phone_hash = self._hash(id_number, "id_number"), self._hash(phone, "phone")
        if id_hash is None and phone_hash is None:
            raise ValueError("find_resident needs an ID number or a phone")

        def work(session: Session) -> ResidentRecord | None:
            resident: Resident | None
            if id_hash is not None:
                by = "id_number"
                resident = session.scalar(select(Resident).where(Resident.id_hash == id_hash))
            else:
                by = "phone"
                matches = self._residents_by_phone(session, phone_hash or "")
                resident = matches[0] if len(matches) == 1 else None  # shared phone: no guess
            append_audit(
                session,
                at=self._now(),
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

    def precheck(self, proxy_phone: str | None, kind: str) -> None:
        """The plain store keeps no family grants (ProxyAwareBackend does): nothing to check."""
        return None

    def identify(self, *, id_number: str, phone: str | None) -> ResidentRecord | None:
        """The record of the resident with this ID number, only when `phone` (a caller ID or a
        phone proven by a one-time code) is that resident's registered phone. None otherwise,
        the same for an unknown ID and for another phone: an ID number alone reveals nothing."""
        id_hash, phone_hash = self._hash(id_number, "id_number"), self._hash(phone, "phone")
        if id_hash is None or phone_hash is None:
            return None

        def work(session: Session) -> ResidentRecord | None:
            resident = session.scalar(select(Resident).where(Resident.id_hash == id_hash))
            verified = resident if resident is not None and resident.phone_hash == phone_hash else None
            append_audit(
                session,
                at=self._now(),
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

        def work(session: Session) -> list[str]:
            row = self._find_by_reference(session, reference, lock=True)
            if row is None or isinstance(row, Handoff):
                raise LookupError(f"no case with reference {reference}")
            fields = dict(self._cipher.decrypt_json(row.fields_enc) or {})
            pending = fields.pop(PENDING_CORRECTION, None) or {}
            resident = session.get(Resident, row.resident_id) if row.resident_id else None
            if not pending or resident is None:
                return []
            now = self._now()
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
                append_audit(session, at=now, actor=actor[:64], **audit)
            return changed

        return self._transaction(work)

    def _apply_to_resident(self, resident: Resident, person: Person, address: str | None) -> list[str]:
        changed: list[str] = []
        id_number, phone, name = _clean(person.id_number), _clean(person.phone), _clean(person.name)
        if id_number:
            resident.id_hash, resident.id_enc = self._hash(id_number, "id_number"), self._cipher.encrypt(id_number)
            resident.birth_date, resident.gender = _id_facts(id_number)
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

    # --- staff side ------------------------------------------------------------------------
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

        def work(session: Session) -> ProgressItem:
            row = self._find_by_reference(session, reference, lock=True)
            if row is None:
                raise LookupError(f"no {entity_type} with reference {reference}")
            from_status = row.status
            if from_status == to_status:
                return self._progress_item(row)
            now = self._now()
            row.status, row.updated_at = to_status, now
            if isinstance(row, Handoff) and to_status == "taken":
                row.taken_by = actor[:64]
            self._status_event(
                session, entity_type, row.id, from_status, to_status, actor[:64], now,
                mask_text(note) if note else None,
            )
            session.flush()
            append_audit(
                session,
                at=now,
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

        def work(session: Session) -> CaseDetail | None:
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
            append_audit(
                session,
                at=self._now(),
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
