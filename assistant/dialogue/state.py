"""Conversation state: everything the core remembers between turns, as a JSON-able dataclass.

Kept in the session store (memory or Redis), never in a worker's memory, so any worker can
take the next turn and a restarted server continues the conversation.
"""
from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class ConversationState:
    sender_id: str
    channel: str
    phone: str | None = None  # from the channel (caller ID / SMS sender)
    form: str | None = None
    form_instance: str | None = None  # idempotency key part: one per started form
    slots: dict[str, Any] = field(default_factory=dict)
    slot_sources: dict[str, str] = field(default_factory=dict)  # slot → user|channel|record
    derived: dict[str, Any] = field(default_factory=dict)  # birth_date, age …
    requested_slot: str | None = None
    confirming: bool = False
    correcting: bool = False
    on_behalf: bool = False  # operated by a family member for the subject
    offer: str | None = None  # a yes/no offer is pending: "handoff"
    misses: int = 0  # misunderstandings in a row
    slot_failures: int = 0  # invalid answers to the current slot in a row
    last_replies: list[dict[str, Any]] = field(default_factory=list)  # what to say on "repeat"
    last_turn_replies: list[dict[str, Any]] = field(default_factory=list)  # for duplicate deliveries
    last_message_id: str | None = None
    transcript: list[list[str]] = field(default_factory=list)
    language: str = "zh"  # spoken language of the conversation ("zh", "yue")
    language_settled: bool = False  # asked, chosen, or set by a preference: do not ask again
    replay: str | None = None  # a message to handle again once "您想用广东话吗？" is answered

    def start_form(self, name: str) -> None:
        self.form = name
        self.form_instance = uuid.uuid4().hex[:12]
        self.slots, self.slot_sources, self.derived = {}, {}, {}
        self.requested_slot, self.confirming, self.correcting = None, False, False
        self.on_behalf, self.slot_failures = False, 0

    def end_form(self) -> None:
        self.form = None
        self.form_instance = None
        self.slots, self.slot_sources, self.derived = {}, {}, {}
        self.requested_slot, self.confirming, self.correcting = None, False, False
        self.on_behalf, self.slot_failures = False, 0

    def remember(self, role: str, text: str, limit: int) -> None:
        self.transcript.append([role, text])
        del self.transcript[:-limit]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversationState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
