"""The ledger of inbound SMS: the `sms_inbound` row that makes each MessageSid answered exactly
once (claimed when the message arrives, its answer written once), and TD/退订 opt-outs.

Used inside the inbox's units of work (backend/messaging/inbox.py), so that a message, the report it
opened and its recorded answer can commit together. Hot-path statements are prebuilt Core
(see TicketDesk.intake_photos): this runs on every webhook.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from enum import StrEnum

from sqlalchemy import bindparam, delete, insert, select, update

from backend.infra.crypto import FieldCipher
from backend.infra.models import SmsInbound, SmsOptOut
from backend.infra.tx import UnitOfWork

CLAIMED = "claimed"  # the route of a row whose answer is still being worked out

_inbound = SmsInbound.__table__
_INSERT = insert(_inbound)
_FIND = select(_inbound.c.route, _inbound.c.reply_enc, _inbound.c.created_at).where(
    _inbound.c.message_sid == bindparam("sid"))
_ANSWER = update(_inbound).where(_inbound.c.message_sid == bindparam("sid")).values(
    route=bindparam("route"), reply_enc=bindparam("reply_enc"), ticket_id=bindparam("ticket_id"))
_TAKE_OVER = update(_inbound).where(_inbound.c.message_sid == bindparam("sid"),
                                    _inbound.c.route == CLAIMED).values(created_at=bindparam("now"))
_RELEASE = delete(_inbound).where(_inbound.c.message_sid == bindparam("sid"), _inbound.c.route == CLAIMED)


class ClaimState(StrEnum):
    NEW = "new"  # this delivery claimed the message: answer it
    ANSWERED = "answered"  # a redelivery: the stored answer is the answer
    PENDING = "pending"  # another delivery is answering it right now


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    reply: tuple[str, ...] = ()
    route: str = CLAIMED


class InboundLedger:
    def __init__(self, cipher: FieldCipher) -> None:
        self._cipher = cipher

    def claim(self, unit: UnitOfWork, *, message_sid: str, from_hash: str, body: str, num_media: int,
              stale_after: timedelta) -> Claim:
        """Claims `message_sid` for this delivery, or says why not. A claim older than
        `stale_after` was left by a worker that died mid-answer: this delivery takes it over."""
        conn = unit.session.connection()
        row = conn.execute(_FIND, {"sid": message_sid}).first()
        if row is None:
            # A concurrent delivery of the same MessageSid clashes here on the unique key; the
            # runner retries and then finds this row.
            conn.execute(_INSERT, {
                "message_sid": message_sid, "from_hash": from_hash, "num_media": num_media, "route": CLAIMED,
                "body_enc": self._cipher.encrypt(body[:2000] or None), "ticket_id": None, "reply_enc": None,
                "created_at": unit.now,
            })
            return Claim(ClaimState.NEW)
        route, reply_enc, created_at = row
        if route != CLAIMED:
            return Claim(ClaimState.ANSWERED, tuple(self._cipher.decrypt_json(reply_enc) or ()), route)
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)
        if unit.now - created_at > stale_after:
            conn.execute(_TAKE_OVER, {"sid": message_sid, "now": unit.now})
            return Claim(ClaimState.NEW)
        return Claim(ClaimState.PENDING)

    def answered(self, unit: UnitOfWork, message_sid: str) -> Claim | None:
        """The stored answer of `message_sid`, or None while it has none."""
        row = unit.session.connection().execute(_FIND, {"sid": message_sid}).first()
        if row is None or row[0] == CLAIMED:
            return None
        return Claim(ClaimState.ANSWERED, tuple(self._cipher.decrypt_json(row[1]) or ()), row[0])

    def answer(self, unit: UnitOfWork, message_sid: str, *, route: str, reply: Sequence[str],
               ticket_id: int | None) -> None:
        """Writes the answer of a claimed message: once, since only a claim's holder calls it."""
        unit.session.connection().execute(_ANSWER, {
            "sid": message_sid, "route": route, "ticket_id": ticket_id,
            "reply_enc": self._cipher.encrypt_json(list(reply))})

    def release(self, unit: UnitOfWork, message_sid: str) -> None:
        """Drops an unanswered claim, so that the carrier's retry runs the message afresh."""
        unit.session.connection().execute(_RELEASE, {"sid": message_sid})

    def set_opt_out(self, unit: UnitOfWork, *, from_hash: str, message_sid: str, opted_out: bool) -> None:
        """TD/退订 (opted_out=True) or 开通; recorded with the message that asked, and audited."""
        row = unit.session.scalar(select(SmsOptOut).where(SmsOptOut.phone_hash == from_hash).with_for_update())
        if row is None:
            row = SmsOptOut(phone_hash=from_hash, opted_out=opted_out, changed_at=unit.now)
            unit.session.add(row)
        row.opted_out, row.message_sid, row.changed_at = opted_out, message_sid, unit.now
        unit.session.flush()
        unit.audit("resident:sms", "update", row.id, entity_type="sms_optout", opted_out=opted_out,
                   message_sid=message_sid)
