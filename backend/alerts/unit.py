"""The alert desk's unit of work: backend.infra.tx's UnitOfWork plus a per-transaction cache of each
household's decrypted contacts (one decryption and one audited read per household and transaction)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from backend.infra.tx import UnitOfWork


@dataclass(frozen=True)
class Person:
    """A household contact, decrypted for this transaction only."""

    id: int
    role: str
    name: str
    phone: str | None


class AlertUnit(UnitOfWork):
    def __init__(self, session: Session, now: datetime) -> None:
        super().__init__(session, now)
        self.contacts: dict[int, list[Person]] = {}
