"""What the inbox needs of the rest of the service, as small interfaces: the conversation (the
SMS channel's rendering of the assistant core), the other desks it asks, domain.yml's wording,
and what its routes see of the inbox itself."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from backend.infra.tx import UnitOfWork
from backend.messaging.inbox.message import Decision, InboundSms, InboxAnswer
from backend.messaging.sms_inbox import InboundLedger
from backend.tickets import TicketDesk

if TYPE_CHECKING:
    from assistant.types import ParseResult
    from backend.alerts.desk import AlertDesk
    from backend.outreach.service import Outreach
    from backend.people.proxy import ProxyService


class Conversation(Protocol):
    """The conversation with the assistant core, as the SMS channel renders it."""

    def in_form(self, sender: str) -> bool: ...

    def parse(self, text: str) -> ParseResult: ...

    def reply(self, sms: InboundSms, text: str) -> str:
        """One turn of `text` (the body, or a word standing for it); the SMS text answering it."""
        ...


class InboxParts(Protocol):
    """Services the inbox asks lazily (the alert desk is built on first use)."""

    @property
    def proxies(self) -> ProxyService | None: ...

    @property
    def alerts(self) -> AlertDesk: ...

    @property
    def outreach(self) -> Outreach: ...


class Wording(Protocol):
    """domain.yml: labels and responses picked by name (assistant.dialogue.domain.Domain)."""

    def label(self, group: str, value: Any) -> str: ...

    def render(self, name: str, text_values: Any = None, speech_values: Any = None, slow: bool = False) -> Any: ...


ProgressLookup = Callable[..., Sequence[Any]]  # StoreBackend.progress(phone=…|reference=…)


class RouteContext(Protocol):
    """What a route sees of the inbox (backend/messaging/inbox/service.py SmsInbox)."""

    desk: TicketDesk
    ledger: InboundLedger
    parts: InboxParts
    conversation: Conversation
    max_text: int

    def record(self, unit: UnitOfWork, sms: InboundSms, decision: Decision) -> InboxAnswer: ...

    def looks_like_place(self, text: str) -> bool: ...

    def progress_text(self, sms: InboundSms, reference: str | None) -> str: ...
