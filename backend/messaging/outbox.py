"""Durable outbound SMS: rows in `sms_outbox`, drained by the worker with back-off.

A message is enqueued in the same transaction as the change it reports (a ticket routed,
resolved …), so it is sent iff that change committed. The drain claims due rows with a lease
(`sending` + locked_until): a worker killed mid-send leaves the row to be taken again after the
lease, so a message may, rarely, go out twice, but is never lost. Twilio's status callbacks
(channels/twilio_sms.py) update `delivery_status`; a carrier failure that may pass (30003
unreachable, 30008 unknown …) is sent again, up to max_attempts.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from assistant.ports import Clock
from backend.infra.crypto import FieldCipher
from backend.infra.jobs import backoff
from backend.infra.models import SmsOptOut, SmsOutbox
from backend.infra.tx import TransactionRunner

log = logging.getLogger(__name__)

# Twilio error codes after which trying again later can work (carrier/handset side).
RETRYABLE_DELIVERY_ERRORS = frozenset({"30001", "30003", "30005", "30008", "30009", "30010", "30017"})
# The recipient opted out at the carrier/Twilio level: honour it like our own TD.
OPTED_OUT_ERRORS = frozenset({"21610", "30004"})


@dataclass(frozen=True)
class SendResult:
    provider_sid: str
    status: str  # Twilio's first status: "queued", "accepted", "sent" …


class SendError(Exception):
    def __init__(self, message: str, *, retryable: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


class SmsSender(Protocol):
    def send(self, to: str, body: str) -> SendResult: ...


def is_opted_out(session: Session, phone_hash: str) -> bool:
    return bool(session.scalar(select(SmsOptOut.opted_out).where(SmsOptOut.phone_hash == phone_hash)))


class Outbox:
    def __init__(self, sessions: sessionmaker[Session], cipher: FieldCipher, clock: Clock,
                 sender: SmsSender | None, *, max_attempts: int = 6,
                 lease: timedelta = timedelta(minutes=2)) -> None:
        self._sessions = sessions
        self._cipher = cipher
        self._clock = clock
        self.sender = sender
        self.max_attempts = max_attempts
        self.lease = lease
        self._tx = TransactionRunner(sessions, clock)

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def enqueue_in(self, session: Session, to: str, body: str, dedupe_key: str,
                   ticket_id: int | None = None) -> SmsOutbox | None:
        """Queues one SMS inside the caller's transaction; the same dedupe_key twice is one SMS
        (a job that runs again after a crash does not text the resident twice)."""
        existing = session.scalar(select(SmsOutbox).where(SmsOutbox.dedupe_key == dedupe_key))
        if existing is not None:
            return existing
        now = self._now()
        to_hash = self._cipher.blind_index(to, "phone")
        row = SmsOutbox(
            dedupe_key=dedupe_key[:200], to_hash=to_hash, to_enc=self._cipher.encrypt(to),
            body_enc=self._cipher.encrypt(body), ticket_id=ticket_id,
            send_state="suppressed" if is_opted_out(session, to_hash) else "pending",
            attempts=0, next_attempt_at=now, created_at=now, updated_at=now,
        )
        session.add(row)
        session.flush()
        return row

    def enqueue(self, to: str, body: str, dedupe_key: str, ticket_id: int | None = None) -> None:
        # The same key queued concurrently clashes on insert; the runner's retry then finds it.
        self._tx.run(lambda unit: self.enqueue_in(unit.session, to, body, dedupe_key, ticket_id))

    # --- drain ---------------------------------------------------------------------------------
    def _claim(self, limit: int) -> list[tuple[int, str, str, int]]:
        now = self._now()
        with self._sessions() as session, session.begin():
            rows = session.scalars(
                select(SmsOutbox)
                .where(or_(
                    (SmsOutbox.send_state == "pending") & (SmsOutbox.next_attempt_at <= now),
                    (SmsOutbox.send_state == "sending") & (SmsOutbox.locked_until < now),
                ))
                .order_by(SmsOutbox.next_attempt_at, SmsOutbox.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            claimed = []
            for row in rows:
                if is_opted_out(session, row.to_hash):  # TD arrived after it was queued
                    row.send_state, row.updated_at = "suppressed", now
                    continue
                row.send_state, row.locked_until = "sending", now + self.lease
                row.attempts += 1
                row.updated_at = now
                claimed.append((row.id, self._cipher.decrypt(row.to_enc), self._cipher.decrypt(row.body_enc),
                                row.attempts))
            return claimed

    def drain(self, limit: int = 20) -> int:
        """Sends what is due; returns how many rows it worked on."""
        if self.sender is None:
            return 0
        claimed = self._claim(limit)
        for row_id, to, body, attempts in claimed:
            try:
                result = self.sender.send(to, body)
            except SendError as exc:
                self._record_failure(row_id, attempts, str(exc), retryable=exc.retryable)
            except Exception as exc:  # network trouble: treat as transient
                log.warning("sms send failed: %s", exc)
                self._record_failure(row_id, attempts, f"{type(exc).__name__}: {exc}", retryable=True)
            else:
                self._record_sent(row_id, result)
        return len(claimed)

    def _record_sent(self, row_id: int, result: SendResult) -> None:
        with self._sessions() as session, session.begin():
            row = session.get(SmsOutbox, row_id, with_for_update=True)
            if row is None:
                return
            row.send_state, row.locked_until = "sent", None
            row.provider_sid, row.delivery_status = result.provider_sid, result.status
            row.updated_at = self._now()

    def _record_failure(self, row_id: int, attempts: int, error: str, *, retryable: bool) -> None:
        now = self._now()
        with self._sessions() as session, session.begin():
            row = session.get(SmsOutbox, row_id, with_for_update=True)
            if row is None:
                return
            row.last_error, row.locked_until, row.updated_at = error[:200], None, now
            if retryable and attempts < self.max_attempts:
                row.send_state, row.next_attempt_at = "pending", now + backoff(attempts)
            else:
                row.send_state = "failed"
                log.error("sms #%d failed for good after %d attempts: %s", row_id, attempts, error[:200])

    # --- delivery receipts ---------------------------------------------------------------------
    def on_status(self, provider_sid: str, status: str, error_code: str | None = None) -> bool:
        """Applies a Twilio status callback; False when the sid is not ours."""
        now = self._now()
        with self._sessions() as session, session.begin():
            row = session.scalar(
                select(SmsOutbox).where(SmsOutbox.provider_sid == provider_sid).with_for_update()
            )
            if row is None:
                return False
            row.delivery_status, row.updated_at = status[:16], now
            if status in {"failed", "undelivered"}:
                row.last_error = f"delivery {status} {error_code or ''}".strip()[:200]
                if error_code in OPTED_OUT_ERRORS:
                    row.send_state = "failed"
                elif error_code in RETRYABLE_DELIVERY_ERRORS and row.attempts < self.max_attempts:
                    # Send again later; the old sid keeps nothing (a new send gets a new sid).
                    row.send_state, row.provider_sid = "pending", None
                    row.next_attempt_at = now + backoff(row.attempts, base_seconds=60)
                else:
                    row.send_state = "failed"
            return True

    def counts(self) -> Mapping[str, int]:
        with self._sessions() as session:
            rows = session.execute(select(SmsOutbox.send_state)).scalars().all()
        out: dict[str, int] = {}
        for state in rows:
            out[state] = out.get(state, 0) + 1
        return out
