"""What an outbound call does next, as data the phone channel renders (TwiML) and the terminal
simulator prints: sentences to say, then listen (for one key or a few words), reach a person, or
hang up. The answer webhook names the call and the step, so any worker takes the next turn."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import time
from typing import Literal

Next = Literal["listen", "person", "end"]
MAX_TRIES = 2  # not understood this many times: say goodbye (the purpose decides what follows)


@dataclass(frozen=True)
class CallScript:
    say: tuple[str, ...]
    next: Next
    language: str = "zh"
    step: str | None = None  # listen: where the answer goes
    tries: int = 0
    reference: str | None = None  # person: the handoff case, for the agent's whisper


@dataclass(frozen=True)
class QuietHours:
    """Local hours when nobody is called (start > end wraps midnight: 20:30–08:30)."""

    start: time
    end: time

    def contains(self, t: time) -> bool:
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end
