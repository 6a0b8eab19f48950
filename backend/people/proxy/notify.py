"""Outbound SMS for proxy grants: the Notifier ports (the outbox, or a recorder in tests) and
the unit of work that holds a transaction's pending messages until they can be sent."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Protocol, runtime_checkable

from sqlalchemy.orm import Session

from backend.infra.tx import UnitOfWork


# --- ports -------------------------------------------------------------------------------------
class Notifier(Protocol):
    """Outbound SMS. The real one queues into the outbox; `dedupe_key` repeated = sent once."""

    def send_sms(self, phone: str, text: str, dedupe_key: str) -> None: ...


@runtime_checkable
class TransactionalNotifier(Notifier, Protocol):
    """A notifier that can queue inside the caller's transaction (the outbox can)."""

    def send_sms_in(self, session: Session, phone: str, text: str, dedupe_key: str) -> None: ...


class OutboxNotifier:
    """Adapter for backend.messaging.outbox.Outbox (duck-typed: enqueue / enqueue_in)."""

    def __init__(self, outbox: Any) -> None:
        self.outbox = outbox

    def send_sms(self, phone: str, text: str, dedupe_key: str) -> None:
        self.outbox.enqueue(phone, text, dedupe_key)

    def send_sms_in(self, session: Session, phone: str, text: str, dedupe_key: str) -> None:
        self.outbox.enqueue_in(session, phone, text, dedupe_key)


@dataclass
class RecordingNotifier:
    """For tests and dry runs: keeps what would have been sent, once per dedupe key."""

    sent: list[tuple[str, str, str]] = field(default_factory=list)

    def send_sms(self, phone: str, text: str, dedupe_key: str) -> None:
        if all(key != dedupe_key for _, _, key in self.sent):
            self.sent.append((phone, text, dedupe_key))

    def to(self, phone: str) -> list[str]:
        return [text for p, text, _ in self.sent if p == phone]


@dataclass
class Outgoing:
    phone: str
    text: str
    dedupe_key: str


class ProxyUnit(UnitOfWork):
    """A unit of work that also collects the SMS its grant changes cause: queued in the same
    transaction by a TransactionalNotifier, else handed to the notifier after commit."""

    def __init__(self, session: Session, now: datetime) -> None:
        super().__init__(session, now)
        self.messages: list[Outgoing] = []

    def send_with(self, notifier: Notifier) -> None:
        if isinstance(notifier, TransactionalNotifier):
            # The SMS row commits (or rolls back) together with the grant change.
            for message in self.messages:
                notifier.send_sms_in(self.session, message.phone, message.text, message.dedupe_key)
        else:  # a crash after commit loses the SMS, not the ProxyNotification row saying it was due
            for message in self.messages:
                self.after_commit.append(partial(notifier.send_sms, message.phone, message.text,
                                                 message.dedupe_key))
        self.messages.clear()
