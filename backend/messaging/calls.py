"""Call records for the phone line: when, the path through the flow, what was said, how it ended.

The caller's number and the transcript are personal data (SM4 at rest, blind index for lookup).
No audio is recorded by the IVR itself; recogniser audio has its own retention (config.yml).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Boolean, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from assistant.ports import Clock
from backend.infra.audit_chain import append_audit
from backend.infra.crypto import FieldCipher
from backend.infra.models import Base, Timestamps

MAX_TRANSCRIPT_LINES = 200


class CallRecord(Timestamps, Base):
    __tablename__ = "call_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    call_sid: Mapped[str] = mapped_column(String(64), unique=True)
    caller_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    caller_enc: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(24), default="in_progress")
    path: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of steps, no personal data
    transcript_enc: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(String(24))  # handoff | completed | abandoned | error
    handoff_reference: Mapped[str | None] = mapped_column(String(8))


class VoicePreference(Timestamps, Base):
    """Residents marked to reach a person straight away (hard of hearing, confused by menus)."""

    __tablename__ = "voice_preferences"

    id: Mapped[int] = mapped_column(primary_key=True)
    phone_hash: Mapped[str] = mapped_column(String(64), unique=True)
    direct_to_human: Mapped[bool] = mapped_column(Boolean, default=False)


class CallLog:
    def __init__(self, sessions: Callable[[], Session], cipher: FieldCipher, clock: Clock) -> None:
        self._sessions = sessions
        self._cipher = cipher
        self._clock = clock

    def _phone_hash(self, phone: str | None) -> str | None:
        return self._cipher.blind_index(phone, "phone") if phone else None

    def _get(self, session: Session, call_sid: str) -> CallRecord | None:
        return session.scalars(select(CallRecord).where(CallRecord.call_sid == call_sid)).first()

    def start(self, call_sid: str, caller: str | None) -> None:
        """Idempotent: Twilio may deliver the incoming-call webhook twice."""
        with self._sessions() as session, session.begin():
            if self._get(session, call_sid) is not None:
                return
            record = CallRecord(call_sid=call_sid, caller_hash=self._phone_hash(caller),
                                caller_enc=self._cipher.encrypt(caller) if caller else None,
                                started_at=self._clock(), path="[]")
            session.add(record)
            session.flush()
            append_audit(session, at=self._clock(), actor="voice", action="create", entity_type="call_record",
                         entity_id=record.id, detail={"call": call_sid})

    def step(self, call_sid: str, step: str, said: list[tuple[str, str]] | None = None,
             outcome: str | None = None, handoff_reference: str | None = None) -> None:
        with self._sessions() as session, session.begin():
            record = self._get(session, call_sid)
            if record is None:
                return
            record.path = json.dumps([*json.loads(record.path), step][-100:])
            if said:
                lines = self._cipher.decrypt_json(record.transcript_enc) if record.transcript_enc else []
                lines = [*lines, *[[role, text] for role, text in said]][-MAX_TRANSCRIPT_LINES:]
                record.transcript_enc = self._cipher.encrypt_json(lines)
            if outcome:
                record.outcome = outcome
            if handoff_reference:
                record.handoff_reference = handoff_reference
            record.updated_at = self._clock()

    def end(self, call_sid: str, status: str) -> None:
        with self._sessions() as session, session.begin():
            record = self._get(session, call_sid)
            if record is None or record.ended_at is not None:
                return
            record.ended_at = self._clock()
            record.status = status[:24]
            if record.outcome is None:
                record.outcome = "completed" if status == "completed" else "abandoned"

    def direct_to_human(self, caller: str | None) -> bool:
        phone_hash = self._phone_hash(caller)
        if not phone_hash:
            return False
        with self._sessions() as session:
            pref = session.scalars(select(VoicePreference).where(VoicePreference.phone_hash == phone_hash)).first()
            return bool(pref and pref.direct_to_human)

    def set_direct_to_human(self, phone: str, value: bool, actor: str = "staff") -> None:
        phone_hash = self._phone_hash(phone)
        with self._sessions() as session, session.begin():
            pref = session.scalars(select(VoicePreference).where(VoicePreference.phone_hash == phone_hash)).first()
            if pref is None:
                pref = VoicePreference(phone_hash=phone_hash)
                session.add(pref)
            pref.direct_to_human = value
            session.flush()
            append_audit(session, at=self._clock(), actor=actor, action="update", entity_type="voice_preference",
                         entity_id=pref.id, detail={"direct_to_human": value})

    def get(self, call_sid: str) -> dict | None:
        """A decrypted call record for staff; reading the transcript is audited."""
        with self._sessions() as session, session.begin():
            record = self._get(session, call_sid)
            if record is None:
                return None
            append_audit(session, at=self._clock(), actor="staff", action="read", entity_type="call_record",
                         entity_id=record.id, detail={"fields": ["transcript"]})
            return {
                "call_sid": record.call_sid, "status": record.status, "outcome": record.outcome,
                "path": json.loads(record.path), "started_at": record.started_at, "ended_at": record.ended_at,
                "transcript": self._cipher.decrypt_json(record.transcript_enc) if record.transcript_enc else [],
                "handoff_reference": record.handoff_reference,
            }
