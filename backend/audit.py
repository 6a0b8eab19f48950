"""Audit chain check for operators: the first broken link and, in words, what is wrong with it.

models.verify_audit_chain finds the link; this module only explains it, by looking at the
broken row and its neighbour again.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.models import ZERO_HASH, AuditEntry, AuditHead, verify_audit_chain


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    entries: int
    broken_id: int | None = None
    problem: str | None = None

    def line(self) -> str:
        if self.ok:
            return "ok"
        return f"broken at entry {self.broken_id}: {self.problem}"


def _explain(session: Session, broken_id: int) -> str:
    entry = session.get(AuditEntry, broken_id, populate_existing=True)
    previous = session.scalar(
        select(AuditEntry).where(AuditEntry.id < broken_id).order_by(AuditEntry.id.desc()).limit(1)
    )
    head = session.get(AuditHead, 1, populate_existing=True)
    if entry is None:
        following = session.scalar(select(func.min(AuditEntry.id)).where(AuditEntry.id > broken_id))
        if following is not None:
            return f"entry is missing (deleted); the chain jumps to entry {following}"
        last = head.last_id if head else "?"
        return f"entry is missing (deleted from the end); the head says the last entry is {last}"
    if entry.hash != entry.compute_hash():
        return "stored hash does not match the entry's content (edited, or moved from another position)"
    expected_prev = previous.hash if previous is not None else ZERO_HASH
    if entry.prev_hash != expected_prev:
        before = f"entry {previous.id}" if previous is not None else "the start of the chain"
        return f"prev_hash does not match {before} (an entry before it was deleted, edited or reordered)"
    if previous is not None and previous.id != broken_id - 1:
        return f"entry {broken_id - 1} is missing (deleted)"
    if head is None:
        return "the audit_head row is missing"
    if head.last_id != entry.id or head.last_hash != entry.hash:
        return (f"audit_head says the last entry is {head.last_id}, the table ends at {entry.id} "
                "(entries added or removed at the end outside the application)")
    return "inconsistent chain"


def verify(session_factory: Callable[[], Session]) -> AuditReport:
    """Reads the whole chain in one transaction (a consistent snapshot on Postgres)."""
    with session_factory() as session, session.begin():
        count = int(session.scalar(select(func.count()).select_from(AuditEntry)) or 0)
        broken = verify_audit_chain(session)
        if broken is None:
            return AuditReport(True, count)
        return AuditReport(False, count, broken, _explain(session, broken))
