"""Typed messages exchanged between the stages of a turn (channel → NLU → dialogue → channel)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from assistant.work_orders import WorkOrder


@dataclass(frozen=True)
class Entity:
    """One extracted entity, shaped like Rasa's entity dict (`entity`, `value`, `start`, `end`)."""

    entity: str
    value: Any
    start: int
    end: int
    text: str = ""
    extractor: str = ""
    confidence: float = 1.0
    # Extra facts an extractor knows (e.g. birth_date of an ID number, valid=False + reason).
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_rasa(self) -> dict[str, Any]:
        out = {
            "entity": self.entity,
            "value": self.value,
            "start": self.start,
            "end": self.end,
            "extractor": self.extractor,
            "confidence_entity": round(self.confidence, 4),
        }
        if self.meta:
            out["meta"] = dict(self.meta)
        return out


@dataclass(frozen=True)
class IntentScore:
    name: str
    confidence: float


@dataclass(frozen=True)
class ParseResult:
    text: str
    normalized: str
    intent: IntentScore
    ranking: tuple[IntentScore, ...] = ()
    entities: tuple[Entity, ...] = ()
    report: WorkOrder | None = None  # for report intents: the work order the text describes

    def first(self, name: str) -> Entity | None:
        return next((e for e in self.entities if e.entity == name), None)

    def to_rasa(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "intent": {"name": self.intent.name, "confidence": round(self.intent.confidence, 4)},
            "entities": [e.to_rasa() for e in self.entities],
            "intent_ranking": [
                {"name": s.name, "confidence": round(s.confidence, 4)} for s in self.ranking
            ],
            "text_normalized": self.normalized,
            **({"report": self.report.to_dict()} if self.report is not None else {}),
        }


@dataclass(frozen=True)
class UserMessage:
    """What a channel hands to the core: one user turn."""

    sender_id: str
    text: str
    channel: str
    # Caller ID / SMS sender when the channel knows it (E.164 or 11-digit mainland mobile).
    phone: str | None = None
    # Provider message id (MessageSid, CallSid+n …) for idempotent processing.
    message_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Button:
    title: str
    payload: str


@dataclass(frozen=True)
class Reply:
    """One bot utterance. Channels render it (TwiML Say/Gather, SMS segment, kiosk card, JSON)."""

    text: str
    buttons: tuple[Button, ...] = ()
    # The same sentence for text-to-speech (numbers digit by digit); None → use `text`.
    speech: str | None = None
    # What the conversation waits for next: a slot name, "confirm", "menu", or None.
    expects: str | None = None
    handoff: bool = False
    urgent: bool = False
    end_session: bool = False
    # A person should take over now (office hours or an emergency), not call back later.
    live_agent: bool = False
    # The case reference this reply announces (submission or handoff), for channels to act on.
    reference: str | None = None
    # The domain.yml response it was rendered from: channels pick by this key, never by the text.
    name: str | None = None


@dataclass(frozen=True)
class ConversationStatus:
    """What a channel may know of a conversation between turns, so that no channel reads the
    core's session layout: a recogniser primed for yes/no, an SMS that continues a form."""

    active: bool = False  # a conversation is stored for this sender
    in_form: bool = False  # a form is being filled
    confirming: bool = False  # the read-back waits for 对/不对
    offer: bool = False  # a yes/no offer (e.g. a person) waits for an answer
    expects: str | None = None  # what the last reply asked for (slot name, "confirm", "menu" …)
    language: str = "zh"  # the language the conversation is spoken in

    @property
    def answer_kind(self) -> str | None:
        """The closed answer a recogniser may expect: "confirm", "yes_no", or None (open)."""
        return "confirm" if self.confirming else "yes_no" if self.offer else None


@dataclass(frozen=True)
class Turn:
    """The result of one user turn: what to say, and where the conversation stands after it."""

    replies: tuple[Reply, ...]
    status: ConversationStatus

    @property
    def text(self) -> str:
        return "\n".join(r.text for r in self.replies)

    @property
    def expects(self) -> str | None:
        return self.replies[-1].expects if self.replies else None

    @property
    def handoff(self) -> bool:
        return any(r.handoff for r in self.replies)

    @property
    def ended(self) -> bool:
        return bool(self.replies) and self.replies[-1].end_session
