"""What the SMS channel keeps per inbound message and per number: the `sms_inbound` record that
makes webhooks idempotent on MessageSid (with the answer given), and TD/退订 opt-outs.

Used inside a TicketDesk unit of work, so a message, the report it opened and its recorded
answer commit together. Hot-path statements are prebuilt Core (see TicketDesk.intake_photos).
"""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, insert, select

from backend.crypto import FieldCipher
from backend.models import SmsInbound, SmsOptOut
from backend.tickets import UnitOfWork

_inbound = SmsInbound.__table__
_INSERT_INBOUND = insert(_inbound)
_STORED_REPLY = select(_inbound.c.reply_enc).where(_inbound.c.message_sid == bindparam("sid"))


class SmsInbox:
    def __init__(self, cipher: FieldCipher) -> None:
        self._cipher = cipher

    def answered(self, unit: UnitOfWork, message_sid: str) -> list[str] | None:
        """The segments this MessageSid was answered with, or None when it is new."""
        row = unit.session.connection().execute(_STORED_REPLY, {"sid": message_sid}).first()
        return None if row is None else list(self._cipher.decrypt_json(row[0]) or [])

    def record(self, unit: UnitOfWork, *, message_sid: str, from_hash: str, body: str, num_media: int,
               route: str, reply: Sequence[str], ticket_id: int | None) -> None:
        # A concurrent redelivery clashes here on message_sid; run() retries and then finds it.
        unit.session.connection().execute(_INSERT_INBOUND, {
            "message_sid": message_sid, "from_hash": from_hash, "body_enc": self._cipher.encrypt(body[:2000] or None),
            "num_media": num_media, "route": route, "ticket_id": ticket_id,
            "reply_enc": self._cipher.encrypt_json(list(reply)), "created_at": unit.now,
        })

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
