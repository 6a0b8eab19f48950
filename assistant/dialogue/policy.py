"""The dialogue's settings and the fixed rules every part of it shares: which intents work inside
a form, which slots take free text, the words that show a family member acting for someone, and
the `DialogueContext` (domain, backend, settings, clock) each part of the engine is built with."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any

from assistant.dialogue.domain import Domain
from assistant.ports import Clock, ServiceBackend

GLOBAL_INTENTS = {"request_human", "cancel", "repeat", "check_progress", "goodbye"}
STRONG_INTENTS = {"request_human", "cancel", "repeat"}
FREE_TEXT_TYPES = {"text", "name", "address", "place"}
# Words by which a family member shows they act for someone else ("帮我妈办").
PROXY_MARKERS = ("我妈", "我爸", "我母亲", "我父亲", "我老娘", "我老爹", "我爷爷", "我奶奶", "我外婆", "我外公",
                 "我姥姥", "我姥爷", "我家老人", "我家老头", "我家老太", "老人家", "我婆婆", "我公公", "替我", "帮我家")


@dataclass(frozen=True)
class OfficeHours:
    weekdays: frozenset[int] = frozenset({1, 2, 3, 4, 5})  # ISO weekday numbers
    start: time = time(8, 30)
    end: time = time(17, 30)

    def open_at(self, moment: datetime) -> bool:
        return moment.isoweekday() in self.weekdays and self.start <= moment.time() < self.end

    @classmethod
    def from_config(cls, hours: Mapping[str, Any] | None) -> OfficeHours:
        """config.yml `handoff.office_hours`."""
        hours = hours or {}
        return cls(weekdays=frozenset(int(d) for d in hours.get("weekdays", [1, 2, 3, 4, 5])),
                   start=time.fromisoformat(str(hours.get("start", "08:30"))),
                   end=time.fromisoformat(str(hours.get("end", "17:30"))))


@dataclass(frozen=True)
class DialogueSettings:
    max_misunderstandings: int = 2
    transcript_turns: int = 30
    eligibility: Mapping[str, int] = field(default_factory=dict)
    office_hours: OfficeHours = OfficeHours()
    hotline: str = "12345"
    booking_days_ahead: int = 14
    meal_max_portions: int = 5
    # A free-text answer ("路灯坏了") is taken as the answer unless the classifier is at least
    # this sure it is a command such as "转人工".
    interrupt_confidence: float = 0.6
    switch_form_confidence: float = 0.8


@dataclass(frozen=True)
class DialogueContext:
    """What every part of the engine reads: the domain, the backend port, settings and clock."""

    domain: Domain
    backend: ServiceBackend
    settings: DialogueSettings
    clock: Clock
