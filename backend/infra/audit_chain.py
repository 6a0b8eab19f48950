"""The tamper-evident audit chain: append-only entries, each linked to the previous by SM3
(legacy) or HMAC-SM3 under a versioned audit key, one locked head row that serialises appends,
and the check that finds the first broken link. backend.infra.audit explains a break and keeps
signed checkpoints outside the database.
"""
from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DDL, Engine, Integer, String, Text, event, insert, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from backend.infra.crypto import hmac_sm3_hex, sm3_hex
from backend.infra.models import ZERO_HASH, Base


class AuditEntry(Base):
    """Append-only; each row's hash covers the previous row's hash, so an edited, deleted or
    reordered row breaks the chain from that row on.

    key_version 0: legacy plain SM3 link (rows written before audit keys; anyone can recompute
    them, so they are accepted only as the chain's prefix). key_version ≥ 1: HMAC-SM3 link with
    that version of the audit key, which a database writer without the key cannot forge."""

    __tablename__ = "audit_entries"

    # Assigned under the audit_head lock (last_id + 1), not by the database, because the id is
    # part of the hashed content and must be known before insert.
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # create / read / update
    entity_type: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON, never personal data in clear
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    key_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    def compute_hash(self, keys: Mapping[int, bytes] | None = None) -> str:
        """Raises AuditKeyMissing for a keyed entry whose key version is not loaded."""
        return entry_hash({"id": self.id, "at": self.at, "actor": self.actor, "action": self.action,
                           "entity_type": self.entity_type, "entity_id": self.entity_id, "detail": self.detail,
                           "prev_hash": self.prev_hash, "key_version": self.key_version or 0}, keys)


class AuditKeyMissing(LookupError):
    """A keyed audit entry whose key version is not loaded: it cannot be checked."""


def entry_hash(row: Mapping[str, Any], keys: Mapping[int, bytes] | None = None) -> str:
    """The link of one entry: over the previous hash and the entry's canonical JSON (its detail
    already canonical). Version 0: plain SM3 (legacy). Else HMAC-SM3 with that audit key, the
    version itself inside the MAC so it cannot be swapped."""
    version = int(row.get("key_version") or 0)
    content = {
        "id": row["id"], "at": row["at"].astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": row["actor"], "action": row["action"], "entity_type": row["entity_type"],
        "entity_id": row["entity_id"], "detail": row["detail"],
    }
    if version == 0:
        return sm3_hex((row["prev_hash"] + canonical_json(content)).encode("utf-8"))
    key = (keys or {}).get(version)
    if key is None:
        raise AuditKeyMissing(version)
    message = "audit-entry\0" + row["prev_hash"] + canonical_json({**content, "key_version": version})
    return hmac_sm3_hex(key, message.encode("utf-8"))


@dataclass(frozen=True)
class AuditBinding:
    """Audit keys (and an optional checkpoint hook) of one engine, set by backend.infra.audit.bind."""

    keys: Mapping[int, bytes]
    active: int
    # Called after commit with (last_id, last_hash) of a committed append, at most every
    # `interval` seconds per process (signed checkpoints outside the database).
    on_commit: Callable[[int, str], None] | None = None
    interval: float = 300.0
    last_call: list[float] = field(default_factory=lambda: [float("-inf")], compare=False)


# Keyed by engine, not global: tests and tools open several stores with different keys in one
# process. An engine without a binding writes legacy (version 0) links.
_AUDIT_BINDINGS: weakref.WeakKeyDictionary[Engine, AuditBinding] = weakref.WeakKeyDictionary()


def bind_audit_keys(engine: Engine, binding: AuditBinding | None) -> None:
    if binding is None:
        _AUDIT_BINDINGS.pop(engine, None)
    else:
        _AUDIT_BINDINGS[engine] = binding


def audit_binding(session: Session) -> AuditBinding | None:
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else getattr(bind, "engine", None)
    return _AUDIT_BINDINGS.get(engine) if engine is not None else None


class AuditHead(Base):
    """Exactly one row (id 1): the chain's tip. Appenders lock it, which serialises appends,
    and verification compares it with the last entry, so a truncated tail is detected too."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_id: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))


# Seed the head row when tables are made with metadata.create_all (the migration seeds it too).
event.listen(
    AuditHead.__table__,
    "after_create",
    DDL(f"INSERT INTO audit_head (id, last_id, last_hash) VALUES (1, 0, '{ZERO_HASH}')"),
)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class AppendedAudit:
    id: int
    hash: str


_AUDIT_ENTRIES = AuditEntry.__table__
_AUDIT_HEAD = AuditHead.__table__
# Core statements built once: this runs in every write of personal data, and the ORM unit of work
# (identity map, flush) cost more than the SQL itself while the head lock is held.
_LOCK_HEAD = (select(_AUDIT_HEAD.c.last_id, _AUDIT_HEAD.c.last_hash)
              .where(_AUDIT_HEAD.c.id == 1).with_for_update())
_INSERT_ENTRY = insert(_AUDIT_ENTRIES)
_MOVE_HEAD = update(_AUDIT_HEAD).where(_AUDIT_HEAD.c.id == 1)


def append_audit(
    session: Session,
    *,
    at: datetime,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: int | None,
    detail: Mapping[str, Any],
) -> AppendedAudit:
    """Appends one entry inside the caller's transaction.

    The head row is taken with SELECT … FOR UPDATE (Postgres row lock; SQLite ignores it, but
    there every transaction starts with BEGIN IMMEDIATE, see backend.infra.db). Call it last in a unit
    of work so the lock is held only until commit and lock order is always data → head.
    """
    return append_audits(session, at, [dict(actor=actor, action=action, entity_type=entity_type,
                                            entity_id=entity_id, detail=detail)])[-1]


def append_audits(session: Session, at: datetime, entries: Sequence[Mapping[str, Any]]) -> list[AppendedAudit]:
    """Several entries under one take of the head lock (a unit of work's audits, in order)."""
    session.flush()  # the data these entries describe is written first (lock order data → head)
    conn = session.connection()
    binding = audit_binding(session)
    version = binding.active if binding is not None else 0
    keys = binding.keys if binding is not None else None
    last_id, last_hash = conn.execute(_LOCK_HEAD).one()
    at = at.astimezone(UTC)
    rows, appended = [], []
    for entry in entries:
        last_id += 1
        row = {"id": last_id, "at": at, "actor": entry["actor"], "action": entry["action"],
               "entity_type": entry["entity_type"], "entity_id": entry["entity_id"],
               "detail": canonical_json(dict(entry["detail"])), "prev_hash": last_hash, "key_version": version}
        last_hash = row["hash"] = entry_hash(row, keys)
        rows.append(row)
        appended.append(AppendedAudit(last_id, last_hash))
    if rows:
        conn.execute(_INSERT_ENTRY, rows)
        conn.execute(_MOVE_HEAD, {"last_id": last_id, "last_hash": last_hash})
        if binding is not None and binding.on_commit is not None \
                and time.monotonic() - binding.last_call[0] >= binding.interval:
            # Only a committed head may be signed: handed to the after_commit listener below.
            session.info["audit_checkpoint"] = (binding, last_id, last_hash)
    return appended


@event.listens_for(Session, "after_commit")
def _checkpoint_after_commit(session: Session) -> None:
    pending = session.info.pop("audit_checkpoint", None)
    if pending is None:
        return
    binding, last_id, last_hash = pending
    binding.last_call[0] = time.monotonic()
    try:
        binding.on_commit(last_id, last_hash)
    except Exception:  # the data is committed; a failed checkpoint must not fail the request
        logging.getLogger(__name__).exception("could not write the audit checkpoint")


@event.listens_for(Session, "after_rollback")
def _drop_checkpoint(session: Session) -> None:
    session.info.pop("audit_checkpoint", None)


def verify_audit_chain(session: Session, keys: Mapping[int, bytes] | None = None) -> int | None:
    """Id of the first broken entry, or None when the whole chain checks out.

    Broken means: recomputed hash differs (edited, or re-chained with a wrong key), the entry's
    key version is not loaded, a legacy (version 0) entry follows a keyed one (re-chained with
    plain SM3), prev_hash does not match the previous row or the id is not the next one
    (deleted or reordered), or the head disagrees with the last row (tail deleted: the id
    returned is the first missing one). `keys` default to the engine's binding.
    """
    if keys is None:
        binding = audit_binding(session)
        keys = binding.keys if binding is not None else {}
    expected_id, expected_prev, keyed = 1, ZERO_HASH, False
    result = session.execute(
        select(AuditEntry)
        .order_by(AuditEntry.id)
        # read what is stored now, not rows this session may hold from earlier
        .execution_options(yield_per=1000, populate_existing=True)
    )
    try:
        for entry in result.scalars():
            if (
                entry.id != expected_id
                or entry.prev_hash != expected_prev
                or (keyed and not entry.key_version)
                or entry.key_version not in (0, *keys)
                or entry.hash != entry.compute_hash(keys)
            ):
                return min(entry.id, expected_id)
            expected_id, expected_prev, keyed = entry.id + 1, entry.hash, keyed or bool(entry.key_version)
    finally:
        result.close()  # may stop early: release the (server-side) cursor
    head = session.get(AuditHead, 1, populate_existing=True)
    last_id = expected_id - 1
    if head is None:
        return None if last_id == 0 else expected_id
    if head.last_id > last_id:
        return last_id + 1
    if head.last_id < last_id:
        return head.last_id + 1
    if head.last_hash != expected_prev:
        return max(last_id, 1)
    return None
