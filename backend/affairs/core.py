"""The case store's shared plumbing: the store, cipher and clock StoreBackend works on, one
transaction runner (backend.infra.tx, audits appended last), blind indexes, status events, receipts,
and the rules shared by its parts (which table a case kind lives in, input clean-up)."""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from assistant.ports import (
    CaseReceipt,
    Clock,
    ProgressItem,
)
from backend.affairs.references import reference_kind
from backend.infra.crypto import FieldCipher
from backend.infra.models import (
    CASE_MODELS,
    Application,
    Booking,
    Handoff,
    StatusEvent,
    Ticket,
)
from backend.infra.tx import TransactionRunner, UnitOfWork

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
# Slots that describe the resident's home; copied onto the Resident for later prefill.
HOME_ADDRESS_SLOT = "address"
# An application in one of these is still being handled: the same one again is a duplicate.
OPEN_APPLICATION_STATUSES = ("submitted", "accepted", "in_review", "need_more_info")
# Where a case keeps what the caller said that differs from the resident record (encrypted in
# fields_enc) until staff confirm it: an unverified caller must not rewrite someone's record.
PENDING_CORRECTION = "pending_correction"

def system_clock() -> datetime:
    return datetime.now(UTC)


def clean_text(value: str | None) -> str | None:
    """NFKC + trimmed; empty strings count as absent."""
    if value is None:
        return None
    value = unicodedata.normalize("NFKC", value).strip()
    return value or None


def id_facts(id_number: str) -> tuple[date | None, str | None]:
    """Birth date and gender encoded in an 18-character ID (None when it does not parse)."""
    text = re.sub(r"\s+", "", unicodedata.normalize("NFKC", id_number))
    if not re.fullmatch(r"\d{17}[\dXx]", text):
        return None, None
    try:
        born = date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        born = None
    return born, ("M" if int(text[16]) % 2 else "F")


class StoreCore:
    """What the case, resident and staff parts of StoreBackend share."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        cipher: FieldCipher,
        clock: Clock = system_clock,
        *,
        max_attempts: int = 8,
    ) -> None:
        self._sessions = session_factory
        self._cipher = cipher
        self._clock = clock
        self._tx = TransactionRunner(session_factory, clock, attempts=max_attempts)

    @property
    def session_factory(self) -> Callable[[], Session]:
        return self._sessions

    @property
    def cipher(self) -> FieldCipher:
        return self._cipher

    # --- plumbing --------------------------------------------------------------------------
    def _transaction(self, work: Callable[[UnitOfWork], T]) -> T:
        """Runs `work` in a fresh transaction, audits appended last, retrying what a second try
        can fix (backend.infra.tx): a random reference already taken, or a concurrent insert of the
        same idempotency key/resident — the retry then finds the committed row."""
        return self._tx.run(work)

    @staticmethod
    def _audit(unit: UnitOfWork, *, actor: str, action: str, entity_type: str, entity_id: int | None,
               detail: Mapping[str, Any]) -> None:
        unit.audit(actor, action, entity_id, entity_type=entity_type, **detail)

    def _hash(self, value: str | None, purpose: str) -> str | None:
        value = clean_text(value)
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

    def _find_by_reference(self, session: Session, reference: str, *, lock: bool = False) -> CaseRow | None:
        kind = reference_kind(reference)
        if kind is None:
            return None
        model = CASE_MODELS[KIND_ENTITY.get(kind, kind)]
        query = select(model).where(model.reference == reference)
        if lock:
            query = query.with_for_update()
        return session.scalar(query)
